//! Configuration: read once at start from the environment and an optional
//! TOML file, with an error that names the missing or invalid variable.
//!
//! A setting `KEY` for service `svc` is looked up, first match wins, as:
//! explicit override (tests, `shopmesh dev`) → env `SHOPMESH_SVC_KEY` →
//! env `SHOPMESH_KEY` → file `[svc] KEY` → file top-level `KEY` → default.
//! The file is named by `SHOPMESH_CONFIG_FILE`.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("missing required setting {var}{}", alt.as_ref().map(|a| format!(" (or {a})")).unwrap_or_default())]
    Missing { var: String, alt: Option<String> },
    #[error("invalid value {value:?} for {var}: {reason}")]
    Invalid { var: String, value: String, reason: String },
    #[error("config file {path}: {reason}")]
    File { path: String, reason: String },
}

/// `SHOPMESH_KEY`, or `SHOPMESH_SVC_KEY` for a service-scoped one.
fn env_name(scope: Option<&str>, key: &str) -> String {
    match scope {
        Some(s) => format!("SHOPMESH_{}_{key}", s.to_uppercase().replace('-', "_")),
        None => format!("SHOPMESH_{key}"),
    }
}

/// Where settings come from. Cheap to clone; `scoped` gives a per-service view.
#[derive(Clone, Debug, Default)]
pub struct ConfigSource {
    scope: Option<String>,
    overrides: BTreeMap<String, String>,
    file: BTreeMap<String, toml::Value>,
    use_env: bool,
}

impl ConfigSource {
    /// Environment plus the file named by `SHOPMESH_CONFIG_FILE`, if any.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut source = Self { use_env: true, ..Self::default() };
        if let Ok(path) = std::env::var("SHOPMESH_CONFIG_FILE") {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ConfigError::File { path: path.clone(), reason: e.to_string() })?;
            let table: toml::Table = text
                .parse()
                .map_err(|e: toml::de::Error| ConfigError::File { path: path.clone(), reason: e.to_string() })?;
            source.file = table.into_iter().collect();
        }
        Ok(source)
    }

    /// Only explicit values; the environment is ignored (tests).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        let mut source = Self::default();
        for (k, v) in pairs {
            source.overrides.insert(k.into(), v.into());
        }
        source
    }

    /// Sets a value that wins over every other source.
    pub fn set(mut self, key: &str, value: impl Into<String>) -> Self {
        self.overrides.insert(key.to_owned(), value.into());
        self
    }

    /// Sets a value only if no source provides one (dev defaults).
    pub fn set_default(mut self, key: &str, value: impl Into<String>) -> Self {
        if self.get(key).is_none() {
            self.overrides.insert(key.to_owned(), value.into());
        }
        self
    }

    /// A view in which lookups prefer the service-scoped variables.
    pub fn scoped(&self, service: &str) -> Self {
        Self { scope: Some(service.to_owned()), ..self.clone() }
    }

    fn scoped_key(&self, key: &str) -> Option<String> {
        self.scope.as_ref().map(|s| format!("{}.{key}", s))
    }

    fn env_names(&self, key: &str) -> (String, Option<String>) {
        (env_name(None, key), self.scope.as_deref().map(|s| env_name(Some(s), key)))
    }

    /// The explicit values as the environment variables `from_env` would
    /// read them from: how a test hands its settings to a child process.
    pub fn overrides_as_env(&self) -> Vec<(String, String)> {
        self.overrides
            .iter()
            .map(|(k, v)| {
                let name = match k.split_once('.') {
                    Some((scope, key)) => env_name(Some(scope), key),
                    None => env_name(None, k),
                };
                (name, v.clone())
            })
            .collect()
    }

    pub fn get(&self, key: &str) -> Option<String> {
        if let Some(v) = self.scoped_key(key).and_then(|k| self.overrides.get(&k)) {
            return Some(v.clone());
        }
        if let Some(v) = self.overrides.get(key) {
            return Some(v.clone());
        }
        if self.use_env {
            let (global, scoped) = self.env_names(key);
            if let Some(v) = scoped.and_then(|n| std::env::var(n).ok()) {
                return Some(v);
            }
            if let Ok(v) = std::env::var(&global) {
                return Some(v);
            }
        }
        let from_file = |v: &toml::Value| match v {
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if let Some(scope) = &self.scope
            && let Some(toml::Value::Table(t)) = self.file.get(scope)
            && let Some(v) = t.get(key)
        {
            return Some(from_file(v));
        }
        self.file.get(key).map(from_file)
    }

    pub fn require(&self, key: &str) -> Result<String, ConfigError> {
        self.get(key).filter(|v| !v.is_empty()).ok_or_else(|| {
            let (global, scoped) = self.env_names(key);
            ConfigError::Missing { var: global, alt: scoped }
        })
    }

    /// Parses `key` if set, else returns `default`.
    pub fn parse_or<T>(&self, key: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.get(key) {
            None => Ok(default),
            Some(v) => self.parse_value(key, &v),
        }
    }

    pub fn parse_required<T>(&self, key: &str) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        let v = self.require(key)?;
        self.parse_value(key, &v)
    }

    fn parse_value<T>(&self, key: &str, v: &str) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        v.trim().parse::<T>().map_err(|e| ConfigError::Invalid {
            var: self.env_names(key).0,
            value: v.to_owned(),
            reason: e.to_string(),
        })
    }

    /// A duration given in milliseconds under `key`.
    pub fn millis_or(&self, key: &str, default: Duration) -> Result<Duration, ConfigError> {
        Ok(Duration::from_millis(self.parse_or(key, default.as_millis() as u64)?))
    }

    /// `millis_or` for a setting that does harm outside `range`, e.g. a
    /// timeout given as `60` meaning seconds: refused at start-up instead.
    pub fn millis_within(
        &self,
        key: &str,
        default: Duration,
        range: RangeInclusive<Duration>,
    ) -> Result<Duration, ConfigError> {
        let value = self.millis_or(key, default)?;
        if range.contains(&value) {
            return Ok(value);
        }
        Err(ConfigError::Invalid {
            var: self.env_names(key).0,
            value: value.as_millis().to_string(),
            reason: format!(
                "must be between {} and {} milliseconds",
                range.start().as_millis(),
                range.end().as_millis()
            ),
        })
    }

    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key).as_deref().map(str::trim) {
            None => Ok(default),
            Some("1" | "true" | "yes" | "on") => Ok(true),
            Some("0" | "false" | "no" | "off") => Ok(false),
            Some(v) => Err(ConfigError::Invalid {
                var: self.env_names(key).0,
                value: v.to_owned(),
                reason: "expected true or false".into(),
            }),
        }
    }
}

