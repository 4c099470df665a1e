//! `shopmesh.auth.v1.AuthService`: proto → domain at the edge, then store,
//! tokens and keys.

use std::sync::Arc;
use std::time::Duration;

use shopmesh_platform::auth::{PublicJwk, RequestAuthExt as _};
use shopmesh_platform::grpc::{busy, db_error, internal, invalid_argument, parse_grpc_timeout};
use shopmesh_platform::outbox::Outbox;
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::{
    self, Credentials, DisplayName, Email, Invalid, NewAccount, Password, RefreshToken, RefreshVerdict,
};
use crate::keys::KeyStore;
use crate::passwords::{PasswordWork, PasswordWorkError};
use crate::pb;
use crate::store::{self, CreateError};
use crate::tokens::TokenIssuer;

/// One message for unknown email and wrong password alike.
const BAD_CREDENTIALS: &str = "invalid email or password";
const BAD_REFRESH: &str = "refresh token is invalid, expired or revoked";

impl From<Invalid> for Status {
    fn from(e: Invalid) -> Self {
        invalid_argument(e.field, e.reason)
    }
}

impl TryFrom<pb::RegisterRequest> for NewAccount {
    type Error = Status;
    fn try_from(r: pb::RegisterRequest) -> Result<Self, Status> {
        Ok(NewAccount {
            email: Email::parse(&r.email)?,
            password: Password::parse(&r.password)?,
            name: DisplayName::parse(&r.name)?,
        })
    }
}

impl TryFrom<pb::LoginRequest> for Credentials {
    type Error = Status;
    fn try_from(r: pb::LoginRequest) -> Result<Self, Status> {
        Ok(Credentials::parse(&r.email, &r.password)?)
    }
}

impl From<PublicJwk> for pb::Jwk {
    fn from(k: PublicJwk) -> Self {
        pb::Jwk {
            kty: "OKP".into(),
            kid: k.kid,
            r#use: "sig".into(),
            alg: "EdDSA".into(),
            crv: "Ed25519".into(),
            x: k.x,
        }
    }
}

pub struct AuthApi {
    pub pool: PgPool,
    pub outbox: Outbox,
    pub keys: Arc<KeyStore>,
    pub tokens: TokenIssuer,
    pub redis: fred::clients::Client,
    pub redis_prefix: String,
    pub refresh_ttl: Duration,
    pub passwords: PasswordWork,
}

/// The time a hash needs after its wait, kept from the caller's deadline.
const HASH_TIME: Duration = Duration::from_secs(1);

impl AuthApi {
    /// Password work for `req`: its wait for a slot ends in time for the
    /// refusal to reach a caller with a deadline (the gateway sends its
    /// timeout as `grpc-timeout`) before it gives up on the call.
    fn password_work<T>(&self, req: &Request<T>) -> PasswordWork {
        let deadline = req.metadata().get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout);
        self.passwords.waiting_at_most(deadline.map(|d| d.saturating_sub(HASH_TIME)))
    }

    /// Denies every access token issued in session `family_id`.
    async fn deny_session(&self, family_id: Uuid) -> Result<(), fred::error::Error> {
        let family = family_id.to_string();
        shopmesh_platform::auth::deny_session(&self.redis, &self.redis_prefix, &family, self.tokens.access_ttl()).await
    }

    /// `deny_session` where the caller is refused either way: a failure is
    /// logged and counted (`auth_session_deny_failures_total`, worth an
    /// alert: a thief's access tokens live on until they expire).
    async fn deny_session_unattended(&self, family_id: Uuid) {
        if let Err(e) = self.deny_session(family_id).await {
            tracing::error!(%family_id, error = %e, "denying a revoked session's access tokens failed");
            metrics::counter!("auth_session_deny_failures_total").increment(1);
        }
    }

    /// Issues an access token and a new refresh token of `family_id` inside
    /// `tx`. Signing happens before the caller commits, so a signing failure
    /// never consumes the presented refresh token.
    async fn issue_pair(
        &self,
        tx: &mut sqlx::PgConnection,
        user_id: Uuid,
        roles: &[String],
        family_id: Uuid,
    ) -> Result<pb::TokenPair, Status> {
        let access =
            self.tokens.issue(tx, user_id, roles, family_id).await.map_err(|e| internal("signing access token", e))?;
        let refresh = RefreshToken::generate();
        let expires_at = chrono::Utc::now() + self.refresh_ttl;
        store::insert_refresh_token(tx, &refresh.hash(), family_id, user_id, expires_at).await.map_err(db_error)?;
        Ok(pb::TokenPair {
            access_token: access.token,
            refresh_token: refresh.expose().to_owned(),
            token_type: "Bearer".into(),
            expires_in: self.tokens.access_ttl().as_secs() as i32,
        })
    }
}

/// Busy password work is the caller's to retry shortly; anything else is ours.
fn password_error(what: &str, e: PasswordWorkError) -> Status {
    match e {
        PasswordWorkError::Busy(..) => {
            metrics::counter!("auth_password_checks_refused_total").increment(1);
            tracing::warn!(error = %e, "{what}: refused, too many at once");
            busy("too many sign-ins at once; try again shortly", Duration::from_secs(1))
        }
        PasswordWorkError::Failed(e) => internal(what, e),
    }
}

