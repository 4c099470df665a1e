//! Auth against real Postgres and Redis (no Kafka: events are checked in the
//! outbox). Each test gets a fresh database and Redis key prefix.

use std::sync::Arc;
use std::time::Duration;

use fred::interfaces::KeysInterface as _;
use shopmesh_auth::keys::{self, KeyAction, KeyStore, StoreKeys};
use shopmesh_auth::passwords::PasswordWork;
use shopmesh_auth::pb::auth_service_server::AuthService as _;
use shopmesh_auth::{create_admin, grpc::AuthApi, pb, rotate_signing_key, tokens::TokenIssuer};
use shopmesh_platform::auth::{AuthError, Principal, TokenVerifier};
use shopmesh_platform::config::RedisConfig;
use shopmesh_platform::outbox::Outbox;
use shopmesh_platform::testing::{ScratchDatabase, drop_databases, redis_url};
use sqlx::PgPool;
use tonic::{Code, Request};

const ISSUER: &str = "shopmesh-auth";
const AUDIENCE: &str = "shopmesh";
const PUBLISH_WINDOW: Duration = Duration::from_secs(900 + 90);

struct Harness {
    pool: PgPool,
    api: AuthApi,
    keys: Arc<KeyStore>,
    verifier: TokenVerifier,
    db_name: String,
}

async fn harness() -> Harness {
    let ScratchDatabase { pool, name: db_name } = ScratchDatabase::create("auth_test", &shopmesh_auth::MIGRATOR).await;
    keys::ensure_fresh_key(&pool, Duration::from_secs(3600), PUBLISH_WINDOW).await.unwrap();
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let redis_cfg =
        RedisConfig { url: redis_url(), key_prefix: prefix.clone(), command_timeout: Duration::from_secs(2) };
    let redis = shopmesh_platform::redis::connect(&redis_cfg).await.unwrap();
    let keys = Arc::new(KeyStore::new(pool.clone(), PUBLISH_WINDOW));
    let verifier =
        TokenVerifier::new(Arc::new(StoreKeys(keys.clone())), ISSUER, AUDIENCE, Some(redis.clone()), &prefix);
    let api = AuthApi {
        pool: pool.clone(),
        outbox: Outbox::new("auth"),
        keys: keys.clone(),
        tokens: TokenIssuer::new(keys.clone(), ISSUER, AUDIENCE, Duration::from_secs(900)),
        redis,
        redis_prefix: prefix,
        refresh_ttl: Duration::from_secs(3600),
        passwords: PasswordWork::new(2, Duration::from_secs(2)),
    };
    Harness { pool, api, keys, verifier, db_name }
}

impl Harness {
    async fn drop_db(self) {
        self.pool.close().await;
        drop_databases([self.db_name]).await;
    }

    async fn register(&self, email: &str, password: &str, name: &str) -> Result<String, tonic::Status> {
        let req = pb::RegisterRequest { email: email.into(), password: password.into(), name: name.into() };
        Ok(self.api.register(Request::new(req)).await?.into_inner().user_id)
    }

    async fn login(&self, email: &str, password: &str) -> Result<pb::TokenPair, tonic::Status> {
        let req = pb::LoginRequest { email: email.into(), password: password.into() };
        Ok(self.api.login(Request::new(req)).await?.into_inner().tokens.unwrap())
    }

    async fn refresh(&self, token: &str) -> Result<pb::TokenPair, tonic::Status> {
        let req = pb::RefreshRequest { refresh_token: token.into() };
        Ok(self.api.refresh(Request::new(req)).await?.into_inner().tokens.unwrap())
    }

    /// Ada registered and signed in, her session refreshed once: the
    /// login's tokens and the refresh's, one family.
    async fn session_refreshed_once(&self) -> (pb::TokenPair, pb::TokenPair) {
        self.register("ada@example.com", "correct horse", "Ada").await.unwrap();
        let first = self.login("ada@example.com", "correct horse").await.unwrap();
        let second = self.refresh(&first.refresh_token).await.unwrap();
        (first, second)
    }