/// What a service needs from the outside world; decides which settings are required.
#[derive(Clone, Copy, Debug, Default)]
pub struct Needs {
    pub postgres: bool,
    pub redis: bool,
    pub kafka: bool,
}

#[derive(Clone, Debug)]
pub struct RedisConfig {
    pub url: String,
    /// Prefix of every key this process writes (tests isolate with it).
    pub key_prefix: String,
    pub command_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct KafkaConfig {
    pub brokers: String,
    /// Prefix of every topic and consumer group (tests isolate with it).
    pub topic_prefix: String,
    pub session_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// Also the group's rebalance timeout: how long a rebalance waits for a
    /// member that went quiet (and how long one message may take).
    pub max_poll_interval: Duration,
    /// Attempts before a failing message goes to `<topic>.dlq`.
    pub max_attempts: u32,
    /// How long the producer keeps trying to deliver one message before
    /// reporting failure (the outbox relay then retries it itself).
    pub message_timeout: Duration,
    /// How long the producer gathers messages into one batch (`linger.ms`).
    /// Fewer, larger batches cost the broker less, and each hop of the saga
    /// waits up to this long more: 10 ms against 2 ms raised the bench's
    /// saturation from 166–201 to 182–245 orders/s and added ~20 ms to p50.
    pub linger: Duration,
    /// Upper bound of the outbox relay's retry backoff.
    pub outbox_max_backoff: Duration,
    /// Most messages a consumer applies in one database transaction.
    pub consumer_batch: usize,
    /// Longest a fetch waits at the broker for new data. Kafka answers as
    /// soon as data arrives; Tansu 0.6 looks at the start and then at
    /// shrinking intervals, so this bounds each hop of the saga (at 25 ms a
    /// new event reached its consumer after p50 5 ms, at most 14 ms; at
    /// librdkafka's 500 ms default the saga took p50 580 ms at 100 orders/s).
    pub fetch_wait: Duration,
    /// The fetch wait of consumers nobody is waiting on ([`Pace::Relaxed`]):
    /// an empty fetch costs Tansu 0.4–1 ms of CPU, so fewer fetches is less
    /// broker CPU.
    ///
    /// [`Pace::Relaxed`]: crate::kafka::Pace::Relaxed
    pub relaxed_fetch_wait: Duration,
    /// How often a consumer commits the offsets of what it has applied. A
    /// crash replays at most this much, which the inbox absorbs; committing
    /// after every batch cost a broker round trip per batch.
    pub commit_interval: Duration,
}

impl KafkaConfig {
    pub fn topic(&self, logical: &str) -> String {
        format!("{}{logical}", self.topic_prefix)
    }