#[tonic::async_trait]
impl pb::auth_service_server::AuthService for AuthApi {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let passwords = self.password_work(&request);
        let account = NewAccount::try_from(request.into_inner())?;
        let hash = passwords.hash(&account.password).await.map_err(|e| password_error("hashing password", e))?;
        let roles = domain::customer_roles();
        let id = store::create_account(&self.pool, &self.outbox, &account.email, &account.name, &hash, &roles)
            .await
            .map_err(|e| match e {
                CreateError::EmailTaken => Status::already_exists("email already registered"),
                CreateError::Db(e) => db_error(e),
            })?;
        tracing::info!(user_id = %id, "account registered");
        Ok(Response::new(pb::RegisterResponse { user_id: id.to_string() }))
    }

    async fn login(&self, request: Request<pb::LoginRequest>) -> Result<Response<pb::LoginResponse>, Status> {
        let passwords = self.password_work(&request);
        let creds = Credentials::try_from(request.into_inner())?;
        let account = if creds.could_be_registered() {
            store::find_by_email(&self.pool, &creds.email).await.map_err(db_error)?
        } else {
            None
        };
        let Some(account) = account else {
            passwords.verify_dummy(&creds.password).await.map_err(|e| password_error("verifying password", e))?;
            return Err(Status::unauthenticated(BAD_CREDENTIALS));
        };
        let ok = passwords
            .verify(&creds.password, &account.password_hash)
            .await
            .map_err(|e| password_error("verifying password", e))?;
        if !ok {
            return Err(Status::unauthenticated(BAD_CREDENTIALS));
        }
        let family_id = Uuid::now_v7();
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        store::start_family(&mut tx, family_id, account.id).await.map_err(db_error)?;
        let tokens = self.issue_pair(&mut tx, account.id, &account.roles, family_id).await?;
        tx.commit().await.map_err(db_error)?;
        tracing::info!(user_id = %account.id, "logged in");
        Ok(Response::new(pb::LoginResponse { tokens: Some(tokens) }))
    }

    async fn refresh(&self, request: Request<pb::RefreshRequest>) -> Result<Response<pb::RefreshResponse>, Status> {
        let presented = RefreshToken::parse(&request.into_inner().refresh_token)?;
        let hash = presented.hash();
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let Some(stored) = store::lock_refresh_token(&mut tx, &hash).await.map_err(db_error)? else {
            return Err(Status::unauthenticated(BAD_REFRESH));
        };
        match stored.state(chrono::Utc::now()).verdict() {
            RefreshVerdict::Rotate => {}
            RefreshVerdict::ReuseDetected => {
                store::revoke_family(&mut tx, stored.family_id, stored.user_id).await.map_err(db_error)?;
                tx.commit().await.map_err(db_error)?;
                tracing::warn!(user_id = %stored.user_id, family_id = %stored.family_id, "refresh token reused; family revoked");
                // One of the two holders is a thief: the access tokens both
                // hold stop working too, not only the refresh tokens.
                self.deny_session_unattended(stored.family_id).await;
                return Err(Status::unauthenticated(BAD_REFRESH));
            }
            RefreshVerdict::Revoked => {
                // Denied again each time a dead session's token comes back,
                // in case Redis missed it when the session was revoked.
                self.deny_session_unattended(stored.family_id).await;
                return Err(Status::unauthenticated(BAD_REFRESH));
            }
            RefreshVerdict::Expired => return Err(Status::unauthenticated(BAD_REFRESH)),
        }
        store::mark_used(&mut tx, &hash).await.map_err(db_error)?;
        let roles = store::roles_of(&mut tx, stored.user_id)
            .await
            .map_err(db_error)?
            .ok_or_else(|| Status::unauthenticated(BAD_REFRESH))?;
        let tokens = self.issue_pair(&mut tx, stored.user_id, &roles, stored.family_id).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(Response::new(pb::RefreshResponse { tokens: Some(tokens) }))
    }

    async fn logout(&self, request: Request<pb::LogoutRequest>) -> Result<Response<pb::LogoutResponse>, Status> {
        let principal = request.principal()?;
        let claims = &principal.claims;
        let user_id =
            Uuid::parse_str(&claims.sub).map_err(|_| Status::unauthenticated("token subject is not a user id"))?;
        // Durable part first: once the family is revoked no new tokens come from it.
        let family_id = Uuid::parse_str(&claims.fam).ok();
        if let Some(family_id) = family_id {
            let mut conn = self.pool.acquire().await.map_err(db_error)?;
            store::revoke_family(&mut conn, family_id, user_id).await.map_err(db_error)?;
        }
        let unavailable = |e: fred::error::Error| {
            tracing::error!(error = %e, "denylisting access tokens failed");
            Status::unavailable("could not revoke the access token; retry")
        };
        // The session first: it covers the presented token too, so a retry
        // after a failure here is still let in to finish the job.
        if let Some(family_id) = family_id {
            self.deny_session(family_id).await.map_err(unavailable)?;
        }
        shopmesh_platform::auth::deny(&self.redis, &self.redis_prefix, &claims.jti, claims.exp)
            .await
            .map_err(unavailable)?;
        tracing::info!(%user_id, "logged out");
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn get_jwks(&self, _request: Request<pb::GetJwksRequest>) -> Result<Response<pb::GetJwksResponse>, Status> {
        let keys = self.keys.public_keys().await.map_err(db_error)?;
        Ok(Response::new(pb::GetJwksResponse { keys: keys.into_iter().map(Into::into).collect() }))
    }
}
