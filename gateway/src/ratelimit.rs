//! GCRA rate limiting shared by every gateway replica through Redis, with an
//! in-process limiter (same algorithm, per replica) when Redis is down.
//!
//! GCRA keeps one number per key, the theoretical arrival time (TAT). Each
//! request moves it forward by `period / limit`; a request is refused when
//! that would put the TAT more than `period` ahead of now. It allows bursts
//! of `limit` and then a steady `limit / period`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fred::prelude::*;
use http::{HeaderMap, HeaderName, HeaderValue};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u32,
    pub period: Duration,
}

impl Quota {
    pub const fn new(limit: u32, period: Duration) -> Self {
        Self { limit, period }
    }

    fn period_us(&self) -> u64 {
        (self.period.as_micros() as u64).max(1)
    }

    fn interval_us(&self) -> u64 {
        (self.period_us() / u64::from(self.limit.max(1))).max(1)
    }
}

#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Per client IP, requests without a verified token.
    pub anonymous: Quota,
    /// Per user id.
    pub authenticated: Quota,
    /// Per client IP on `login_routes`, instead of the buckets above.
    pub login: Quota,
    /// Route templates (as written in the protos) that use the login bucket.
    pub login_routes: Vec<String>,
    /// Per client IP on `signup_routes`: registering answers whether an
    /// email has an account, and costs a password hash each time.
    pub signup: Quota,
    pub signup_routes: Vec<String>,
    pub key_prefix: String,
    /// Past this, a Redis call counts as failed and the local limiter answers.
    pub redis_timeout: Duration,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            anonymous: Quota::new(2000, Duration::from_secs(300)),
            authenticated: Quota::new(6000, Duration::from_secs(300)),
            login: Quota::new(10, Duration::from_secs(60)),
            login_routes: vec!["/v1/auth/login".into()],
            signup: Quota::new(20, Duration::from_secs(600)),
            signup_routes: vec!["/v1/auth/register".into()],
            key_prefix: "shopmesh:gateway:rl".into(),
            redis_timeout: Duration::from_millis(100),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bucket {
    Anonymous,
    User,
    Login,
    Signup,
}

impl Bucket {
    pub fn as_str(self) -> &'static str {
        match self {
            Bucket::Anonymous => "anonymous",
            Bucket::User => "user",
            Bucket::Login => "login",
            Bucket::Signup => "signup",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// How long until one more request would be allowed (zero if allowed).
    pub retry_after: Duration,
    /// How long until the bucket is full again.
    pub reset: Duration,
}

impl Decision {
    /// `RateLimit-*` (IETF draft) on every answer, `Retry-After` on refusals.
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let secs = |d: Duration| d.as_micros().div_ceil(1_000_000) as u64;
        let mut h = vec![
            (HeaderName::from_static("ratelimit-limit"), self.limit.into()),
            (HeaderName::from_static("ratelimit-remaining"), self.remaining.into()),
            (HeaderName::from_static("ratelimit-reset"), secs(self.reset).into()),
        ];
        if !self.allowed {
            h.push((http::header::RETRY_AFTER, secs(self.retry_after).max(1).into()));
        }
        h
    }
}

/// One GCRA step. Returns the decision and, if allowed, the TAT to store.
pub fn gcra(now_us: u64, stored_tat_us: Option<u64>, quota: Quota) -> (Decision, Option<u64>) {
    let interval = quota.interval_us();
    let period = quota.period_us();
    let tat = stored_tat_us.unwrap_or(now_us).max(now_us);
    let new_tat = tat + interval;
    if new_tat - now_us > period {
        let decision = Decision {
            allowed: false,
            limit: quota.limit,
            remaining: 0,
            retry_after: Duration::from_micros(new_tat - period - now_us),
            reset: Duration::from_micros(tat - now_us),
        };
        return (decision, None);
    }
    let decision = Decision {
        allowed: true,
        limit: quota.limit,
        remaining: ((period - (new_tat - now_us)) / interval) as u32,
        retry_after: Duration::ZERO,
        reset: Duration::from_micros(new_tat - now_us),
    };
    (decision, Some(new_tat))
}

/// The same step in Lua, on Redis's clock so replicas with skewed clocks
/// agree. Returns `{allowed, remaining, retry_after_us, reset_us}`.
const GCRA_LUA: &str = r#"
local interval = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
if new_tat - now > period then
  return {0, 0, new_tat - period - now, tat - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor((period - (new_tat - now)) / interval), 0, new_tat - now}
"#;

/// Per-replica fallback. Entries past their TAT are dropped once the map
/// grows, so memory stays bounded by the active key set.
#[derive(Debug)]
struct LocalLimiter {
    epoch: Instant,
    tats: Mutex<HashMap<String, u64>>,
}

const LOCAL_SWEEP_AT: usize = 50_000;

impl LocalLimiter {
    fn new() -> Self {
        Self { epoch: Instant::now(), tats: Mutex::new(HashMap::new()) }
    }

