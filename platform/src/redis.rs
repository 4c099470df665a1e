//! Redis through fred, with a command timeout so calls fail fast (instead of
//! hanging) while Redis is down, and a reconnect policy so it recovers.

use fred::prelude::*;

use crate::config::RedisConfig;

/// Builds a client and starts connecting. A Redis that is down at start is
/// not fatal: commands fail with a timeout until it comes back, and
/// readiness reports it.
pub async fn connect(cfg: &RedisConfig) -> Result<Client, Error> {
    let config = Config::from_url(&cfg.url)?;
    let timeout = cfg.command_timeout;
    let client = Builder::from_config(config)
        .with_performance_config(|p| p.default_command_timeout = timeout)
        .with_connection_config(|c| {
            c.connection_timeout = timeout.max(std::time::Duration::from_secs(1));
            c.internal_command_timeout = timeout;
            c.max_command_attempts = 2;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .build()?;
    client.connect();
    if let Err(e) = tokio::time::timeout(timeout * 4, client.wait_for_connect())
        .await
        .unwrap_or_else(|_| Err(Error::new(ErrorKind::Timeout, "timed out connecting")))
    {
        tracing::warn!(url = %redact(&cfg.url), error = %e, "redis not reachable at start; will keep retrying");
    }
    Ok(client)
}

/// The URL without its password, for logs.
pub fn redact(url: &str) -> String {
    match url.split_once('@') {
        Some((creds, host)) if creds.contains(':') && creds.matches(':').count() > 1 => {
            let scheme_end = creds.find("://").map(|i| i + 3).unwrap_or(0);
            format!("{}***@{host}", &creds[..scheme_end])
        }
        _ => url.to_owned(),
    }
}

/// Prefixes `key` with this process's key prefix.
pub fn key(cfg: &RedisConfig, key: &str) -> String {
    format!("{}{key}", cfg.key_prefix)
}
