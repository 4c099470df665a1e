//! Accounts and refresh tokens in Postgres. Account creation writes its
//! UserRegistered event to the outbox in the same transaction.

use chrono::{DateTime, Utc};
use shopmesh_platform::outbox::Outbox;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::{DisplayName, Email, RefreshState};
use crate::events;

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("email already registered")]
    EmailTaken,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Inserts an account and its UserRegistered event atomically. A duplicate
/// email is caught by the unique constraint, so concurrent registrations
/// cannot both win.
pub async fn create_account(
    pool: &PgPool,
    outbox: &Outbox,
    email: &Email,
    name: &DisplayName,
    password_hash: &str,
    roles: &[String],
) -> Result<Uuid, CreateError> {
    let id = Uuid::now_v7();
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query("INSERT INTO users (id, email, name, password_hash, roles) VALUES ($1, $2, $3, $4, $5)")
        .bind(id)
        .bind(email.as_str())
        .bind(name.as_str())
        .bind(password_hash)
        .bind(roles)
        .execute(&mut *tx)
        .await;
    match inserted {
        Ok(_) => {}
        Err(sqlx::Error::Database(e)) if e.constraint() == Some("users_email_key") => {
            return Err(CreateError::EmailTaken);
        }
        Err(e) => return Err(e.into()),
    }
    outbox.enqueue(&mut tx, &events::user_registered(id, email, name, roles)).await?;
    outbox.commit(tx).await?;
    Ok(id)
}

/// Creates the admin account, or grants `admin` to the existing account of
/// that email (its password is left alone). Returns the user id and whether
/// the account was created.
pub async fn create_or_promote_admin(
    pool: &PgPool,
    outbox: &Outbox,
    email: &Email,
    name: &DisplayName,
    password_hash: &str,
    roles: &[String],
) -> Result<(Uuid, bool), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let created: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO users (id, email, name, password_hash, roles) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (email) DO NOTHING RETURNING id",
    )
    .bind(Uuid::now_v7())
    .bind(email.as_str())
    .bind(name.as_str())
    .bind(password_hash)
    .bind(roles)
    .fetch_optional(&mut *tx)
    .await?;
    let result = match created {
        Some(id) => {
            outbox.enqueue(&mut tx, &events::user_registered(id, email, name, roles)).await?;
            (id, true)
        }
        None => {
            // Union keeps roles the account already has.
            let id = sqlx::query_scalar(
                "UPDATE users SET roles = ARRAY(SELECT DISTINCT unnest(roles || $2::text[]) ORDER BY 1),
                                  updated_at = now()
                 WHERE email = $1 RETURNING id",
            )
            .bind(email.as_str())
            .bind(roles)
            .fetch_one(&mut *tx)
            .await?;
            (id, false)
        }
    };
    outbox.commit(tx).await?;
    Ok(result)
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Account {
    pub id: Uuid,
    pub password_hash: String,
    pub roles: Vec<String>,
}

pub async fn find_by_email(pool: &PgPool, email: &str) -> Result<Option<Account>, sqlx::Error> {
    sqlx::query_as("SELECT id, password_hash, roles FROM users WHERE email = $1").bind(email).fetch_optional(pool).await
}

/// Current roles, so a refreshed access token reflects promotions.
pub async fn roles_of(conn: &mut PgConnection, user_id: Uuid) -> Result<Option<Vec<String>>, sqlx::Error> {
    sqlx::query_scalar("SELECT roles FROM users WHERE id = $1").bind(user_id).fetch_optional(conn).await
}

pub async fn start_family(conn: &mut PgConnection, family_id: Uuid, user_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO refresh_families (id, user_id) VALUES ($1, $2)")
        .bind(family_id)
        .bind(user_id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn insert_refresh_token(
    conn: &mut PgConnection,
    token_hash: &[u8],
    family_id: Uuid,
    user_id: Uuid,
    expires_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO refresh_tokens (token_hash, family_id, user_id, expires_at) VALUES ($1, $2, $3, $4)")
        .bind(token_hash)
        .bind(family_id)
        .bind(user_id)
        .bind(expires_at)
        .execute(conn)
        .await?;
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredRefresh {
    pub family_id: Uuid,
    pub user_id: Uuid,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
    pub family_revoked_at: Option<DateTime<Utc>>,
}

impl StoredRefresh {
    pub fn state(&self, now: DateTime<Utc>) -> RefreshState {
        RefreshState {
            used: self.used_at.is_some(),
            family_revoked: self.family_revoked_at.is_some(),
            expired: self.expires_at <= now,
        }
    }
}

/// Finds a refresh token by hash and locks it and its family until the
/// transaction ends: concurrent uses of one token are serialised, and a
/// concurrent logout waits for (then sees) the rotation.
pub async fn lock_refresh_token(
    conn: &mut PgConnection,
    token_hash: &[u8],
) -> Result<Option<StoredRefresh>, sqlx::Error> {
    sqlx::query_as(
        "SELECT t.family_id, t.user_id, t.expires_at, t.used_at, f.revoked_at AS family_revoked_at
         FROM refresh_tokens t JOIN refresh_families f ON f.id = t.family_id
         WHERE t.token_hash = $1
         FOR UPDATE",
    )
    .bind(token_hash)
    .fetch_optional(conn)
    .await
}

pub async fn mark_used(conn: &mut PgConnection, token_hash: &[u8]) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE refresh_tokens SET used_at = now() WHERE token_hash = $1")
        .bind(token_hash)
        .execute(conn)
        .await?;
    Ok(())
}

/// Revokes a family, and with it every refresh token in it. Scoped to
/// `user_id` so one user can never revoke another's session.
pub async fn revoke_family(conn: &mut PgConnection, family_id: Uuid, user_id: Uuid) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "UPDATE refresh_families SET revoked_at = now() WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
    )
    .bind(family_id)
    .bind(user_id)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Deletes refresh tokens past their expiry (they can only be refused).
pub async fn purge_expired_refresh_tokens(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM refresh_tokens WHERE expires_at < now() - interval '1 day'")
        .execute(pool)
        .await?
        .rows_affected())
}
