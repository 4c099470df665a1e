//! Loading the gateway from configuration and running it as part of the
//! one binary (`shopmesh serve gateway`, `shopmesh dev`).
//!
//! Upstreams: `SHOPMESH_<NAME>_URL` (e.g. `SHOPMESH_CATALOG_URL`) routes every
//! proto service of package `shopmesh.<name>.v1` to that address;
//! `SHOPMESH_GATEWAY_UPSTREAMS` (`pkg.Service=http://…,…`) adds or overrides
//! single services.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shopmesh_platform::auth::{HttpJwks, TokenVerifier};
use shopmesh_platform::config::{ConfigError, ConfigSource, RedisConfig};
use shopmesh_platform::shutdown::Shutdown;

use crate::edge_auth::{DenyAll, EdgeAuth};
use crate::ratelimit::{Quota, RateLimitConfig};
use crate::{Gateway, GatewayConfig};

/// "2000/300" = 2000 requests per 300 seconds.
fn quota(source: &ConfigSource, key: &str, default: Quota) -> Result<Quota, ConfigError> {
    let Some(raw) = source.get(key) else { return Ok(default) };
    let invalid = |reason: &str| ConfigError::Invalid {
        var: format!("SHOPMESH_{key}"),
        value: raw.clone(),
        reason: reason.to_owned(),
    };
    let (n, secs) = raw.split_once('/').ok_or_else(|| invalid("expected <requests>/<seconds>, e.g. 2000/300"))?;
    let n: u32 = n.trim().parse().map_err(|_| invalid("requests must be a positive integer"))?;
    let secs: u64 = secs.trim().parse().map_err(|_| invalid("seconds must be a positive integer"))?;
    if n == 0 || secs == 0 {
        return Err(invalid("requests and seconds must be positive"));
    }
    Ok(Quota::new(n, Duration::from_secs(secs)))
}

/// Everything the gateway process needs, read from `source` (scope "gateway").
pub struct GatewaySettings {
    pub gateway: GatewayConfig,
    pub redis: RedisConfig,
    pub jwks_url: Option<String>,
    pub jwt_issuer: String,
    pub jwt_audience: String,
}

impl GatewaySettings {
    /// `services` lists the proto services of each backend name, e.g.
    /// ("catalog", ["shopmesh.catalog.v1.CatalogService"]).
    pub fn load(source: &ConfigSource, services: &[(&str, &[&str])]) -> Result<Self, ConfigError> {
        let s = source.scoped("gateway");
        let mut upstreams = HashMap::new();
        for (name, protos) in services {
            if let Some(url) = s.get(&format!("{}_URL", name.to_uppercase())) {
                for proto in *protos {
                    upstreams.insert((*proto).to_owned(), url.clone());
                }
            }
        }
        if let Some(list) = s.get("GATEWAY_UPSTREAMS") {
            for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                let (svc, url) = entry.split_once('=').ok_or_else(|| ConfigError::Invalid {
                    var: "SHOPMESH_GATEWAY_UPSTREAMS".into(),
                    value: entry.to_owned(),
                    reason: "expected pkg.Service=http://host:port".into(),
                })?;
                upstreams.insert(svc.trim().to_owned(), url.trim().to_owned());
            }
        }
        let defaults = RateLimitConfig::default();
        let key_prefix = s.get("REDIS_KEY_PREFIX").unwrap_or_default();
        let rate_limit = RateLimitConfig {
            enabled: s.bool_or("RATE_LIMIT_ENABLED", defaults.enabled)?,
            anonymous: quota(&s, "RATE_LIMIT_ANONYMOUS", defaults.anonymous)?,
            authenticated: quota(&s, "RATE_LIMIT_AUTHENTICATED", defaults.authenticated)?,
            login: quota(&s, "RATE_LIMIT_LOGIN", defaults.login)?,
            signup: quota(&s, "RATE_LIMIT_SIGNUP", defaults.signup)?,
            key_prefix: format!("{key_prefix}{}", defaults.key_prefix),
            ..defaults
        };
        let gateway = GatewayConfig {
            listen: s.parse_or("GATEWAY_LISTEN", SocketAddr::from(([0, 0, 0, 0], 8080)))?,
            // The ops address every service has (`/metrics`, health).
            ops_listen: s.parse_or("HTTP_ADDR", SocketAddr::from(([0, 0, 0, 0], 9090)))?,
            upstreams,
            default_timeout: s.millis_or("GATEWAY_TIMEOUT_MS", Duration::from_secs(10))?,
            body_limit_bytes: s.parse_or("GATEWAY_BODY_LIMIT_BYTES", 1024 * 1024)?,
            cors_origins: s
                .get("CORS_ORIGINS")
                .map(|v| v.split(',').map(|o| o.trim().to_owned()).filter(|o| !o.is_empty()).collect())
                .unwrap_or_default(),
            rate_limit,
            trust_forwarded_for: s.bool_or("TRUST_FORWARDED_FOR", false)?,
        };
        Ok(Self {
            gateway,
            redis: RedisConfig {
                url: s.require("REDIS_URL")?,
                key_prefix,
                command_timeout: s.millis_or("REDIS_TIMEOUT_MS", Duration::from_millis(500))?,
            },
            jwks_url: s.get("JWKS_URL").filter(|u| !u.is_empty()),
            jwt_issuer: s.get("JWT_ISSUER").unwrap_or_else(|| "shopmesh-auth".into()),
            jwt_audience: s.get("JWT_AUDIENCE").unwrap_or_else(|| "shopmesh".into()),
        })
    }
}