    pub fn group(&self, logical: &str) -> String {
        format!("{}{logical}", self.topic_prefix)
    }
}

/// Settings every service process has.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    pub name: String,
    pub grpc_addr: SocketAddr,
    /// Serves `/health/live`, `/health/ready` and `/metrics`.
    pub http_addr: SocketAddr,
    pub database_url: Option<String>,
    pub db_max_connections: u32,
    pub redis: Option<RedisConfig>,
    pub kafka: Option<KafkaConfig>,
    /// How long in-flight work may take to drain after a shutdown signal.
    pub shutdown_grace: Duration,
    /// Where this service and the gateway fetch the auth service's JWKS.
    pub jwks_url: Option<String>,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    pub source: ConfigSource,
}

impl ServiceConfig {
    /// Reads the settings of service `name` from `source` (already scoped or not).
    pub fn load(name: &str, source: &ConfigSource, needs: Needs) -> Result<Self, ConfigError> {
        let s = source.scoped(name);
        let database_url = if needs.postgres { Some(s.require("DATABASE_URL")?) } else { s.get("DATABASE_URL") };
        let jwks_url = s.get("JWKS_URL").filter(|u| !u.is_empty());
        // Verifying tokens includes the logout denylist, which lives in Redis.
        let redis = if needs.redis || jwks_url.is_some() {
            Some(RedisConfig {
                url: s.require("REDIS_URL")?,
                key_prefix: s.get("REDIS_KEY_PREFIX").unwrap_or_default(),
                command_timeout: s.millis_or("REDIS_TIMEOUT_MS", Duration::from_millis(500))?,
            })
        } else {
            None
        };
        let kafka = if needs.kafka {
            Some(KafkaConfig {
                brokers: s.require("KAFKA_BROKERS")?,
                topic_prefix: s.get("KAFKA_TOPIC_PREFIX").unwrap_or_default(),
                session_timeout: s.millis_or("KAFKA_SESSION_TIMEOUT_MS", Duration::from_millis(10_000))?,
                heartbeat_interval: s.millis_or("KAFKA_HEARTBEAT_MS", Duration::from_millis(3_000))?,
                max_poll_interval: s.millis_or("KAFKA_MAX_POLL_INTERVAL_MS", Duration::from_millis(60_000))?,
                max_attempts: s.parse_or("KAFKA_MAX_ATTEMPTS", 5)?,
                message_timeout: s.millis_or("KAFKA_MESSAGE_TIMEOUT_MS", Duration::from_secs(30))?,
                linger: s.millis_or("KAFKA_LINGER_MS", Duration::from_millis(10))?,
                outbox_max_backoff: s.millis_or("OUTBOX_MAX_BACKOFF_MS", Duration::from_secs(30))?,
                consumer_batch: s.parse_or("KAFKA_CONSUMER_BATCH", 128usize)?.max(1),
                fetch_wait: s.millis_or("KAFKA_FETCH_WAIT_MS", Duration::from_millis(25))?,
                relaxed_fetch_wait: s.millis_or("KAFKA_RELAXED_FETCH_WAIT_MS", Duration::from_millis(250))?,
                commit_interval: s.millis_or("KAFKA_COMMIT_INTERVAL_MS", Duration::from_millis(1_000))?,
            })
        } else {
            None
        };
        Ok(Self {
            name: name.to_owned(),
            grpc_addr: s.parse_or("GRPC_ADDR", "0.0.0.0:50051".parse().unwrap())?,
            http_addr: s.parse_or("HTTP_ADDR", "0.0.0.0:9090".parse().unwrap())?,
            database_url,
            db_max_connections: s.parse_or("DB_MAX_CONNECTIONS", 10)?,
            redis,
            kafka,
            shutdown_grace: s.millis_or("SHUTDOWN_GRACE_MS", Duration::from_secs(20))?,
            jwks_url,
            jwt_issuer: s.get("JWT_ISSUER").unwrap_or_else(|| "shopmesh-auth".into()),
            jwt_audience: s.get("JWT_AUDIENCE").unwrap_or_else(|| "shopmesh".into()),
            source: s,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoped_override_wins_over_global() {
        let src = ConfigSource::from_pairs([
            ("DATABASE_URL", "postgres://global"),
            ("catalog.DATABASE_URL", "postgres://cat"),
        ]);
        assert_eq!(src.scoped("catalog").get("DATABASE_URL").unwrap(), "postgres://cat");
        assert_eq!(src.scoped("cart").get("DATABASE_URL").unwrap(), "postgres://global");
    }

    #[test]
    fn overrides_become_the_variables_from_env_reads() {
        let src = ConfigSource::from_pairs([("REDIS_URL", "redis://r"), ("order-x.DATABASE_URL", "postgres://o")]);
        assert_eq!(
            src.overrides_as_env(),
            vec![
                ("SHOPMESH_REDIS_URL".to_owned(), "redis://r".to_owned()),
                ("SHOPMESH_ORDER_X_DATABASE_URL".to_owned(), "postgres://o".to_owned()),
            ]
        );
    }

    #[test]
    fn a_duration_outside_its_range_is_refused_naming_the_variable() {
        let range = Duration::from_secs(1)..=Duration::from_secs(60);
        let src = ConfigSource::from_pairs([("order.PENDING_TIMEOUT_MS", "60"), ("SWEEP_INTERVAL_MS", "2500")]);
        let order = src.scoped("order");
        let err = order.millis_within("PENDING_TIMEOUT_MS", Duration::from_secs(60), range.clone()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("PENDING_TIMEOUT_MS"), "{msg}");
        assert!(msg.contains("between 1000 and 60000 milliseconds"), "{msg}");
        let ok = order.millis_within("SWEEP_INTERVAL_MS", Duration::ZERO, range.clone()).unwrap();
        assert_eq!(ok, Duration::from_millis(2500));
        let default = order.millis_within("UNSET_MS", Duration::from_secs(5), range).unwrap();
        assert_eq!(default, Duration::from_secs(5));
    }

    #[test]
    fn missing_setting_names_the_variable() {
        let err =
            ServiceConfig::load("catalog", &ConfigSource::default(), Needs { postgres: true, ..Needs::default() })
                .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("SHOPMESH_DATABASE_URL"), "{msg}");
        assert!(msg.contains("SHOPMESH_CATALOG_DATABASE_URL"), "{msg}");
    }

    #[test]
    fn token_verification_requires_redis_for_the_denylist() {
        let src = ConfigSource::from_pairs([("JWKS_URL", "http://auth/.well-known/jwks.json")]);
        let msg = ServiceConfig::load("inventory", &src, Needs::default()).unwrap_err().to_string();
        assert!(msg.contains("SHOPMESH_REDIS_URL"), "{msg}");
    }

    #[test]
    fn invalid_setting_names_variable_and_value() {
        let src = ConfigSource::from_pairs([("GRPC_ADDR", "not-an-addr")]);
        let msg = ServiceConfig::load("user", &src, Needs::default()).unwrap_err().to_string();
        assert!(msg.contains("SHOPMESH_GRPC_ADDR") && msg.contains("not-an-addr"), "{msg}");
    }

    #[test]
    fn file_scoped_section_is_read() {
        let mut src = ConfigSource::default();
        let table: toml::Table = "GRPC_ADDR = \"127.0.0.1:1\"\n[order]\nGRPC_ADDR = \"127.0.0.1:2\"\n".parse().unwrap();
        src.file = table.into_iter().collect();
        assert_eq!(src.scoped("order").get("GRPC_ADDR").unwrap(), "127.0.0.1:2");
        assert_eq!(src.scoped("cart").get("GRPC_ADDR").unwrap(), "127.0.0.1:1");
    }
}
