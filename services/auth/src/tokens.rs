//! Access tokens: EdDSA JWTs with the platform's `Claims`, signed by the
//! active key and carrying its `kid`.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, Header};
use shopmesh_platform::auth::Claims;
use uuid::Uuid;

use crate::keys::KeyStore;

pub struct TokenIssuer {
    keys: Arc<KeyStore>,
    issuer: String,
    audience: String,
    access_ttl: Duration,
}

/// A signed access token and what it says.
pub struct AccessToken {
    pub token: String,
    pub claims: Claims,
}

impl TokenIssuer {
    pub fn new(keys: Arc<KeyStore>, issuer: &str, audience: &str, access_ttl: Duration) -> Self {
        Self { keys, issuer: issuer.to_owned(), audience: audience.to_owned(), access_ttl }
    }

    pub fn access_ttl(&self) -> Duration {
        self.access_ttl
    }

    pub async fn issue(
        &self,
        conn: &mut sqlx::PgConnection,
        user_id: Uuid,
        roles: &[String],
        family_id: Uuid,
    ) -> anyhow::Result<AccessToken> {
        let key = self.keys.signing_key(conn).await?;
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user_id.to_string(),
            roles: roles.to_vec(),
            jti: Uuid::now_v7().to_string(),
            iat: now,
            exp: now + self.access_ttl.as_secs() as i64,
            fam: family_id.to_string(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid);
        let token = jsonwebtoken::encode(&header, &claims, &key.key)?;
        Ok(AccessToken { token, claims })
    }
}