    async fn outbox_events(&self) -> Vec<(String, String)> {
        sqlx::query_as("SELECT event_type, event_key FROM outbox ORDER BY seq").fetch_all(&self.pool).await.unwrap()
    }
}

fn field_of(status: &tonic::Status) -> String {
    use tonic_types::StatusExt as _;
    let details = status.get_error_details();
    details.bad_request().map(|b| b.field_violations[0].field.clone()).unwrap_or_default()
}

#[tokio::test]
async fn register_validates_normalises_and_emits_user_registered() {
    let h = harness().await;
    let id = h.register("  Ada@Example.COM ", "correct horse", "Ada").await.unwrap();
    let uuid = uuid::Uuid::parse_str(&id).unwrap();
    assert_eq!(uuid.get_version_num(), 7);

    let (email, hash): (String, String) = sqlx::query_as("SELECT email, password_hash FROM users WHERE id = $1")
        .bind(uuid)
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(email, "ada@example.com");
    assert!(hash.starts_with("$argon2id$") && !hash.contains("correct horse"));

    let dup = h.register("ADA@example.com", "another password", "Ada 2").await.unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);

    for (email, password, name, field) in [
        ("nope", "correct horse", "Ada", "email"),
        ("b@example.com", "short", "Ada", "password"),
        ("b@example.com", "correct horse", "  ", "name"),
    ] {
        let err = h.register(email, password, name).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(field_of(&err), field);
        assert!(!err.message().contains(password), "never echo the password");
    }

    assert_eq!(h.outbox_events().await, vec![("shopmesh.events.v1.UserRegistered".to_owned(), id)]);
    h.drop_db().await;
}

#[tokio::test]
async fn concurrent_duplicate_registrations_have_one_winner() {
    let h = Arc::new(harness().await);
    let attempts = (0..4).map(|_| {
        let h = h.clone();
        tokio::spawn(async move { h.register("race@example.com", "correct horse", "Racer").await })
    });
    let results: Vec<_> = futures::future::join_all(attempts).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(results.iter().filter_map(|r| r.as_ref().err()).all(|e| e.code() == Code::AlreadyExists));
    Arc::into_inner(h).unwrap().drop_db().await;
}

