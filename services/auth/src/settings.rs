//! The auth service's own settings, read once at start (scoped: env
//! `SHOPMESH_AUTH_<KEY>` wins over `SHOPMESH_<KEY>`).

use std::fmt;
use std::time::Duration;

use shopmesh_platform::config::{ConfigError, ConfigSource};

use crate::keys::SIGNING_KEY_CACHE;

#[derive(Debug, Clone)]
pub struct Settings {
    /// `ACCESS_TOKEN_TTL_SECS`, default 15 minutes.
    pub access_ttl: Duration,
    /// `REFRESH_TOKEN_TTL_SECS`, default 7 days.
    pub refresh_ttl: Duration,
    /// `SIGNING_KEY_MAX_AGE_SECS`, default 30 days.
    pub key_max_age: Duration,
    /// `ADMIN_EMAIL` + `ADMIN_PASSWORD` (+ `ADMIN_NAME`).
    pub admin: Option<AdminBootstrap>,
    /// `PASSWORD_HASHES_AT_ONCE`, default the CPUs available: password
    /// hashes and checks running at once (each holds ~19 MiB).
    pub password_hashes_at_once: usize,
    /// `PASSWORD_WAIT_MS`, default 10000: how long a sign-in waits for one of
    /// those before it is refused as busy (503, `Retry-After`): a burst is
    /// queued first-come first-served rather than refused. A call with a
    /// deadline (`grpc-timeout`, which the gateway sends) waits at most until
    /// a second before it, so the refusal still reaches its caller.
    pub password_wait: Duration,
}

#[derive(Clone)]
pub struct AdminBootstrap {
    pub email: String,
    pub password: String,
    pub name: String,
}

impl fmt::Debug for AdminBootstrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminBootstrap").field("email", &self.email).field("name", &self.name).finish_non_exhaustive()
    }
}

impl Settings {
    pub fn load(src: &ConfigSource) -> Result<Self, ConfigError> {
        let secs = |key: &str, default: u64, max: u64| -> Result<Duration, ConfigError> {
            let v: u64 = src.parse_or(key, default)?;
            if v == 0 || v > max {
                return Err(ConfigError::Invalid {
                    var: format!("SHOPMESH_{key}"),
                    value: v.to_string(),
                    reason: format!("must be between 1 and {max} seconds"),
                });
            }
            Ok(Duration::from_secs(v))
        };
        // expires_in is an int32 on the wire.
        let access_ttl = secs("ACCESS_TOKEN_TTL_SECS", 15 * 60, i32::MAX as u64)?;
        let refresh_ttl = secs("REFRESH_TOKEN_TTL_SECS", 7 * 24 * 3600, 365 * 24 * 3600)?;
        let key_max_age = secs("SIGNING_KEY_MAX_AGE_SECS", 30 * 24 * 3600, 10 * 365 * 24 * 3600)?;
        let admin = match src.get("ADMIN_EMAIL").filter(|e| !e.trim().is_empty()) {
            None => None,
            Some(email) => Some(AdminBootstrap {
                email,
                password: src.require("ADMIN_PASSWORD")?,
                name: src.get("ADMIN_NAME").filter(|n| !n.trim().is_empty()).unwrap_or_else(|| "Administrator".into()),
            }),
        };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let password_hashes_at_once: usize = src.parse_or("PASSWORD_HASHES_AT_ONCE", cpus)?;
        if password_hashes_at_once == 0 {
            return Err(ConfigError::Invalid {
                var: "SHOPMESH_PASSWORD_HASHES_AT_ONCE".into(),
                value: "0".into(),
                reason: "at least one password check must be able to run".into(),
            });
        }
        let password_wait = src.millis_or("PASSWORD_WAIT_MS", Duration::from_secs(10))?;
        Ok(Self { access_ttl, refresh_ttl, key_max_age, admin, password_hashes_at_once, password_wait })
    }

    /// How long a retired key stays in the JWKS: a token it signed lives at
    /// most the access TTL, and a replica may sign with it for one cache
    /// period after the rotation; plus a minute for clock skew.
    pub fn key_publish_window(&self) -> Duration {
        self.access_ttl + SIGNING_KEY_CACHE + Duration::from_secs(60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let s = Settings::load(&ConfigSource::from_pairs::<&str, &str>([])).unwrap();
        assert_eq!(s.access_ttl, Duration::from_secs(900));
        assert_eq!(s.refresh_ttl, Duration::from_secs(604_800));
        assert_eq!(s.key_max_age, Duration::from_secs(2_592_000));
        assert!(s.admin.is_none());
        assert!(s.key_publish_window() > s.access_ttl);
    }

    #[test]
    fn admin_email_requires_a_password() {
        let err = Settings::load(&ConfigSource::from_pairs([("ADMIN_EMAIL", "root@example.com")])).unwrap_err();
        assert!(err.to_string().contains("ADMIN_PASSWORD"), "{err}");
        let s = Settings::load(&ConfigSource::from_pairs([
            ("ADMIN_EMAIL", "root@example.com"),
            ("ADMIN_PASSWORD", "s3cret-pass"),
        ]))
        .unwrap();
        let admin = s.admin.unwrap();
        assert_eq!(admin.name, "Administrator");
        assert!(!format!("{admin:?}").contains("s3cret"));
    }

    #[test]
    fn zero_ttl_is_refused() {
        let err = Settings::load(&ConfigSource::from_pairs([("ACCESS_TOKEN_TTL_SECS", "0")])).unwrap_err();
        assert!(err.to_string().contains("ACCESS_TOKEN_TTL_SECS"), "{err}");
    }
}
