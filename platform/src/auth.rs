//! Zero-trust identity: every service (and the gateway) verifies bearer
//! tokens itself — EdDSA signature against the auth service's JWKS (cached,
//! refreshed on an unknown `kid`), issuer, audience, expiry, and the Redis
//! denylist of logged-out tokens and sessions.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use fred::prelude::*;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;
use tonic::Status;

pub const ROLE_CUSTOMER: &str = "customer";
pub const ROLE_ADMIN: &str = "admin";

/// Access token claims.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub roles: Vec<String>,
    pub jti: String,
    pub iat: i64,
    pub exp: i64,
    /// Refresh-token family this access token was issued with (logout revokes it).
    #[serde(default)]
    pub fam: String,
}

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub struct Principal {
    pub user_id: String,
    pub roles: Vec<String>,
    pub claims: Claims,
}

impl Principal {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    pub fn require_role(&self, role: &str) -> Result<(), Status> {
        if self.has_role(role) { Ok(()) } else { Err(Status::permission_denied(format!("requires role {role}"))) }
    }

    pub fn is_admin(&self) -> bool {
        self.has_role(ROLE_ADMIN)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("malformed authorization header")]
    Malformed,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token expired")]
    Expired,
    #[error("token revoked")]
    Revoked,
    /// Keys or denylist unreachable: verification cannot be completed, so
    /// the call is refused (never accepted unverified).
    #[error("cannot verify token right now: {0}")]
    Unavailable(String),
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unavailable(_) => Status::unavailable(e.to_string()),
            _ => Status::unauthenticated(e.to_string()),
        }
    }
}

/// A public signing key as published in the JWKS.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PublicJwk {
    pub kid: String,
    /// base64url (no padding) Ed25519 public key.
    pub x: String,
}

/// Where verifiers get the public keys.
#[async_trait::async_trait]
pub trait KeyProvider: Send + Sync {
    async fn fetch(&self) -> Result<Vec<PublicJwk>, String>;
}

/// JWKS over HTTP (the auth service serves `/.well-known/jwks.json`).
pub struct HttpJwks {
    url: String,
    client: reqwest::Client,
}

impl HttpJwks {
    pub fn new(url: &str) -> Self {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().expect("http client");
        Self { url: url.to_owned(), client }
    }
}

#[derive(Deserialize)]
struct JwksDocument {
    keys: Vec<JwksKey>,
}

#[derive(Deserialize)]
struct JwksKey {
    kid: Option<String>,
    kty: Option<String>,
    crv: Option<String>,
    x: Option<String>,
}

#[async_trait::async_trait]
impl KeyProvider for HttpJwks {
    async fn fetch(&self) -> Result<Vec<PublicJwk>, String> {
        let doc: JwksDocument = self
            .client
            .get(&self.url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("fetching {}: {e}", self.url))?
            .json()
            .await
            .map_err(|e| format!("parsing JWKS: {e}"))?;
        Ok(doc
            .keys
            .into_iter()
            .filter(|k| k.kty.as_deref() == Some("OKP") && k.crv.as_deref() == Some("Ed25519"))
            .filter_map(|k| Some(PublicJwk { kid: k.kid?, x: k.x? }))
            .collect())
    }
}

/// Redis key of a revoked access token id.
pub fn denylist_key(prefix: &str, jti: &str) -> String {
    format!("{prefix}auth:denylist:{jti}")
}

/// Redis key of a revoked session: every access token whose `fam` (its
/// refresh-token family) is `family`.
pub fn session_denylist_key(prefix: &str, family: &str) -> String {
    format!("{prefix}auth:denylist:session:{family}")
}

/// Clock skew a token's `exp` and `nbf` are allowed.
pub const LEEWAY_SECS: u64 = 5;

/// Puts `jti` on the denylist until the token would have expired anyway
/// (its `exp` plus the leeway verifiers still accept it for).
pub async fn deny(redis: &Client, prefix: &str, jti: &str, until_unix: i64) -> Result<(), fred::error::Error> {
    let ttl = (until_unix + LEEWAY_SECS as i64 - chrono::Utc::now().timestamp()).max(1);
    redis.set::<(), _, _>(denylist_key(prefix, jti), "1", Some(Expiration::EX(ttl)), None, false).await
}

