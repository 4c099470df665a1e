//! Ed25519 signing keys: generated into Postgres (so every replica signs with
//! the same key), rotated by age or on demand, and published as a JWKS while
//! any token they signed can still be valid.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use jsonwebtoken::EncodingKey;
use sha2::{Digest, Sha256};
use shopmesh_platform::auth::{KeyProvider, PublicJwk};
use shopmesh_platform::shutdown::Shutdown;
use sqlx::{PgConnection, PgPool};
use tokio::sync::RwLock;

/// Serialises key generation and rotation across replicas.
const KEY_LOCK: i64 = 0x5a17_4e75;

/// How long a replica keeps signing with the key it loaded before looking
/// again; a rotation by another replica takes effect within this.
pub const SIGNING_KEY_CACHE: Duration = Duration::from_secs(30);

/// A freshly generated key pair.
pub struct GeneratedKey {
    pub kid: String,
    pub pkcs8_der: Vec<u8>,
    pub x: String,
}

pub fn generate() -> anyhow::Result<GeneratedKey> {
    let seed: [u8; 32] = rand::random();
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let der = key.to_pkcs8_der().map_err(|e| anyhow::anyhow!("encoding PKCS#8: {e}"))?;
    let x = URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes());
    Ok(GeneratedKey { kid: thumbprint(&x), pkcs8_der: der.as_bytes().to_vec(), x })
}

/// RFC 7638 thumbprint of an Ed25519 JWK: a kid derived from the key itself.
pub fn thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// The JWKS document served over HTTP (RFC 7517).
pub fn jwks_document(keys: &[PublicJwk]) -> serde_json::Value {
    let keys: Vec<_> = keys
        .iter()
        .map(|k| {
            serde_json::json!({
                "kty": "OKP", "crv": "Ed25519", "x": k.x, "kid": k.kid, "alg": "EdDSA", "use": "sig",
            })
        })
        .collect();
    serde_json::json!({ "keys": keys })
}

/// What key maintenance did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAction {
    Kept,
    Created(String),
    Rotated(String),
}

/// Makes sure an active key exists and is younger than `max_age`, and drops
/// retired keys nothing can need any more. Safe to run on every replica.
pub async fn ensure_fresh_key(pool: &PgPool, max_age: Duration, publish_window: Duration) -> anyhow::Result<KeyAction> {
    let mut tx = pool.begin().await?;
    lock(&mut tx).await?;
    let active: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT created_at FROM signing_keys WHERE retired_at IS NULL")
            .fetch_optional(&mut *tx)
            .await?;
    let action = match active {
        None => KeyAction::Created(replace_active(&mut tx).await?),
        Some(created) if age(created) >= max_age => KeyAction::Rotated(replace_active(&mut tx).await?),
        Some(_) => KeyAction::Kept,
    };
    // Private keys no token can need any more are deleted, not hoarded.
    sqlx::query("DELETE FROM signing_keys WHERE retired_at < now() - make_interval(secs => $1)")
        .bind(publish_window.as_secs_f64())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(action)
}

/// Retires the active signing key and makes a new one sign from now on (the
/// old one stays in the JWKS until its tokens expired). Returns the new kid.
pub async fn rotate_signing_key(pool: &PgPool) -> anyhow::Result<String> {
    let mut tx = pool.begin().await?;
    lock(&mut tx).await?;
    let kid = replace_active(&mut tx).await?;
    tx.commit().await?;
    tracing::info!(%kid, "signing key rotated");
    Ok(kid)
}

async fn lock(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(KEY_LOCK).execute(conn).await?;
    Ok(())
}

fn age(created: chrono::DateTime<chrono::Utc>) -> Duration {
    (chrono::Utc::now() - created).to_std().unwrap_or(Duration::ZERO)
}

/// Caller holds the key lock.
async fn replace_active(conn: &mut PgConnection) -> anyhow::Result<String> {
    let key = generate()?;
    sqlx::query("UPDATE signing_keys SET retired_at = now() WHERE retired_at IS NULL").execute(&mut *conn).await?;
    sqlx::query("INSERT INTO signing_keys (kid, private_key, public_x) VALUES ($1, $2, $3)")
        .bind(&key.kid)
        .bind(&key.pkcs8_der)
        .bind(&key.x)
        .execute(&mut *conn)
        .await?;
    Ok(key.kid)
}

