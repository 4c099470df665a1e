//! The Redis copy of each cart (`{prefix}cart:{user_id}`, 7-day TTL renewed
//! on every touch). Values are "<version>|<json>" and a script refuses to
//! replace a newer version, so racing writers or a slow repopulate from
//! Postgres can't put an old cart back. "<version>|" alone holds a version's
//! place while it is being written: readers miss, older copies are refused.
//! Redis errors are logged and counted; callers carry on with Postgres.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use shopmesh_catalog::cache::Breaker;
use shopmesh_platform::shutdown::Shutdown;
use sqlx::PgPool;

use crate::domain::Cart;
use crate::store;

/// Returns the value and renews its TTL in one native command (Redis 6.2+;
/// a Lua script doing the same costs Redis about ten times as much).
fn get_touch() -> CustomCommand {
    CustomCommand::new_static("GETEX", ClusterHash::FirstKey, false)
}

/// Sets ARGV[2] unless the stored value carries a higher version than ARGV[1].
const PUT_IF_NEWER: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local v = tonumber(string.match(cur, '^(%-?%d+)|'))
  if v and v > tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1";

#[derive(Clone)]
pub struct CartCache {
    redis: Client,
    prefix: String,
    ttl: Duration,
    breaker: Breaker,
    /// Users whose Redis copy may be older than Postgres (a write could not
    /// reach Redis), with the version Postgres has at least. Their reads go
    /// to Postgres until a copy that recent is put back.
    stale: Arc<Mutex<HashMap<String, i64>>>,
}

fn record(hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    metrics::counter!("cart_cache_requests_total", "result" => result).increment(1);
}

impl CartCache {
    pub fn new(redis: Client, prefix: &str, ttl: Duration, breaker: Breaker) -> Self {
        Self { redis, prefix: prefix.to_owned(), ttl, breaker, stale: Arc::default() }
    }

    pub fn key(&self, user_id: &str) -> String {
        format!("{}cart:{user_id}", self.prefix)
    }

    fn ttl_secs(&self) -> i64 {
        self.ttl.as_secs().max(1) as i64
    }

    fn failed(&self, op: &'static str, e: &dyn std::fmt::Display) {
        self.breaker.trip();
        tracing::warn!(op, error = %e, "cart cache unavailable; using postgres");
        metrics::counter!("cart_cache_errors_total", "op" => op).increment(1);
    }

    fn is_stale(&self, user_id: &str) -> bool {
        self.stale.lock().expect("stale set").contains_key(user_id)
    }

    /// Sends the user's reads to Postgres until `repair` (or a write) puts
    /// back a copy of at least `version`.
    pub fn mark_stale(&self, user_id: &str, version: i64) {
        let mut stale = self.stale.lock().expect("stale set");
        let marked = stale.entry(user_id.to_owned()).or_insert(version);
        *marked = (*marked).max(version);
    }

    /// A copy of `version` is in Redis: the mark goes if it was no newer.
    fn repaired(&self, user_id: &str, version: i64) {
        let mut stale = self.stale.lock().expect("stale set");
        if stale.get(user_id).is_some_and(|&marked| marked <= version) {
            stale.remove(user_id);
        }
    }

    /// The cached cart, or `None` on a miss, an unreadable value or a Redis error.
    pub async fn get(&self, user_id: &str) -> Option<Cart> {
        if !self.breaker.allows() || self.is_stale(user_id) {
            record(false);
            return None;
        }
        let raw: Option<String> = match self
            .redis
            .custom(get_touch(), vec![self.key(user_id), "EX".into(), self.ttl_secs().to_string()])
            .await
        {
            Ok(v) => v,
            Err(e) => {
                self.failed("get", &e);
                record(false);
                return None;
            }
        };
        let cart = raw.and_then(|v| {
            // An empty body holds a place for a version being written.
            let (_, json) = v.split_once('|').filter(|(_, json)| !json.is_empty())?;
            serde_json::from_str::<Cart>(json).inspect_err(|e| self.failed("decode", e)).ok()
        });
        record(cart.is_some());
        cart
    }

    /// Stores `cart` unless Redis already has a newer version. On failure
    /// (or with Redis known to be down) the user is marked stale until the
    /// copy is repaired.
    pub async fn put(&self, user_id: &str, cart: &Cart) {
        let value = format!("{}|{}", cart.version, serde_json::to_string(cart).expect("cart serialises"));
        self.put_value(user_id, cart.version, value, "put").await;
    }

    /// Holds `version`'s place for a writer that puts its copy only after
    /// its commit: until then readers go to Postgres, and none of them can
    /// put back a copy older than `version`, nor can a crash before the put
    /// leave one. A rolled-back writer's retry, or the next write, takes the
    /// same version again.
    pub async fn hold(&self, user_id: &str, version: i64) {
        self.put_value(user_id, version, format!("{version}|"), "hold").await;
    }

    async fn put_value(&self, user_id: &str, version: i64, value: String, op: &'static str) {
        if !self.breaker.allows() {
            self.mark_stale(user_id, version);
            return;
        }
        let args = vec![version.to_string(), value, self.ttl_secs().to_string()];
        match self.redis.eval::<i64, _, _, _>(PUT_IF_NEWER, vec![self.key(user_id)], args).await {
            Ok(_) => self.repaired(user_id, version),
            Err(e) => {
                self.failed(op, &e);
                self.mark_stale(user_id, version);
            }
        }
    }

    /// Until shutdown, puts Postgres' copy back for users marked stale, so
    /// an old copy isn't served once Redis answers again.
    pub async fn repair(self, pool: PgPool, shutdown: Shutdown) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = shutdown.wait() => return,
            }
            let users: Vec<String> = self.stale.lock().expect("stale set").keys().cloned().collect();
            if users.is_empty() || !self.breaker.allows() {
                continue;
            }
            for user in users {
                match store::load(&pool, &user).await {
                    // A user without a cart row has no copy worth keeping.
                    Ok(Some(cart)) => self.put(&user, &cart).await,
                    Ok(None) => {
                        self.stale.lock().expect("stale set").remove(&user);
                    }
                    Err(e) => tracing::warn!(error = %e, "cart cache repair: loading cart failed"),
                }
            }
        }
    }
}