/// Denies every access token of session `family`, including those issued
/// by earlier refreshes and any a thief holds. All were issued before now,
/// so none outlives `access_ttl` (plus the leeway, plus a second for `exp`
/// being whole seconds) from now, as long as the issuer's TTL was not
/// longer when they were issued.
pub async fn deny_session(
    redis: &Client,
    prefix: &str,
    family: &str,
    access_ttl: Duration,
) -> Result<(), fred::error::Error> {
    let ttl = access_ttl.as_secs().saturating_add(LEEWAY_SECS + 1).min(i64::MAX as u64) as i64;
    redis.set::<(), _, _>(session_denylist_key(prefix, family), "1", Some(Expiration::EX(ttl)), None, false).await
}

struct KeyCache {
    keys: HashMap<String, DecodingKey>,
    /// When `keys` were fetched.
    fetched_at: Option<Instant>,
    /// When a fetch was last tried, and why it failed if it did.
    tried_at: Option<Instant>,
    failure: Option<String>,
}

/// Verifies access tokens. Cheap to share behind an `Arc`.
pub struct TokenVerifier {
    keys: Arc<KeySource>,
    validation: Validation,
    redis: Option<Client>,
    redis_prefix: String,
    verified: std::sync::Mutex<HashMap<String, Claims>>,
}

/// The signing keys as last fetched, and the one fetch that may run at a
/// time. Nothing holds the cache's lock while a fetch runs: verifications
/// with known keys never wait on the JWKS, however slow it is.
struct KeySource {
    provider: Arc<dyn KeyProvider>,
    cache: RwLock<KeyCache>,
    /// Held by the one fetch in progress (by the background task it was
    /// handed to, when a stale set is being refreshed).
    fetching: Arc<tokio::sync::Mutex<()>>,
    /// How old the keys may get before a verification refreshes them (in
    /// the background: a key we hold stays good for the tokens it signed).
    max_age: Duration,
}

impl KeySource {
    /// Fetches the JWKS unless a fetch was tried within `MIN_REFETCH`
    /// (one waited for counts: its result is what the caller wanted; a
    /// fetch ends within `FETCH_TIMEOUT`, less than that).
    async fn refresh(&self) {
        let one_at_a_time = self.fetching.clone().lock_owned().await;
        if self.cache.read().await.tried_at.is_some_and(|t| t.elapsed() < MIN_REFETCH) {
            return;
        }
        self.fetch(one_at_a_time).await;
    }

    /// Fetches the JWKS into the cache; `_fetching` is the held fetch lock.
    async fn fetch(&self, _fetching: tokio::sync::OwnedMutexGuard<()>) {
        let tried_at = Instant::now();
        self.cache.write().await.tried_at = Some(tried_at);
        let fetched = match tokio::time::timeout(FETCH_TIMEOUT, self.provider.fetch()).await {
            Ok(fetched) => fetched,
            Err(_) => Err(format!("no answer within {FETCH_TIMEOUT:?}")),
        };
        let mut cache = self.cache.write().await;
        match fetched {
            Ok(keys) => {
                cache.keys = keys
                    .into_iter()
                    .filter_map(|k| DecodingKey::from_ed_components(&k.x).ok().map(|d| (k.kid, d)))
                    .collect();
                cache.fetched_at = Some(tried_at);
                cache.failure = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "JWKS refresh failed");
                cache.failure = Some(e);
            }
        }
    }
}

/// One request crosses several services with the same token, and the
/// signature check is the costliest step of each: a token that verified is
/// remembered until it expires (bounded; the denylist is still asked every time).
const VERIFIED_CAPACITY: usize = 10_000;

