//! Fast reject at the edge: every non-public route needs a valid bearer
//! token. Services still verify tokens themselves; this only saves them the
//! traffic and gives rate limiting a user id.

use std::sync::Arc;

use async_trait::async_trait;
use http::HeaderMap;

/// RPCs anyone may call. The single place that decides what is public.
pub const PUBLIC_METHODS: &[&str] = &[
    "shopmesh.auth.v1.AuthService.Register",
    "shopmesh.auth.v1.AuthService.Login",
    "shopmesh.auth.v1.AuthService.Refresh",
    "shopmesh.auth.v1.AuthService.GetJwks",
    "shopmesh.catalog.v1.CatalogService.ListProducts",
    "shopmesh.catalog.v1.CatalogService.GetProduct",
    "shopmesh.catalog.v1.CatalogService.BatchGetProducts",
    "shopmesh.catalog.v1.CatalogService.ListCategories",
    "shopmesh.inventory.v1.InventoryService.GetStock",
];

/// The gateway's own endpoints, all public.
pub const PUBLIC_GATEWAY_PATHS: &[&str] = &["/health/live", "/health/ready", "/openapi.json", "/docs"];

pub fn is_public_method(full_name: &str) -> bool {
    PUBLIC_METHODS.contains(&full_name)
}

/// Who made the request, as far as the edge can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub roles: Vec<String>,
}

/// Why a token was not accepted; the message is shown to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthRejection {
    /// Bad, expired or revoked token: 401.
    #[error("{0}")]
    Invalid(String),
    /// The verifier could not decide (keys or denylist unreachable): 503,
    /// never an unverified pass.
    #[error("cannot verify token right now: {0}")]
    Unavailable(String),
}

/// Verifies a bearer token. Implemented over the platform's verifier in
/// production and by fakes in tests.
#[async_trait]
pub trait EdgeAuth: Send + Sync + 'static {
    async fn verify(&self, bearer_token: &str) -> Result<Principal, AuthRejection>;
}

/// Refuses every token: for running the gateway with public routes only.
#[derive(Debug, Clone, Default)]
pub struct DenyAll;

#[async_trait]
impl EdgeAuth for DenyAll {
    async fn verify(&self, _bearer_token: &str) -> Result<Principal, AuthRejection> {
        Err(AuthRejection::Invalid("token verification is not configured".into()))
    }
}

#[async_trait]
impl<T: EdgeAuth + ?Sized> EdgeAuth for Arc<T> {
    async fn verify(&self, bearer_token: &str) -> Result<Principal, AuthRejection> {
        (**self).verify(bearer_token).await
    }
}

/// Production verifier: the platform's JWKS/EdDSA verifier with denylist.
#[async_trait]
impl EdgeAuth for shopmesh_platform::auth::TokenVerifier {
    async fn verify(&self, bearer_token: &str) -> Result<Principal, AuthRejection> {
        use shopmesh_platform::auth::AuthError;
        match shopmesh_platform::auth::TokenVerifier::verify(self, bearer_token).await {
            Ok(p) => Ok(Principal { user_id: p.user_id, roles: p.roles }),
            Err(AuthError::Unavailable(reason)) => Err(AuthRejection::Unavailable(reason)),
            Err(e) => Err(AuthRejection::Invalid(e.to_string())),
        }
    }
}

/// The token from `Authorization: Bearer <token>`, if that is what was sent.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    shopmesh_platform::auth::bearer_token(headers.get(http::header::AUTHORIZATION)?.to_str().ok()?)
}

/// Outcome of the edge check for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    Anonymous,
    Authenticated(Principal),
    Rejected(AuthRejection),
}

/// Verifies the token if one is present. On public routes a bad token does
/// not block (the client may hold a stale one); it is just not trusted.
pub async fn authenticate(auth: &dyn EdgeAuth, headers: &HeaderMap, public: bool) -> AuthOutcome {
    match bearer_token(headers) {
        Some(token) => match auth.verify(token).await {
            Ok(p) => AuthOutcome::Authenticated(p),
            Err(_) if public => AuthOutcome::Anonymous,
            Err(e) => AuthOutcome::Rejected(e),
        },
        None if public => AuthOutcome::Anonymous,
        None if headers.contains_key(http::header::AUTHORIZATION) => {
            AuthOutcome::Rejected(AuthRejection::Invalid("authorization must be a Bearer token".into()))
        }
        None => AuthOutcome::Rejected(AuthRejection::Invalid("missing bearer token".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct OneToken;

    #[async_trait]
    impl EdgeAuth for OneToken {
        async fn verify(&self, token: &str) -> Result<Principal, AuthRejection> {
            if token == "good" {
                Ok(Principal { user_id: "u1".into(), roles: vec![] })
            } else {
                Err(AuthRejection::Invalid("invalid token".into()))
            }
        }
    }

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert("authorization", a.parse().unwrap());
        }
        h
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token(&headers(Some("Bearer abc"))), Some("abc"));
        assert_eq!(bearer_token(&headers(Some("bearer  abc "))), Some("abc"));
        assert_eq!(bearer_token(&headers(Some("Basic abc"))), None);
        assert_eq!(bearer_token(&headers(Some("Bearer "))), None);
        assert_eq!(bearer_token(&headers(None)), None);
    }

    #[tokio::test]
    async fn outcomes() {
        let a = OneToken;
        assert!(matches!(
            authenticate(&a, &headers(Some("Bearer good")), false).await,
            AuthOutcome::Authenticated(p) if p.user_id == "u1"
        ));
        assert!(matches!(authenticate(&a, &headers(Some("Bearer bad")), false).await, AuthOutcome::Rejected(_)));
        assert_eq!(authenticate(&a, &headers(Some("Bearer bad")), true).await, AuthOutcome::Anonymous);
        assert!(matches!(
            authenticate(&a, &headers(Some("Basic x")), false).await,
            AuthOutcome::Rejected(m) if m.to_string().contains("Bearer")
        ));
        assert_eq!(authenticate(&a, &headers(None), true).await, AuthOutcome::Anonymous);
        assert!(matches!(authenticate(&a, &headers(None), false).await, AuthOutcome::Rejected(_)));
    }

    struct NoKeys;

    #[async_trait]
    impl shopmesh_platform::auth::KeyProvider for NoKeys {
        async fn fetch(&self) -> Result<Vec<shopmesh_platform::auth::PublicJwk>, String> {
            Err("JWKS unreachable".into())
        }
    }

    #[tokio::test]
    async fn platform_verifier_adapter_rejects_garbage() {
        let verifier = shopmesh_platform::auth::TokenVerifier::new(Arc::new(NoKeys), "iss", "aud", None, "");
        let auth: &dyn EdgeAuth = &verifier;
        assert!(matches!(auth.verify("not-a-jwt").await, Err(AuthRejection::Invalid(_))));
    }

    #[test]
    fn public_list_names_real_methods() {
        let pool = crate::descriptors::load_pool().unwrap();
        for name in PUBLIC_METHODS {
            let (service, method) = name.rsplit_once('.').unwrap();
            let svc = pool.get_service_by_name(service).unwrap_or_else(|| panic!("{service}"));
            assert!(svc.methods().any(|m| m.name() == method), "{name}");
        }
    }
}