#[tokio::test]
async fn login_issues_verifiable_tokens_and_hides_which_part_was_wrong() {
    let h = harness().await;
    let id = h.register("ada@example.com", "correct horse", "Ada").await.unwrap();

    let wrong_pw = h.login("ada@example.com", "wrong horse!").await.unwrap_err();
    let unknown = h.login("nobody@example.com", "correct horse").await.unwrap_err();
    assert_eq!(wrong_pw.code(), Code::Unauthenticated);
    assert_eq!(unknown.code(), Code::Unauthenticated);
    assert_eq!(wrong_pw.message(), unknown.message());
    assert_eq!(wrong_pw.message(), "invalid email or password");
    // No account can have these; they are answered alike, not with a 500.
    for impossible in ["ada\0@example.com", &format!("{}@example.com", "a".repeat(300))] {
        let err = h.login(impossible, "correct horse").await.unwrap_err();
        assert_eq!((err.code(), err.message()), (Code::Unauthenticated, "invalid email or password"), "{impossible:?}");
    }

    let pair = h.login(" ADA@example.com", "correct horse").await.unwrap();
    assert_eq!(pair.token_type, "Bearer");
    assert_eq!(pair.expires_in, 900);
    let header = jsonwebtoken::decode_header(&pair.access_token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    let kid = header.kid.unwrap();
    let jwks = h.api.get_jwks(Request::new(pb::GetJwksRequest {})).await.unwrap().into_inner();
    assert!(jwks.keys.iter().any(|k| k.kid == kid && k.kty == "OKP" && k.crv == "Ed25519" && k.alg == "EdDSA"));

    let principal = h.verifier.verify(&pair.access_token).await.unwrap();
    assert_eq!(principal.user_id, id);
    assert_eq!(principal.roles, vec!["customer"]);
    let c = &principal.claims;
    assert_eq!((c.iss.as_str(), c.aud.as_str()), (ISSUER, AUDIENCE));
    assert_eq!(c.exp - c.iat, 900);
    assert_eq!(uuid::Uuid::parse_str(&c.jti).unwrap().get_version_num(), 7);
    uuid::Uuid::parse_str(&c.fam).unwrap();
    h.drop_db().await;
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let h = harness().await;
    h.register("ada@example.com", "correct horse", "Ada").await.unwrap();
    let first = h.login("ada@example.com", "correct horse").await.unwrap();

    let second = h.refresh(&first.refresh_token).await.unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    let fam = |t: &str| {
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, t.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        claims["fam"].as_str().unwrap().to_owned()
    };
    assert_eq!(fam(&first.access_token), fam(&second.access_token), "same family");
    let third = h.refresh(&second.refresh_token).await.unwrap();

    // Replaying a rotated token kills the family, including the newest token.
    let replay = h.refresh(&first.refresh_token).await.unwrap_err();
    assert_eq!(replay.code(), Code::Unauthenticated);
    assert_eq!(h.refresh(&third.refresh_token).await.unwrap_err().code(), Code::Unauthenticated);

    // Other sessions (families) are untouched.
    let other = h.login("ada@example.com", "correct horse").await.unwrap();
    h.refresh(&other.refresh_token).await.unwrap();

    let garbage = h.refresh("garbage").await.unwrap_err();
    assert_eq!(garbage.code(), Code::InvalidArgument);
    let unknown = h.refresh(&"A".repeat(43)).await.unwrap_err();
    assert_eq!(unknown.code(), Code::Unauthenticated);
    h.drop_db().await;
}

#[tokio::test]
async fn concurrent_refreshes_of_one_token_cannot_both_succeed() {
    let h = Arc::new(harness().await);
    h.register("ada@example.com", "correct horse", "Ada").await.unwrap();
    let pair = h.login("ada@example.com", "correct horse").await.unwrap();
    let tries = (0..3).map(|_| {
        let (h, t) = (h.clone(), pair.refresh_token.clone());
        tokio::spawn(async move { h.refresh(&t).await })
    });
    let results: Vec<_> = futures::future::join_all(tries).await.into_iter().map(Result::unwrap).collect();
    assert!(results.iter().filter(|r| r.is_ok()).count() <= 1);
    Arc::into_inner(h).unwrap().drop_db().await;
}

#[tokio::test]
async fn expired_refresh_token_is_refused() {
    let h = harness().await;
    h.register("ada@example.com", "correct horse", "Ada").await.unwrap();
    let pair = h.login("ada@example.com", "correct horse").await.unwrap();
    sqlx::query("UPDATE refresh_tokens SET expires_at = now() - interval '1 second'").execute(&h.pool).await.unwrap();
    assert_eq!(h.refresh(&pair.refresh_token).await.unwrap_err().code(), Code::Unauthenticated);
    h.drop_db().await;
}

#[tokio::test]
async fn logout_denylists_the_access_token_and_revokes_the_family() {
    let h = harness().await;
    h.register("ada@example.com", "correct horse", "Ada").await.unwrap();
    let pair = h.login("ada@example.com", "correct horse").await.unwrap();

    let anonymous = h.api.logout(Request::new(pb::LogoutRequest {})).await.unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);

    let principal: Principal = h.verifier.verify(&pair.access_token).await.unwrap();
    let (principal_jti, principal_exp) = (principal.claims.jti.clone(), principal.claims.exp);
    let mut req = Request::new(pb::LogoutRequest {});
    req.extensions_mut().insert(principal);
    h.api.logout(req).await.unwrap();

    assert!(matches!(h.verifier.verify(&pair.access_token).await, Err(AuthError::Revoked)));
    assert_eq!(h.refresh(&pair.refresh_token).await.unwrap_err().code(), Code::Unauthenticated);
    // Denied for as long as any verifier would accept it: past exp by the leeway.
    let key = shopmesh_platform::auth::denylist_key(&h.api.redis_prefix, &principal_jti);
    let ttl: i64 = h.api.redis.ttl(key).await.unwrap();
    let exp_in = principal_exp - chrono::Utc::now().timestamp();
    assert!(ttl >= exp_in + shopmesh_platform::auth::LEEWAY_SECS as i64 - 1, "ttl {ttl}, exp in {exp_in}");
    h.drop_db().await;
}