/// Unknown `kid`s trigger a refetch at most this often, failed or not
/// (forged kids can't make us hammer the auth service, and while it is down
/// requests don't queue behind one fetch after another).
const MIN_REFETCH: Duration = Duration::from_secs(5);
const MAX_KEY_AGE: Duration = Duration::from_secs(300);
/// Longest a fetch may take, whatever the provider's own timeouts; less
/// than `MIN_REFETCH`, so callers that waited for a fetch find it recent.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// The token of an `authorization` header value "Bearer <token>" (the
/// scheme is case-insensitive, RFC 9110 §11.1), if that is what it is.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl TokenVerifier {
    pub fn new(
        provider: Arc<dyn KeyProvider>,
        issuer: &str,
        audience: &str,
        redis: Option<Client>,
        redis_prefix: &str,
    ) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECS;
        let keys = KeySource {
            provider,
            cache: RwLock::new(KeyCache { keys: HashMap::new(), fetched_at: None, tried_at: None, failure: None }),
            fetching: Arc::new(tokio::sync::Mutex::new(())),
            max_age: MAX_KEY_AGE,
        };
        Self {
            keys: Arc::new(keys),
            validation,
            redis,
            redis_prefix: redis_prefix.to_owned(),
            verified: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Verifies the value of an `authorization` header ("Bearer <jwt>").
    pub async fn verify_header(&self, header: &str) -> Result<Principal, AuthError> {
        self.verify(bearer_token(header).ok_or(AuthError::Malformed)?).await
    }

    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let claims = match self.remembered(token) {
            Some(claims) => claims,
            None => {
                let claims = self.verify_signed(token).await?;
                self.remember(token, &claims);
                claims
            }
        };
        if let Some(redis) = &self.redis {
            // The token itself, and its session: one round trip either way.
            let mut keys = vec![denylist_key(&self.redis_prefix, &claims.jti)];
            if !claims.fam.is_empty() {
                keys.push(session_denylist_key(&self.redis_prefix, &claims.fam));
            }
            let revoked: bool = redis
                .exists::<u32, _>(keys)
                .await
                .map(|n| n > 0)
                .map_err(|e| AuthError::Unavailable(format!("denylist: {e}")))?;
            if revoked {
                return Err(AuthError::Revoked);
            }
        }
        Ok(Principal { user_id: claims.sub.clone(), roles: claims.roles.clone(), claims })
    }

    /// Signature, algorithm, issuer, audience and expiry.
    async fn verify_signed(&self, token: &str) -> Result<Claims, AuthError> {
        // decode_header rejects alg "none" and unknown algorithms outright.
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::Invalid(format!("algorithm {:?} not accepted", header.alg)));
        }
        let kid = header.kid.ok_or_else(|| AuthError::Invalid("missing kid".into()))?;
        let key = self.key(&kid).await?;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid(e.to_string()),
        })?;
        Ok(data.claims)
    }

    /// Claims of a token verified before and not yet expired.
    fn remembered(&self, token: &str) -> Option<Claims> {
        let now = chrono::Utc::now().timestamp();
        let mut verified = self.verified.lock().expect("verified-token cache");
        match verified.get(token) {
            Some(claims) if claims.exp > now => Some(claims.clone()),
            Some(_) => {
                verified.remove(token);
                None
            }
            None => None,
        }
    }

    fn remember(&self, token: &str, claims: &Claims) {
        let now = chrono::Utc::now().timestamp();
        let mut verified = self.verified.lock().expect("verified-token cache");
        if verified.len() >= VERIFIED_CAPACITY {
            verified.retain(|_, c| c.exp > now);
            if verified.len() >= VERIFIED_CAPACITY {
                verified.clear();
            }
        }
        verified.insert(token.to_owned(), claims.clone());
    }

    async fn key(&self, kid: &str) -> Result<DecodingKey, AuthError> {
        {
            let cache = self.keys.cache.read().await;
            if let Some(key) = cache.keys.get(kid) {
                let stale = cache.fetched_at.is_none_or(|t| t.elapsed() >= self.keys.max_age);
                let may_fetch = cache.tried_at.is_none_or(|t| t.elapsed() >= MIN_REFETCH);
                // The lock goes with the task: no second refresh starts
                // while this one runs.
                if stale
                    && may_fetch
                    && let Ok(fetching) = self.keys.fetching.clone().try_lock_owned()
                {
                    let keys = self.keys.clone();
                    tokio::spawn(async move { keys.fetch(fetching).await });
                }
                return Ok(key.clone());
            }
        }
        // A kid we don't know: a key rotated in since we last asked, or a forgery.
        self.keys.refresh().await;
        // Without a key for this kid, a failed fetch means we cannot tell,
        // not that the token is bad.
        let cache = self.keys.cache.read().await;
        match (cache.keys.get(kid), &cache.failure) {
            (Some(key), _) => Ok(key.clone()),
            (None, Some(failure)) => Err(AuthError::Unavailable(failure.clone())),
            (None, None) => Err(AuthError::Invalid("unknown signing key".into())),
        }
    }
}

/// Access to the caller of a tonic request.
pub trait RequestAuthExt {
    /// The verified caller, or `Unauthenticated` when no token was sent.
    fn principal(&self) -> Result<&Principal, Status>;
}

impl<T> RequestAuthExt for tonic::Request<T> {
    fn principal(&self) -> Result<&Principal, Status> {
        self.extensions().get::<Principal>().ok_or_else(|| Status::unauthenticated("missing bearer token"))
    }
}