/// The key tokens are signed with.
#[derive(Clone)]
pub struct ActiveKey {
    pub kid: String,
    pub key: EncodingKey,
}

struct Cached {
    key: ActiveKey,
    loaded: Instant,
}

/// Reads keys from Postgres for signing (cached briefly) and for the JWKS.
pub struct KeyStore {
    pool: PgPool,
    /// How long after retirement a key is still published.
    publish_window: Duration,
    cache: RwLock<Option<Cached>>,
}

impl KeyStore {
    pub fn new(pool: PgPool, publish_window: Duration) -> Self {
        Self { pool, publish_window, cache: RwLock::new(None) }
    }

    /// The active key, read over `conn` when the cache is stale: callers
    /// sign inside a transaction, and a second pooled connection per login
    /// would let a burst of logins starve the pool.
    pub async fn signing_key(&self, conn: &mut sqlx::PgConnection) -> anyhow::Result<ActiveKey> {
        if let Some(c) = self.cache.read().await.as_ref()
            && c.loaded.elapsed() < SIGNING_KEY_CACHE
        {
            return Ok(c.key.clone());
        }
        let mut cache = self.cache.write().await;
        let (kid, der): (String, Vec<u8>) =
            sqlx::query_as("SELECT kid, private_key FROM signing_keys WHERE retired_at IS NULL")
                .fetch_optional(conn)
                .await?
                .context("no active signing key")?;
        let key = ActiveKey { kid, key: EncodingKey::from_ed_der(&der) };
        *cache = Some(Cached { key: key.clone(), loaded: Instant::now() });
        Ok(key)
    }

    /// Forgets the cached key (after a local rotation).
    pub async fn invalidate(&self) {
        *self.cache.write().await = None;
    }

    /// The active key and every retired key a live token may carry, newest first.
    pub async fn public_keys(&self) -> Result<Vec<PublicJwk>, sqlx::Error> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT kid, public_x FROM signing_keys
             WHERE retired_at IS NULL OR retired_at > now() - make_interval(secs => $1)
             ORDER BY created_at DESC",
        )
        .bind(self.publish_window.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(kid, x)| PublicJwk { kid, x }).collect())
    }
}

/// The auth service verifies bearer tokens against its own store rather
/// than fetching its own JWKS over HTTP.
pub struct StoreKeys(pub Arc<KeyStore>);

#[async_trait::async_trait]
impl KeyProvider for StoreKeys {
    async fn fetch(&self) -> Result<Vec<PublicJwk>, String> {
        self.0.public_keys().await.map_err(|e| format!("reading signing keys: {e}"))
    }
}

/// Rotates the key once it is `max_age` old; checks a few times per max age.
pub async fn rotation_loop(
    pool: PgPool,
    keys: Arc<KeyStore>,
    max_age: Duration,
    publish_window: Duration,
    shutdown: Shutdown,
) {
    let every = (max_age / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait() => return,
        }
        match ensure_fresh_key(&pool, max_age, publish_window).await {
            Ok(KeyAction::Kept) => {}
            Ok(action) => {
                tracing::info!(?action, "signing key rotated by age");
                keys.invalidate().await;
            }
            Err(e) => tracing::warn!(error = %e, "signing key maintenance failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_sign_tokens_that_verify_with_the_published_x() {
        let key = generate().unwrap();
        assert_eq!(key.kid, thumbprint(&key.x));
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        let claims = serde_json::json!({"sub": "u", "exp": chrono::Utc::now().timestamp() + 60});
        let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(&key.pkcs8_der)).unwrap();
        let decoding = jsonwebtoken::DecodingKey::from_ed_components(&key.x).unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
        validation.set_required_spec_claims(&["exp"]);
        jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation).unwrap();
    }

    #[test]
    fn thumbprint_matches_rfc8037_example() {
        // RFC 8037 appendix A.3.
        assert_eq!(
            thumbprint("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn jwks_document_has_the_members_verifiers_need() {
        let doc = jwks_document(&[PublicJwk { kid: "k1".into(), x: "xx".into() }]);
        let k = &doc["keys"][0];
        assert_eq!(
            (k["kty"].as_str(), k["crv"].as_str(), k["alg"].as_str()),
            (Some("OKP"), Some("Ed25519"), Some("EdDSA"))
        );
        assert_eq!((k["kid"].as_str(), k["x"].as_str(), k["use"].as_str()), (Some("k1"), Some("xx"), Some("sig")));
    }
}
