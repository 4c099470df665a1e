//! A stand-in for the auth service in tests: signs EdDSA access tokens with
//! a throwaway key and serves the matching JWKS over HTTP, so services
//! verify them exactly as they verify real ones.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use shopmesh_platform::auth::{Claims, ROLE_ADMIN, ROLE_CUSTOMER};

use crate::TestEnv;

pub struct TestIssuer {
    kid: String,
    key: EncodingKey,
    /// Where the JWKS is served; services read it from `JWKS_URL`.
    pub jwks_url: String,
    pub issuer: String,
    pub audience: String,
}

impl TestIssuer {
    /// Generates a key and serves its JWKS on an ephemeral port (for as long
    /// as the test's runtime lives). Issuer and audience are the defaults
    /// services expect.
    pub async fn start() -> Self {
        let seed: [u8; 32] = rand::random();
        let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
        let der = signing.to_pkcs8_der().expect("encoding test key");
        let x = URL_SAFE_NO_PAD.encode(signing.verifying_key().as_bytes());
        let kid = format!("test-{}", &x[..8]);
        let doc = serde_json::json!({
            "keys": [{ "kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig" }]
        });
        let app = axum::Router::new()
            .route("/.well-known/jwks.json", axum::routing::get(move || async move { axum::Json(doc) }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding JWKS server");
        let addr = listener.local_addr().expect("bound");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            kid,
            key: EncodingKey::from_ed_der(der.as_bytes()),
            jwks_url: format!("http://{addr}/.well-known/jwks.json"),
            issuer: "shopmesh-auth".into(),
            audience: "shopmesh".into(),
        }
    }

    /// Points every service of `env` at this issuer's JWKS.
    pub fn configure(&self, env: &mut TestEnv) {
        env.set("JWKS_URL", self.jwks_url.clone());
        env.set("JWT_ISSUER", self.issuer.clone());
        env.set("JWT_AUDIENCE", self.audience.clone());
    }

    /// A signed access token for `user_id` with `roles`, valid for an hour.
    pub fn token(&self, user_id: &str, roles: &[&str]) -> String {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user_id.to_owned(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            jti: uuid::Uuid::now_v7().to_string(),
            iat: now,
            exp: now + 3600,
            fam: uuid::Uuid::now_v7().to_string(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.key).expect("signing test token")
    }

    pub fn customer(&self, user_id: &str) -> String {
        self.token(user_id, &[ROLE_CUSTOMER])
    }

    pub fn admin(&self, user_id: &str) -> String {
        self.token(user_id, &[ROLE_CUSTOMER, ROLE_ADMIN])
    }
}

/// `message` as a tonic request carrying `authorization: Bearer <token>`.
pub fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii token"));
    request
}