/// Tower layer for tonic servers: a request carrying `authorization` is
/// verified (bad token → `Unauthenticated` before any handler runs) and its
/// [`Principal`] put in the request extensions. Requests without a token pass
/// through; handlers of protected RPCs call [`RequestAuthExt::principal`].
#[derive(Clone)]
pub struct AuthLayer {
    verifier: Option<Arc<TokenVerifier>>,
}

impl AuthLayer {
    /// Without a verifier every token is refused (nothing is accepted unverified).
    pub fn new(verifier: Option<Arc<TokenVerifier>>) -> Self {
        Self { verifier }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, verifier: self.verifier.clone() }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    verifier: Option<Arc<TokenVerifier>>,
}

impl<S, B, ResB> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    ResB: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The ready inner service is used for this call; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let verifier = self.verifier.clone();
        Box::pin(async move {
            let header = req.headers().get(http::header::AUTHORIZATION).map(|v| v.to_str().map(str::to_owned));
            match header {
                None => {}
                Some(Err(_)) => return Ok(Status::unauthenticated("malformed authorization header").into_http()),
                Some(Ok(_)) if verifier.is_none() => {
                    return Ok(Status::unauthenticated("token verification is not configured (JWKS_URL)").into_http());
                }
                Some(Ok(value)) => match verifier.as_ref().expect("checked above").verify_header(&value).await {
                    Ok(principal) => {
                        tracing::Span::current().record("user_id", principal.user_id.as_str());
                        req.extensions_mut().insert(principal);
                    }
                    Err(e) => return Ok(Status::from(e).into_http()),
                },
            }
            inner.call(req).await
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A JWKS endpoint that is down, counting how often it is asked.
    #[derive(Default)]
    struct DownJwks {
        fetches: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl KeyProvider for DownJwks {
        async fn fetch(&self) -> Result<Vec<PublicJwk>, String> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            Err("connection refused".into())
        }
    }

    fn token_signed_under(kid: &str) -> String {
        use base64::Engine as _;
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!(r#"{{"alg":"EdDSA","typ":"JWT","kid":"{kid}"}}"#));
        format!("{header}.e30.c2ln")
    }

    #[tokio::test]
    async fn while_the_jwks_is_down_it_is_asked_once_per_interval_and_tokens_are_unavailable_not_invalid() {
        let jwks = Arc::new(DownJwks::default());
        let verifier = TokenVerifier::new(jwks.clone(), "shopmesh-auth", "shopmesh", None, "");
        for i in 0..20 {
            let err = verifier.verify(&token_signed_under(&format!("kid-{i}"))).await.unwrap_err();
            assert!(matches!(err, AuthError::Unavailable(_)), "{err:?}");
        }
        assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1, "one failed fetch covers the next {MIN_REFETCH:?}");
    }

    /// A JWKS that answers once, then never again (hung, not refusing).
    #[derive(Default)]
    struct HangsAfterOneAnswer {
        fetches: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl KeyProvider for HangsAfterOneAnswer {
        async fn fetch(&self) -> Result<Vec<PublicJwk>, String> {
            if self.fetches.fetch_add(1, Ordering::SeqCst) > 0 {
                std::future::pending::<()>().await;
            }
            // RFC 8037's example Ed25519 public key.
            let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
            Ok(vec![PublicJwk { kid: "k1".into(), x: x.into() }])
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_jwks_holds_up_no_verification_with_a_key_already_known() {
        let jwks = Arc::new(HangsAfterOneAnswer::default());
        let mut verifier = TokenVerifier::new(jwks.clone(), "shopmesh-auth", "shopmesh", None, "");
        verifier.key("k1").await.expect("first fetch answers");
        // The keys are due for a refresh, and the JWKS has stopped answering.
        Arc::get_mut(&mut verifier.keys).unwrap().max_age = Duration::ZERO;
        verifier.keys.cache.write().await.tried_at = Some(Instant::now() - MIN_REFETCH);
        for _ in 0..20 {
            let key = tokio::time::timeout(Duration::from_millis(500), verifier.key("k1")).await;
            assert!(matches!(key, Ok(Ok(_))), "answered with the known key at once");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(jwks.fetches.load(Ordering::SeqCst), 2, "one refresh started, in the background");
    }

    #[test]
    fn the_bearer_scheme_is_read_in_any_case_and_nothing_else_is_a_token() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc "), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }
}
