//! Profiles and addresses in Postgres. Every query takes the caller's user id
//! and filters by it: there is no way to reach another user's rows.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::{self, NewAddress, ProfileUpdate};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProfileRow {
    pub user_id: Uuid,
    pub email: String,
    pub name: String,
    pub phone: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AddressRow {
    pub id: Uuid,
    pub label: String,
    pub recipient_name: String,
    pub line1: String,
    pub line2: String,
    pub city: String,
    pub region: String,
    pub postal_code: String,
    pub country_code: String,
    pub phone: String,
    pub is_default: bool,
    pub created_at: DateTime<Utc>,
}

// Macros rather than consts so queries stay `&'static str` (sqlx's SqlSafeStr).
macro_rules! profile_columns {
    () => {
        "user_id, email, name, phone, created_at, updated_at"
    };
}
macro_rules! address_columns {
    () => {
        "id, label, recipient_name, line1, line2, city, region, postal_code, country_code, phone, is_default, created_at"
    };
}

/// Creates a profile; a second delivery of the same registration is a no-op.
pub async fn create_profile(
    conn: &mut PgConnection,
    user_id: Uuid,
    email: &str,
    name: &str,
) -> Result<bool, sqlx::Error> {
    let n =
        sqlx::query("INSERT INTO profiles (user_id, email, name) VALUES ($1, $2, $3) ON CONFLICT (user_id) DO NOTHING")
            .bind(user_id)
            .bind(email)
            .bind(name)
            .execute(conn)
            .await?
            .rows_affected();
    Ok(n == 1)
}

pub async fn get_profile(pool: &PgPool, user_id: Uuid) -> Result<Option<ProfileRow>, sqlx::Error> {
    sqlx::query_as(concat!("SELECT ", profile_columns!(), " FROM profiles WHERE user_id = $1"))
        .bind(user_id)
        .fetch_optional(pool)
        .await
}

/// Applies the masked fields; `None` when the profile doesn't exist yet.
pub async fn update_profile(
    pool: &PgPool,
    user_id: Uuid,
    update: &ProfileUpdate,
) -> Result<Option<ProfileRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "UPDATE profiles SET name = COALESCE($2, name), phone = COALESCE($3, phone), updated_at = now()
         WHERE user_id = $1 RETURNING ",
        profile_columns!()
    ))
    .bind(user_id)
    .bind(update.name.as_ref().map(|n| n.as_str()))
    .bind(update.phone.as_ref().map(|p| p.as_str()))
    .fetch_optional(pool)
    .await
}

pub async fn list_addresses(pool: &PgPool, user_id: Uuid) -> Result<Vec<AddressRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        address_columns!(),
        " FROM addresses WHERE user_id = $1 ORDER BY is_default DESC, created_at, id"
    ))
    .bind(user_id)
    .fetch_all(pool)
    .await
}

pub async fn get_address(pool: &PgPool, user_id: Uuid, address_id: Uuid) -> Result<Option<AddressRow>, sqlx::Error> {
    sqlx::query_as(concat!("SELECT ", address_columns!(), " FROM addresses WHERE user_id = $1 AND id = $2"))
        .bind(user_id)
        .bind(address_id)
        .fetch_optional(pool)
        .await
}

#[derive(Debug, thiserror::Error)]
pub enum AddError {
    #[error("{0}")]
    BookFull(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Serialises address-book changes of one user, so concurrent adds can't
/// overshoot the cap or both become the first (default) address.
async fn lock_book(conn: &mut PgConnection, user_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('user.addresses:' || $1::text, 0))")
        .bind(user_id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn add_address(pool: &PgPool, user_id: Uuid, address: &NewAddress) -> Result<AddressRow, AddError> {
    let mut tx = pool.begin().await?;
    lock_book(&mut tx, user_id).await?;
    let existing: i64 = sqlx::query_scalar("SELECT count(*) FROM addresses WHERE user_id = $1")
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?;
    domain::check_capacity(existing).map_err(AddError::BookFull)?;
    let is_default = address.becomes_default(existing);
    if is_default {
        sqlx::query("UPDATE addresses SET is_default = false WHERE user_id = $1 AND is_default")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
    }
    let row = sqlx::query_as(concat!("INSERT INTO addresses (id, user_id, label, recipient_name, line1, line2, city, region, postal_code, country_code, phone, is_default)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         RETURNING ", address_columns!()))
    .bind(Uuid::now_v7())
    .bind(user_id)
    .bind(&address.label)
    .bind(&address.postal.recipient_name)
    .bind(&address.postal.line1)
    .bind(&address.postal.line2)
    .bind(&address.postal.city)
    .bind(&address.postal.region)
    .bind(&address.postal.postal_code)
    .bind(&address.postal.country_code)
    .bind(&address.postal.phone)
    .bind(is_default)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row)
}

/// Deletes one of the caller's addresses; `false` if they have none with
/// that id. Deleting the default makes the oldest remaining one the default.
pub async fn delete_address(pool: &PgPool, user_id: Uuid, address_id: Uuid) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    lock_book(&mut tx, user_id).await?;
    let deleted: Option<bool> =
        sqlx::query_scalar("DELETE FROM addresses WHERE user_id = $1 AND id = $2 RETURNING is_default")
            .bind(user_id)
            .bind(address_id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(was_default) = deleted else {
        return Ok(false);
    };
    if was_default {
        sqlx::query(
            "UPDATE addresses SET is_default = true
             WHERE id = (SELECT id FROM addresses WHERE user_id = $1 ORDER BY created_at, id LIMIT 1)",
        )
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}
