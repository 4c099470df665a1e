//! Cache-aside in Redis for the public reads. Entries hold encoded protobuf
//! responses. List and category keys embed a "list generation" counter, so
//! one INCR drops every cached listing at once. Redis failures never fail a
//! read: they are logged, counted, and the caller falls back to Postgres.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fred::prelude::*;
use uuid::Uuid;

/// Stores a product (KEYS[1]) only if the list generation (KEYS[2]) is still
/// the one read before the product was read from Postgres (ARGV[2]): every
/// product write bumps it before dropping the product's entry, so a fill
/// that lost the race to a write cannot put the old row back for the TTL.
const PUT_IF_GENERATION: &str = r"
if (tonumber(redis.call('GET', KEYS[2])) or 0) ~= tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return 1";

/// After a Redis failure, reads and fills skip Redis for a short cool-off,
/// so an outage costs one command timeout rather than one per request.
/// Invalidations always try: skipping one could leave a stale entry behind.
#[derive(Clone, Debug)]
pub struct Breaker {
    epoch: Instant,
    /// Milliseconds since `epoch` until which Redis is skipped.
    open_until: Arc<AtomicU64>,
    cool_off: Duration,
}

impl Breaker {
    pub fn new(cool_off: Duration) -> Self {
        Self { epoch: Instant::now(), open_until: Arc::new(AtomicU64::new(0)), cool_off }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn allows(&self) -> bool {
        self.now() >= self.open_until.load(Ordering::Relaxed)
    }

    pub fn trip(&self) {
        self.open_until.store(self.now() + self.cool_off.as_millis() as u64, Ordering::Relaxed);
    }
}

#[derive(Clone)]
pub struct Cache {
    redis: Client,
    prefix: String,
    product_ttl: Duration,
    list_ttl: Duration,
    breaker: Breaker,
}

#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Product,
    List,
    Categories,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Product => "product",
            Kind::List => "list",
            Kind::Categories => "categories",
        }
    }
}

pub fn record(kind: Kind, hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    metrics::counter!("catalog_cache_requests_total", "cache" => kind.label(), "result" => result).increment(1);
}

impl Cache {
    pub fn new(redis: Client, prefix: &str, product_ttl: Duration, list_ttl: Duration, breaker: Breaker) -> Self {
        Self { redis, prefix: prefix.to_owned(), product_ttl, list_ttl, breaker }
    }

    fn failed(&self, op: &'static str, e: &fred::error::Error) {
        self.breaker.trip();
        tracing::warn!(op, error = %e, "catalog cache unavailable; using postgres");
        metrics::counter!("catalog_cache_errors_total", "op" => op).increment(1);
    }

    pub fn product_key(&self, id: Uuid) -> String {
        format!("{}catalog:product:{id}", self.prefix)
    }

    fn generation_key(&self) -> String {
        format!("{}catalog:list-gen", self.prefix)
    }

    /// Current list generation; `None` if Redis is unavailable (skip the cache).
    pub async fn generation(&self) -> Option<i64> {
        if !self.breaker.allows() {
            return None;
        }
        match self.redis.get::<Option<i64>, _>(self.generation_key()).await {
            Ok(g) => Some(g.unwrap_or(0)),
            Err(e) => {
                self.failed("generation", &e);
                None
            }
        }
    }

    pub fn list_key(&self, generation: i64, digest: &str) -> String {
        format!("{}catalog:list:{generation}:{digest}", self.prefix)
    }

    pub fn categories_key(&self, generation: i64) -> String {
        format!("{}catalog:categories:{generation}", self.prefix)
    }

    pub async fn get(&self, kind: Kind, key: &str) -> Option<Vec<u8>> {
        if !self.breaker.allows() {
            record(kind, false);
            return None;
        }
        match self.redis.get::<Option<Vec<u8>>, _>(key).await {
            Ok(v) => {
                record(kind, v.is_some());
                v
            }
            Err(e) => {
                self.failed("get", &e);
                record(kind, false);
                None
            }
        }
    }

    /// Values for `keys` in order; all `None` if Redis is unavailable.
    pub async fn get_many(&self, keys: Vec<String>) -> Vec<Option<Vec<u8>>> {
        let n = keys.len();
        if n == 0 {
            return Vec::new();
        }
        if !self.breaker.allows() {
            (0..n).for_each(|_| record(Kind::Product, false));
            return vec![None; n];
        }
        let values = if n == 1 {
            self.redis.get::<Option<Vec<u8>>, _>(keys[0].clone()).await.map(|v| vec![v])
        } else {
            self.redis.mget::<Vec<Option<Vec<u8>>>, _>(keys).await
        };
        match values {
            Ok(v) if v.len() == n => {
                for x in &v {
                    record(Kind::Product, x.is_some());
                }
                v
            }
            Ok(_) => vec![None; n],
            Err(e) => {
                self.failed("mget", &e);
                (0..n).for_each(|_| record(Kind::Product, false));
                vec![None; n]
            }
        }
    }

    pub async fn put(&self, kind: Kind, key: String, value: Vec<u8>) {
        if !self.breaker.allows() {
            return;
        }
        let ttl = match kind {
            Kind::Product => self.product_ttl,
            Kind::List | Kind::Categories => self.list_ttl,
        };
        let ex = Expiration::EX(ttl.as_secs().max(1) as i64);
        if let Err(e) = self.redis.set::<(), _, _>(key, value.as_slice(), Some(ex), None, false).await {
            self.failed("set", &e);
        }
    }

    /// Stores product `id`, read from Postgres after `generation` was read,
    /// unless a product changed since (`PUT_IF_GENERATION`). Whether it was
    /// stored.
    pub async fn put_product(&self, id: Uuid, value: Vec<u8>, generation: i64) -> bool {
        if !self.breaker.allows() {
            return false;
        }
        let keys = vec![self.product_key(id), self.generation_key()];
        let ttl = self.product_ttl.as_secs().max(1);
        let args: Vec<Value> = vec![value.as_slice().into(), generation.into(), (ttl as i64).into()];
        match self.redis.eval::<i64, _, _, _>(PUT_IF_GENERATION, keys, args).await {
            Ok(stored) => stored == 1,
            Err(e) => {
                self.failed("set", &e);
                false
            }
        }
    }

    /// Drops every cached listing and the product's entry; `false` if
    /// Redis could not be told (the caller may retry). The generation goes
    /// first: a fill checking it afterwards cannot store what it read
    /// before the write (see `put_product`).
    pub async fn invalidate(&self, product: Option<Uuid>) -> bool {
        let mut ok = true;
        if let Err(e) = self.redis.incr::<i64, _>(self.generation_key()).await {
            self.failed("incr", &e);
            ok = false;
        }
        if let Some(id) = product
            && let Err(e) = self.redis.del::<i64, _>(self.product_key(id)).await
        {
            self.failed("del", &e);
            ok = false;
        }
        ok
    }
}
