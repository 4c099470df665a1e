//! The auth service: accounts, login, rotating refresh tokens, EdDSA access
//! tokens and the JWKS every other service verifies them with. Wiring only.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::future::BoxFuture;
use shopmesh_platform::config::Needs;
use shopmesh_platform::kafka::topics;
use shopmesh_platform::outbox::Outbox;
use shopmesh_platform::runtime::{ServiceDef, ServiceRuntime, ServiceSpec};
use sqlx::PgPool;
use tonic::service::Routes;

pub mod domain;
pub mod events;
pub mod grpc;
pub mod keys;
pub mod passwords;
pub mod settings;
pub mod store;
pub mod tokens;

pub use keys::rotate_signing_key;

pub mod pb {
    tonic::include_proto!("shopmesh.auth.v1");
    pub const DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("descriptor");
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

pub static SERVICE: ServiceDef = ServiceDef {
    spec: ServiceSpec {
        name: "auth",
        needs: Needs { postgres: true, redis: true, kafka: true },
        grpc_services: &["shopmesh.auth.v1.AuthService"],
        descriptor_sets: &[pb::DESCRIPTOR_SET],
        migrator: Some(&MIGRATOR),
        topics: &[topics::USER],
        db_settings: &[],
    },
    build: build_boxed,
};

fn build_boxed(rt: &mut ServiceRuntime) -> BoxFuture<'_, anyhow::Result<Routes>> {
    Box::pin(build(rt))
}

async fn build(rt: &mut ServiceRuntime) -> anyhow::Result<Routes> {
    let settings = settings::Settings::load(&rt.config.source)?;
    let pool = rt.pool().clone();
    let publish_window = settings.key_publish_window();

    let action =
        keys::ensure_fresh_key(&pool, settings.key_max_age, publish_window).await.context("preparing signing key")?;
    tracing::info!(?action, "signing key ready");
    if let Some(admin) = &settings.admin {
        create_admin(&pool, rt.outbox(), &admin.email, &admin.password, &admin.name)
            .await
            .context("bootstrapping admin (ADMIN_EMAIL)")?;
    }

    passwords::warm_up().await?;

    let keys = Arc::new(keys::KeyStore::new(pool.clone(), publish_window));
    rt.set_key_provider(Arc::new(keys::StoreKeys(keys.clone())));
    rt.add_http_routes(jwks_routes(keys.clone()));
    rt.spawn_task(keys::rotation_loop(
        pool.clone(),
        keys.clone(),
        settings.key_max_age,
        publish_window,
        rt.shutdown().clone(),
    ));
    rt.spawn_task(purge_loop(pool.clone(), rt.shutdown().clone()));

    let api = grpc::AuthApi {
        pool,
        outbox: rt.outbox().clone(),
        tokens: tokens::TokenIssuer::new(
            keys.clone(),
            &rt.config.jwt_issuer,
            &rt.config.jwt_audience,
            settings.access_ttl,
        ),
        keys,
        redis: rt.redis().clone(),
        redis_prefix: rt.config.redis.as_ref().map(|r| r.key_prefix.clone()).unwrap_or_default(),
        refresh_ttl: settings.refresh_ttl,
        passwords: passwords::PasswordWork::new(settings.password_hashes_at_once, settings.password_wait),
    };
    Ok(Routes::new(pb::auth_service_server::AuthServiceServer::new(api)))
}

/// `GET /.well-known/jwks.json` on the ops HTTP server.
fn jwks_routes(keys: Arc<keys::KeyStore>) -> axum::Router {
    use axum::http::{StatusCode, header};
    let handler = move || {
        let keys = keys.clone();
        async move {
            match keys.public_keys().await {
                Ok(k) => Ok(([(header::CACHE_CONTROL, "public, max-age=60")], axum::Json(keys::jwks_document(&k)))),
                Err(e) => {
                    tracing::error!(error = %e, "reading signing keys for JWKS");
                    Err(StatusCode::SERVICE_UNAVAILABLE)
                }
            }
        }
    };
    axum::Router::new().route("/.well-known/jwks.json", axum::routing::get(handler))
}

async fn purge_loop(pool: PgPool, shutdown: shopmesh_platform::shutdown::Shutdown) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = shutdown.wait() => return,
        }
        if let Err(e) = store::purge_expired_refresh_tokens(&pool).await {
            tracing::warn!(error = %e, "purging expired refresh tokens failed");
        }
    }
}

/// Creates an admin account, or grants `admin` to the existing account with
/// that email (its password is kept). Idempotent; emits UserRegistered only
/// when it creates the account. Returns the user id. Used by the admin
/// bootstrap (`ADMIN_EMAIL`/`ADMIN_PASSWORD`) and `shopmesh admin create`;
/// pass `Outbox::new("auth")` from outside the service.
pub async fn create_admin(
    pool: &PgPool,
    outbox: &Outbox,
    email: &str,
    password: &str,
    name: &str,
) -> anyhow::Result<String> {
    let email = domain::Email::parse(email)?;
    let password = domain::Password::parse(password)?;
    let name = domain::DisplayName::parse(name)?;
    let hash = passwords::hash(&password).await?;
    let (id, created) =
        store::create_or_promote_admin(pool, outbox, &email, &name, &hash, &domain::admin_roles()).await?;
    tracing::info!(user_id = %id, created, "admin account ready");
    Ok(id.to_string())
}