/// A gateway serving in the background.
pub struct LaunchedGateway {
    pub addr: SocketAddr,
    /// Where `/metrics` (and health) are served.
    pub ops_addr: SocketAddr,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Connects Redis, builds the edge verifier and starts serving; returns once
/// the listener is bound.
pub async fn launch(settings: GatewaySettings, shutdown: Shutdown) -> anyhow::Result<LaunchedGateway> {
    use anyhow::Context as _;
    shopmesh_platform::metrics::install();
    let redis = shopmesh_platform::redis::connect(&settings.redis).await.context("gateway: redis config")?;
    let auth: Arc<dyn EdgeAuth> = match &settings.jwks_url {
        Some(url) => Arc::new(TokenVerifier::new(
            Arc::new(HttpJwks::new(url)),
            &settings.jwt_issuer,
            &settings.jwt_audience,
            Some(redis.clone()),
            &settings.redis.key_prefix,
        )),
        None => {
            tracing::warn!("JWKS_URL not set: the gateway refuses every token; only public routes work");
            Arc::new(DenyAll)
        }
    };
    let (listen, ops_listen) = (settings.gateway.listen, settings.gateway.ops_listen);
    let gateway = Gateway::new(settings.gateway, Some(redis), auth)?;
    let ready = gateway.ready_flag();
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("gateway: binding {listen}"))?;
    let ops_listener = tokio::net::TcpListener::bind(ops_listen)
        .await
        .with_context(|| format!("gateway: binding HTTP_ADDR {ops_listen}"))?;
    let (addr, ops_addr) = (listener.local_addr()?, ops_listener.local_addr()?);
    let ops_router = gateway.ops_router();
    let (stop, ops_stop) = (shutdown.clone(), shutdown);
    let public = crate::serve(listener, gateway.router(), async move {
        stop.wait().await;
        // Fail readiness first so load balancers stop sending, then drain.
        ready.store(false, std::sync::atomic::Ordering::SeqCst);
    });
    let ops = crate::serve(ops_listener, ops_router, async move { ops_stop.wait().await });
    let task = tokio::spawn(async move {
        let (public, ops) = tokio::join!(public, ops);
        public.and(ops)
    });
    tracing::info!(%addr, %ops_addr, "gateway serving");
    Ok(LaunchedGateway { addr, ops_addr, task })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICES: &[(&str, &[&str])] = &[("catalog", &["shopmesh.catalog.v1.CatalogService"])];

    #[test]
    fn upstreams_come_from_service_urls_and_overrides() {
        let src = ConfigSource::from_pairs([
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            ("CATALOG_URL", "http://catalog:50051"),
            ("GATEWAY_UPSTREAMS", "shopmesh.auth.v1.AuthService=http://auth:50051"),
        ]);
        let s = GatewaySettings::load(&src, SERVICES).unwrap();
        assert_eq!(s.gateway.upstreams["shopmesh.catalog.v1.CatalogService"], "http://catalog:50051");
        assert_eq!(s.gateway.upstreams["shopmesh.auth.v1.AuthService"], "http://auth:50051");
    }

    #[test]
    fn quotas_parse_and_name_the_variable_when_wrong() {
        let src = ConfigSource::from_pairs([("REDIS_URL", "redis://x"), ("RATE_LIMIT_LOGIN", "5/30")]);
        let s = GatewaySettings::load(&src, SERVICES).unwrap();
        assert_eq!(s.gateway.rate_limit.login.limit, 5);
        let bad = ConfigSource::from_pairs([("REDIS_URL", "redis://x"), ("RATE_LIMIT_LOGIN", "five")]);
        let msg = GatewaySettings::load(&bad, SERVICES).err().unwrap().to_string();
        assert!(msg.contains("SHOPMESH_RATE_LIMIT_LOGIN"), "{msg}");
    }
}
