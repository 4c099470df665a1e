//! Product queries. Writes run in the caller's transaction so the outbox
//! event commits (or not) with the change.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use shopmesh_platform::money::Money;
use shopmesh_platform::pb::common::v1 as common;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::{Cursor, ListFilter, NewProduct, Product};

const COLUMNS: &str = "id, sku, name, description, category, price_currency, price_minor, image_url, attributes, active, created_at, updated_at";

#[derive(sqlx::FromRow)]
struct ProductRow {
    id: Uuid,
    sku: String,
    name: String,
    description: String,
    category: String,
    price_currency: String,
    price_minor: i64,
    image_url: String,
    attributes: Json<BTreeMap<String, String>>,
    active: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct RankedRow {
    #[sqlx(flatten)]
    product: ProductRow,
    rank: f32,
}

impl TryFrom<ProductRow> for Product {
    type Error = sqlx::Error;
    fn try_from(r: ProductRow) -> Result<Self, sqlx::Error> {
        // The table's CHECK constraints make this infallible in practice.
        let price = Money::from_proto(&common::Money { currency_code: r.price_currency, amount_minor: r.price_minor })
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        Ok(Product {
            id: r.id,
            sku: r.sku,
            name: r.name,
            description: r.description,
            category: r.category,
            price,
            image_url: r.image_url,
            attributes: r.attributes.0,
            active: r.active,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

fn products(rows: Vec<ProductRow>) -> Result<Vec<Product>, sqlx::Error> {
    rows.into_iter().map(Product::try_from).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("sku already exists")]
    DuplicateSku,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Inserts `p`; `DuplicateSku` if the SKU is taken.
pub async fn insert(tx: &mut PgConnection, id: Uuid, p: &NewProduct) -> Result<Product, CreateError> {
    let row = insert_row(tx, id, p, false).await.map_err(|e| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => CreateError::DuplicateSku,
        _ => CreateError::Db(e),
    })?;
    Ok(row.expect("insert without ON CONFLICT returns the row"))
}

/// Inserts `p` unless its SKU exists (seeding); `None` when it did.
pub async fn insert_if_absent(tx: &mut PgConnection, id: Uuid, p: &NewProduct) -> Result<Option<Product>, sqlx::Error> {
    insert_row(tx, id, p, true).await
}

async fn insert_row(
    tx: &mut PgConnection,
    id: Uuid,
    p: &NewProduct,
    skip_existing: bool,
) -> Result<Option<Product>, sqlx::Error> {
    const PLAIN: &str = "INSERT INTO products (id, sku, name, description, category, price_currency, price_minor, image_url, attributes)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         RETURNING id, sku, name, description, category, price_currency, price_minor, image_url, attributes, active, created_at, updated_at";
    const SKIP: &str = "INSERT INTO products (id, sku, name, description, category, price_currency, price_minor, image_url, attributes)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (sku) DO NOTHING
         RETURNING id, sku, name, description, category, price_currency, price_minor, image_url, attributes, active, created_at, updated_at";
    let row: Option<ProductRow> = sqlx::query_as(if skip_existing { SKIP } else { PLAIN })
        .bind(id)
        .bind(p.sku.as_str())
        .bind(&p.name)
        .bind(&p.description)
        .bind(&p.category)
        .bind(p.price.currency.as_str())
        .bind(p.price.amount_minor)
        .bind(&p.image_url)
        .bind(Json(&p.attributes))
        .fetch_optional(&mut *tx)
        .await?;
    row.map(Product::try_from).transpose()
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Product>, sqlx::Error> {
    let row: Option<ProductRow> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM products WHERE id = $1")))
            .bind(id)
            .fetch_optional(pool)
            .await?;
    row.map(Product::try_from).transpose()
}

/// Locks the row for an update in `tx`.
pub async fn get_for_update(tx: &mut PgConnection, id: Uuid) -> Result<Option<Product>, sqlx::Error> {
    let row: Option<ProductRow> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM products WHERE id = $1 FOR UPDATE")))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    row.map(Product::try_from).transpose()
}

/// Archived products included; unknown ids simply absent.
pub async fn get_many(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<Product>, sqlx::Error> {
    let rows: Vec<ProductRow> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM products WHERE id = ANY($1)")))
            .bind(ids)
            .fetch_all(pool)
            .await?;
    products(rows)
}

/// Writes every mutable field of `p` and stamps `updated_at`.
pub async fn update(tx: &mut PgConnection, p: &Product) -> Result<Product, sqlx::Error> {
    let row: ProductRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE products SET name = $2, description = $3, category = $4, price_currency = $5, price_minor = $6,
             image_url = $7, attributes = $8, active = $9, updated_at = now()
         WHERE id = $1
         RETURNING {COLUMNS}"
    )))
    .bind(p.id)
    .bind(&p.name)
    .bind(&p.description)
    .bind(&p.category)
    .bind(p.price.currency.as_str())
    .bind(p.price.amount_minor)
    .bind(&p.image_url)
    .bind(Json(&p.attributes))
    .bind(p.active)
    .fetch_one(&mut *tx)
    .await?;
    Product::try_from(row)
}

/// One page of active products (plus one extra row, to tell if more follow).
pub struct Page {
    pub products: Vec<Product>,
    pub next: Option<Cursor>,
}

/// Keyset pagination: newest first, or by relevance when searching.
pub async fn list(pool: &PgPool, filter: &ListFilter, after: Option<Cursor>, limit: u32) -> Result<Page, sqlx::Error> {
    let fetch = i64::from(limit) + 1;
    let (mut items, mut ranks): (Vec<Product>, Vec<f32>) = match &filter.q {
        None => {
            let (after_at, after_id) = match after {
                Some(Cursor::Recent { created_at, id }) => (Some(created_at), Some(id)),
                _ => (None, None),
            };
            let rows: Vec<ProductRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM products
                 WHERE active
                   AND ($1::text IS NULL OR category = $1)
                   AND ($2::bigint IS NULL OR price_minor >= $2)
                   AND ($3::bigint IS NULL OR price_minor <= $3)
                   AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5::uuid))
                 ORDER BY created_at DESC, id DESC
                 LIMIT $6"
            )))
            .bind(&filter.category)
            .bind(filter.min_price_minor)
            .bind(filter.max_price_minor)
            .bind(after_at)
            .bind(after_id)
            .bind(fetch)
            .fetch_all(pool)
            .await?;
            (products(rows)?, Vec::new())
        }
        Some(q) => {
            let (after_rank, after_id) = match after {
                Some(Cursor::Ranked { rank, id }) => (Some(rank), Some(id)),
                _ => (None, None),
            };
            let rows: Vec<RankedRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT * FROM (
                     SELECT {COLUMNS}, ts_rank(search, query) AS rank
                     FROM products, websearch_to_tsquery('english', $1) AS query
                     WHERE active AND search @@ query
                       AND ($2::text IS NULL OR category = $2)
                       AND ($3::bigint IS NULL OR price_minor >= $3)
                       AND ($4::bigint IS NULL OR price_minor <= $4)
                 ) ranked
                 WHERE ($5::real IS NULL OR (rank, id) < ($5, $6::uuid))
                 ORDER BY rank DESC, id DESC
                 LIMIT $7"
            )))
            .bind(q)
            .bind(&filter.category)
            .bind(filter.min_price_minor)
            .bind(filter.max_price_minor)
            .bind(after_rank)
            .bind(after_id)
            .bind(fetch)
            .fetch_all(pool)
            .await?;
            let ranks = rows.iter().map(|r| r.rank).collect();
            (products(rows.into_iter().map(|r| r.product).collect())?, ranks)
        }
    };
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    ranks.truncate(limit as usize);
    let next = match (more, items.last()) {
        (true, Some(last)) if filter.q.is_some() => Some(Cursor::Ranked { rank: ranks[items.len() - 1], id: last.id }),
        (true, Some(last)) => Some(Cursor::Recent { created_at: last.created_at, id: last.id }),
        _ => None,
    };
    Ok(Page { products: items, next })
}

/// Active products per category, alphabetically.
pub async fn categories(pool: &PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT category, count(*) FROM products WHERE active GROUP BY category ORDER BY category")
        .fetch_all(pool)
        .await
}

/// (sku, id) of the given SKUs.
pub async fn ids_by_sku(pool: &PgPool, skus: &[String]) -> Result<Vec<(String, Uuid)>, sqlx::Error> {
    sqlx::query_as("SELECT sku, id FROM products WHERE sku = ANY($1) ORDER BY sku").bind(skus).fetch_all(pool).await
}