    fn check(&self, key: &str, quota: Quota) -> Decision {
        let now = self.epoch.elapsed().as_micros() as u64;
        let mut tats = self.tats.lock().unwrap_or_else(|p| p.into_inner());
        if tats.len() >= LOCAL_SWEEP_AT {
            tats.retain(|_, tat| *tat > now);
        }
        let (decision, new_tat) = gcra(now, tats.get(key).copied(), quota);
        if let Some(tat) = new_tat {
            tats.insert(key.to_owned(), tat);
        }
        decision
    }
}

const WARN_EVERY: Duration = Duration::from_secs(30);

pub struct RateLimiter {
    cfg: RateLimitConfig,
    redis: Option<Client>,
    sha: Mutex<Option<String>>,
    local: LocalLimiter,
    last_warn: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter").field("cfg", &self.cfg).field("redis", &self.redis.is_some()).finish()
    }
}

impl RateLimiter {
    pub fn new(cfg: RateLimitConfig, redis: Option<Client>) -> Self {
        if cfg.enabled && redis.is_none() {
            tracing::warn!("no Redis client: rate limits are enforced per gateway replica only");
        }
        Self { cfg, redis, sha: Mutex::new(None), local: LocalLimiter::new(), last_warn: Mutex::new(None) }
    }

    pub fn config(&self) -> &RateLimitConfig {
        &self.cfg
    }

    pub fn quota(&self, bucket: Bucket) -> Quota {
        match bucket {
            Bucket::Anonymous => self.cfg.anonymous,
            Bucket::User => self.cfg.authenticated,
            Bucket::Login => self.cfg.login,
            Bucket::Signup => self.cfg.signup,
        }
    }

    /// Charges one request to `bucket`/`id`. Always answers: Redis trouble
    /// means the local limiter decides, never that the limit is skipped.
    pub async fn check(&self, bucket: Bucket, id: &str) -> Decision {
        let quota = self.quota(bucket);
        let key = format!("{}:{}:{}", self.cfg.key_prefix, bucket.as_str(), id);
        let decision = match &self.redis {
            Some(client) => {
                let call = self.check_redis(client, &key, quota);
                match tokio::time::timeout(self.cfg.redis_timeout, call).await {
                    Ok(Ok(d)) => d,
                    Ok(Err(e)) => self.fall_back(&key, quota, &e.to_string()),
                    Err(_) => self.fall_back(&key, quota, "timed out"),
                }
            }
            None => self.local.check(&key, quota),
        };
        if !decision.allowed {
            metrics::counter!("gateway_rate_limited_total", "bucket" => bucket.as_str()).increment(1);
        }
        decision
    }

    fn fall_back(&self, key: &str, quota: Quota, reason: &str) -> Decision {
        metrics::counter!("gateway_ratelimit_fallback_total").increment(1);
        let mut last = self.last_warn.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(reason, "Redis rate limiting failed; using the per-replica limiter");
        }
        drop(last);
        self.local.check(key, quota)
    }

    async fn check_redis(&self, client: &Client, key: &str, quota: Quota) -> Result<Decision, Error> {
        let args = vec![quota.interval_us() as i64, quota.period_us() as i64];
        let cached = self.sha.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let sha = match cached {
            Some(sha) => sha,
            None => {
                let sha: String = client.script_load(GCRA_LUA).await?;
                *self.sha.lock().unwrap_or_else(|p| p.into_inner()) = Some(sha.clone());
                sha
            }
        };
        let reply: Vec<i64> = match client.evalsha(sha, key.to_owned(), args.clone()).await {
            // A restarted or flushed Redis forgot the script: EVAL also
            // caches it, and the next call loads the SHA again.
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                *self.sha.lock().unwrap_or_else(|p| p.into_inner()) = None;
                client.eval(GCRA_LUA, key.to_owned(), args).await?
            }
            other => other?,
        };
        let [allowed, remaining, retry_after, reset] = reply[..] else {
            return Err(Error::new(ErrorKind::Parse, "unexpected rate limit script reply"));
        };
        Ok(Decision {
            allowed: allowed == 1,
            limit: quota.limit,
            remaining: remaining.max(0) as u32,
            retry_after: Duration::from_micros(retry_after.max(0) as u64),
            reset: Duration::from_micros(reset.max(0) as u64),
        })
    }
}

/// Who the limits count a request against: the client's address (the socket
/// peer, or with `trust_forwarded_for` the last `X-Forwarded-For` entry, the
/// one our own proxy appended; the ones before it are whatever the client
/// claimed). An IPv6 client is counted by its /64, the block one subscriber
/// gets: counted by address, it could take a fresh one for every request.
pub fn client_ip(peer: Option<SocketAddr>, headers: &HeaderMap, trust_forwarded_for: bool) -> String {
    let forwarded = || {
        // The last entry, read as it is: if our proxy's entry cannot be
        // read, an earlier one (the client's own claim) must not stand in.
        let last = headers.get_all("x-forwarded-for").iter().next_back()?.to_str().ok()?;
        forwarded_address(last.rsplit(',').next()?.trim())
    };
    let ip = trust_forwarded_for.then(forwarded).flatten().or(peer.map(|p| p.ip()));
    ip.map_or_else(|| "unknown".to_owned(), limit_key)
}