/// Logging out ends the session, not just the token presented: access
/// tokens from its earlier refreshes stop working too. Other sessions of
/// the same user carry on.
#[tokio::test]
async fn logout_ends_every_access_token_of_the_session() {
    let h = harness().await;
    let (first, second) = h.session_refreshed_once().await;
    let elsewhere = h.login("ada@example.com", "correct horse").await.unwrap();

    let principal = h.verifier.verify(&second.access_token).await.unwrap();
    let family = principal.claims.fam.clone();
    let mut req = Request::new(pb::LogoutRequest {});
    req.extensions_mut().insert(principal);
    h.api.logout(req).await.unwrap();

    assert!(matches!(h.verifier.verify(&second.access_token).await, Err(AuthError::Revoked)));
    assert!(matches!(h.verifier.verify(&first.access_token).await, Err(AuthError::Revoked)), "earlier token");
    h.verifier.verify(&elsewhere.access_token).await.expect("another session is untouched");
    // Denied for as long as any token of the session could still be accepted.
    let key = shopmesh_platform::auth::session_denylist_key(&h.api.redis_prefix, &family);
    let ttl: i64 = h.api.redis.ttl(key).await.unwrap();
    assert!(ttl >= 900 + shopmesh_platform::auth::LEEWAY_SECS as i64 - 1, "ttl {ttl}");
    h.drop_db().await;
}

/// A rotated refresh token coming back means one of its two holders is a
/// thief: the whole session's access tokens stop working at once, not
/// when they expire.
#[tokio::test]
async fn refresh_reuse_ends_the_sessions_access_tokens() {
    let h = harness().await;
    let (first, second) = h.session_refreshed_once().await;
    let elsewhere = h.login("ada@example.com", "correct horse").await.unwrap();
    h.verifier.verify(&second.access_token).await.expect("valid before the reuse");

    assert_eq!(h.refresh(&first.refresh_token).await.unwrap_err().code(), Code::Unauthenticated);
    assert!(matches!(h.verifier.verify(&second.access_token).await, Err(AuthError::Revoked)));
    assert!(matches!(h.verifier.verify(&first.access_token).await, Err(AuthError::Revoked)));
    h.verifier.verify(&elsewhere.access_token).await.expect("another session is untouched");
    h.drop_db().await;
}

/// A revoked session whose deny never reached Redis (or was lost with it)
/// is denied again the next time one of its refresh tokens comes back.
#[tokio::test]
async fn a_revoked_sessions_refresh_token_coming_back_denies_its_access_tokens_again() {
    let h = harness().await;
    let (first, second) = h.session_refreshed_once().await;
    let family = h.verifier.verify(&second.access_token).await.unwrap().claims.fam;
    assert_eq!(h.refresh(&first.refresh_token).await.unwrap_err().code(), Code::Unauthenticated, "reuse");

    let key = shopmesh_platform::auth::session_denylist_key(&h.api.redis_prefix, &family);
    let _: i64 = h.api.redis.del(&key).await.unwrap();
    h.verifier.verify(&second.access_token).await.expect("the deny is gone");
    assert_eq!(h.refresh(&second.refresh_token).await.unwrap_err().code(), Code::Unauthenticated);
    assert!(matches!(h.verifier.verify(&second.access_token).await, Err(AuthError::Revoked)));
    h.drop_db().await;
}