/// An `X-Forwarded-For` entry: an address, with or without a port
/// (`203.0.113.7:41000`, `[2001:db8::1]:41000`).
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    entry.parse::<IpAddr>().ok().or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

fn limit_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let block = u128::from(v6) & !((1u128 << 64) - 1);
                format!("{}/64", std::net::Ipv6Addr::from(block))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000;

    #[test]
    fn gcra_allows_a_burst_of_limit_then_refuses() {
        let q = Quota::new(3, Duration::from_secs(3));
        let mut tat = None;
        let mut remaining = Vec::new();
        for _ in 0..3 {
            let (d, t) = gcra(100 * SEC, tat, q);
            assert!(d.allowed);
            remaining.push(d.remaining);
            tat = t;
        }
        assert_eq!(remaining, vec![2, 1, 0]);
        let (d, t) = gcra(100 * SEC, tat, q);
        assert!(!d.allowed);
        assert_eq!(t, None);
        assert_eq!(d.retry_after, Duration::from_secs(1));
        assert_eq!(d.reset, Duration::from_secs(3));
    }

    #[test]
    fn gcra_refills_at_the_steady_rate() {
        let q = Quota::new(2, Duration::from_secs(10));
        let (_, tat) = gcra(0, None, q);
        let (_, tat) = gcra(0, tat, q);
        assert!(!gcra(4 * SEC, tat, q).0.allowed);
        let (d, tat) = gcra(5 * SEC, tat, q);
        assert!(d.allowed, "one interval later one request is allowed");
        assert_eq!(d.remaining, 0);
        // After a full idle period the bucket is full again.
        let (d, _) = gcra(100 * SEC, tat, q);
        assert_eq!(d.remaining, 1);
    }

    #[test]
    fn decision_headers() {
        let q = Quota::new(1, Duration::from_millis(1500));
        let (_, tat) = gcra(0, None, q);
        let (d, _) = gcra(0, tat, q);
        let h: HashMap<String, String> =
            d.headers().into_iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned())).collect();
        assert_eq!(h["ratelimit-limit"], "1");
        assert_eq!(h["ratelimit-remaining"], "0");
        assert_eq!(h["ratelimit-reset"], "2");
        assert_eq!(h["retry-after"], "2");
    }

    #[test]
    fn local_limiter_separates_keys() {
        let l = LocalLimiter::new();
        let q = Quota::new(1, Duration::from_secs(60));
        assert!(l.check("a", q).allowed);
        assert!(!l.check("a", q).allowed);
        assert!(l.check("b", q).allowed);
    }

    #[test]
    fn client_ip_honours_forwarded_for_only_when_trusted() {
        let peer: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "1.1.1.1, 2.2.2.2".parse().unwrap());
        assert_eq!(client_ip(Some(peer), &h, false), "10.0.0.1");
        assert_eq!(client_ip(Some(peer), &h, true), "2.2.2.2");
        h.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(client_ip(Some(peer), &h, true), "10.0.0.1");
        assert_eq!(client_ip(None, &HeaderMap::new(), false), "unknown");
    }

    #[test]
    fn the_proxys_entry_alone_counts_even_with_a_port_or_unreadable() {
        let peer: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let forwarded = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-forwarded-for", v.parse().unwrap());
            client_ip(Some(peer), &h, true)
        };
        assert_eq!(forwarded("1.1.1.1, 2.2.2.2:41000"), "2.2.2.2");
        assert_eq!(forwarded("1.1.1.1, [2001:db8::1]:41000"), "2001:db8::/64");
        // Unreadable last entry: the peer, never the client's own claim before it.
        assert_eq!(forwarded("1.1.1.1, unknown"), "10.0.0.1");
        // Several headers: the last one is our proxy's.
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "3.3.3.3".parse().unwrap());
        h.append("x-forwarded-for", "1.1.1.1, 4.4.4.4".parse().unwrap());
        assert_eq!(client_ip(Some(peer), &h, true), "4.4.4.4");
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_slash_64() {
        let at = |a: &str| client_ip(Some(SocketAddr::new(a.parse().unwrap(), 1)), &HeaderMap::new(), false);
        assert_eq!(at("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(at("2001:db8:1:2:bbbb::9"), at("2001:db8:1:2:aaaa::1"), "one subscriber's block");
        assert_ne!(at("2001:db8:1:3::1"), at("2001:db8:1:2::1"));
        assert_eq!(at("::ffff:192.0.2.7"), "192.0.2.7", "an IPv4 client over a dual-stack socket");
    }
}