#[tokio::test]
async fn rotation_keeps_old_keys_published_and_signs_with_the_new_one() {
    let h = harness().await;
    h.register("ada@example.com", "correct horse", "Ada").await.unwrap();
    let before = h.login("ada@example.com", "correct horse").await.unwrap();
    let old_kid = jsonwebtoken::decode_header(&before.access_token).unwrap().kid.unwrap();

    let new_kid = rotate_signing_key(&h.pool).await.unwrap();
    assert_ne!(new_kid, old_kid);
    h.keys.invalidate().await;
    let after = h.login("ada@example.com", "correct horse").await.unwrap();
    assert_eq!(jsonwebtoken::decode_header(&after.access_token).unwrap().kid.unwrap(), new_kid);

    let published: Vec<String> = h.keys.public_keys().await.unwrap().into_iter().map(|k| k.kid).collect();
    assert_eq!(published, vec![new_kid.clone(), old_kid.clone()]);
    h.verifier.verify(&before.access_token).await.unwrap();
    h.verifier.verify(&after.access_token).await.unwrap();

    // Once the publish window has passed, the old key is gone for good.
    sqlx::query("UPDATE signing_keys SET retired_at = now() - interval '1 day' WHERE kid = $1")
        .bind(&old_kid)
        .execute(&h.pool)
        .await
        .unwrap();
    let action = keys::ensure_fresh_key(&h.pool, Duration::from_secs(3600), PUBLISH_WINDOW).await.unwrap();
    assert_eq!(action, KeyAction::Kept);
    let remaining: i64 = sqlx::query_scalar("SELECT count(*) FROM signing_keys").fetch_one(&h.pool).await.unwrap();
    assert_eq!(remaining, 1);
    h.drop_db().await;
}

#[tokio::test]
async fn key_generation_does_not_race_and_rotates_by_age() {
    let h = harness().await;
    sqlx::query("DELETE FROM signing_keys").execute(&h.pool).await.unwrap();
    let runs = (0..5).map(|_| {
        let pool = h.pool.clone();
        tokio::spawn(
            async move { keys::ensure_fresh_key(&pool, Duration::from_secs(3600), PUBLISH_WINDOW).await.unwrap() },
        )
    });
    let actions: Vec<_> = futures::future::join_all(runs).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(actions.iter().filter(|a| matches!(a, KeyAction::Created(_))).count(), 1);
    let active: i64 = sqlx::query_scalar("SELECT count(*) FROM signing_keys WHERE retired_at IS NULL")
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(active, 1);

    sqlx::query("UPDATE signing_keys SET created_at = now() - interval '2 hours'").execute(&h.pool).await.unwrap();
    let action = keys::ensure_fresh_key(&h.pool, Duration::from_secs(3600), PUBLISH_WINDOW).await.unwrap();
    assert!(matches!(action, KeyAction::Rotated(_)));
    assert_eq!(h.keys.public_keys().await.unwrap().len(), 2);
    h.drop_db().await;
}

#[tokio::test]
async fn create_admin_creates_or_promotes_idempotently() {
    let h = harness().await;
    let outbox = Outbox::new("auth");
    let id = create_admin(&h.pool, &outbox, "Root@Example.com", "admin password", "Root").await.unwrap();
    let again = create_admin(&h.pool, &outbox, "root@example.com", "other password", "Root").await.unwrap();
    assert_eq!(id, again);
    let pair = h.login("root@example.com", "admin password").await.unwrap();
    let principal = h.verifier.verify(&pair.access_token).await.unwrap();
    assert!(principal.is_admin());

    let customer = h.register("cust@example.com", "correct horse", "Cust").await.unwrap();
    let promoted = create_admin(&h.pool, &outbox, "cust@example.com", "ignored password", "Cust").await.unwrap();
    assert_eq!(promoted, customer);
    let roles: Vec<String> = sqlx::query_scalar("SELECT roles FROM users WHERE email = 'cust@example.com'")
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(roles, vec!["admin", "customer"]);
    // The promoted account keeps its own password.
    h.login("cust@example.com", "correct horse").await.unwrap();

    // One UserRegistered per account created, none for promotions.
    let events = h.outbox_events().await;
    assert_eq!(events.len(), 2);
    assert!(create_admin(&h.pool, &outbox, "bad", "admin password", "Root").await.is_err());
    h.drop_db().await;
}
