//! Catalog rules: what a valid product is, how an update mask selects what
//! changes, list filters, page cursors and cache keys. Pure.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shopmesh_platform::grpc::invalid_argument;
use shopmesh_platform::money::{Money, MoneyError};
use shopmesh_platform::paging;
use shopmesh_platform::pb::common::v1::{self as common, PageRequest};
use tonic::Status;
use uuid::Uuid;

/// Why a value was rejected; `field` is the request field path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

// ---------------------------------------------------------------------------
// Products

pub const MAX_SKU_CHARS: usize = 64;
pub const MAX_NAME_CHARS: usize = 200;
pub const MAX_DESCRIPTION_CHARS: usize = 5000;
pub const MAX_CATEGORY_CHARS: usize = 100;
pub const MAX_IMAGE_URL_CHARS: usize = 2048;
pub const MAX_ATTRIBUTES: usize = 50;
pub const MAX_ATTRIBUTE_KEY_CHARS: usize = 64;
pub const MAX_ATTRIBUTE_VALUE_CHARS: usize = 500;

/// Trimmed text of at most `max` characters without control characters
/// (newlines allowed where `multiline`); empty only when not `required`.
fn text(field: &str, raw: &str, max: usize, required: bool, multiline: bool) -> Result<String, Invalid> {
    let v = raw.trim();
    if required && v.is_empty() {
        return Err(Invalid::new(field, "is required"));
    }
    if v.chars().count() > max {
        return Err(Invalid::new(field, format!("must be at most {max} characters")));
    }
    if v.chars().any(|c| c.is_control() && !(multiline && matches!(c, '\n' | '\t'))) {
        return Err(Invalid::new(field, "must not contain control characters"));
    }
    Ok(v.to_owned())
}

/// 1–64 characters of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sku(String);

impl Sku {
    pub fn parse(field: &str, raw: &str) -> Result<Self, Invalid> {
        let v = raw.trim();
        if v.is_empty() || v.len() > MAX_SKU_CHARS {
            return Err(Invalid::new(field, format!("must be 1-{MAX_SKU_CHARS} characters")));
        }
        if !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(Invalid::new(field, "may contain only letters, digits, '-' and '_'"));
        }
        Ok(Self(v.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Empty, or an absolute http(s) URL with a host.
fn image_url(field: &str, raw: &str) -> Result<String, Invalid> {
    let v = raw.trim();
    if v.is_empty() {
        return Ok(String::new());
    }
    let rest = v.strip_prefix("https://").or_else(|| v.strip_prefix("http://"));
    let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or_default());
    let ok = v.len() <= MAX_IMAGE_URL_CHARS
        && host.is_some_and(|h| !h.is_empty())
        && !v.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok { Ok(v.to_owned()) } else { Err(Invalid::new(field, "must be empty or an absolute http(s) URL")) }
}

fn attributes(field: &str, raw: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>, Invalid> {
    if raw.len() > MAX_ATTRIBUTES {
        return Err(Invalid::new(field, format!("at most {MAX_ATTRIBUTES} attributes")));
    }
    let mut out = BTreeMap::new();
    for (k, v) in raw {
        let key = text(&format!("{field}.key"), k, MAX_ATTRIBUTE_KEY_CHARS, true, false)?;
        let value = text(&format!("{field}[{key}]"), v, MAX_ATTRIBUTE_VALUE_CHARS, false, false)?;
        out.insert(key, value);
    }
    Ok(out)
}

/// Product fields as a request carries them, before validation.
#[derive(Debug, Clone, Default)]
pub struct RawProduct {
    pub sku: String,
    pub name: String,
    pub description: String,
    pub category: String,
    /// `None` when the request has no price.
    pub price: Option<common::Money>,
    pub image_url: String,
    pub attributes: BTreeMap<String, String>,
    pub active: bool,
}

/// A price at request path `field`; a bad part is named under it
/// (`{field}.currency_code`, `{field}.amount_minor`).
fn price(field: &str, raw: Option<&common::Money>) -> Result<Money, Invalid> {
    Money::from_proto_opt(raw).map_err(|e| match e {
        MoneyError::Missing => Invalid::new(field, "is required"),
        MoneyError::Currency(_) => Invalid::new(
            format!("{field}.currency_code"),
            "must be an ISO 4217 code of three upper-case letters, e.g. USD",
        ),
        MoneyError::Negative => Invalid::new(format!("{field}.amount_minor"), "must not be negative"),
        other => Invalid::new(field, other.to_string()),
    })
}

/// A product to create; valid by construction.
#[derive(Debug, Clone, PartialEq)]
pub struct NewProduct {
    pub sku: Sku,
    pub name: String,
    pub description: String,
    pub category: String,
    pub price: Money,
    pub image_url: String,
    pub attributes: BTreeMap<String, String>,
}

impl NewProduct {
    /// `at` is the request path of the product message, e.g. "product".
    pub fn parse(at: &str, raw: &RawProduct) -> Result<Self, Invalid> {
        Ok(Self {
            sku: Sku::parse(&format!("{at}.sku"), &raw.sku)?,
            name: text(&format!("{at}.name"), &raw.name, MAX_NAME_CHARS, true, false)?,
            description: text(&format!("{at}.description"), &raw.description, MAX_DESCRIPTION_CHARS, false, true)?,
            category: text(&format!("{at}.category"), &raw.category, MAX_CATEGORY_CHARS, true, false)?,
            price: price(&format!("{at}.price"), raw.price.as_ref())?,
            image_url: image_url(&format!("{at}.image_url"), &raw.image_url)?,
            attributes: attributes(&format!("{at}.attributes"), &raw.attributes)?,
        })
    }
}

/// A stored product.
#[derive(Debug, Clone, PartialEq)]
pub struct Product {
    pub id: Uuid,
    pub sku: String,
    pub name: String,
    pub description: String,
    pub category: String,
    pub price: Money,
    pub image_url: String,
    pub attributes: BTreeMap<String, String>,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The paths UpdateProduct accepts, in a stable order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Field {
    Name,
    Description,
    Category,
    Price,
    ImageUrl,
    Attributes,
    Active,
}

impl Field {
    pub const ALL: [Field; 7] = [
        Field::Name,
        Field::Description,
        Field::Category,
        Field::Price,
        Field::ImageUrl,
        Field::Attributes,
        Field::Active,
    ];

    pub fn path(self) -> &'static str {
        match self {
            Field::Name => "name",
            Field::Description => "description",
            Field::Category => "category",
            Field::Price => "price",
            Field::ImageUrl => "image_url",
            Field::Attributes => "attributes",
            Field::Active => "active",
        }
    }

    fn from_path(path: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.path() == path)
    }
}

fn updatable_paths() -> String {
    Field::ALL.map(Field::path).join(", ")
}

/// The fields an update sets; only those named by the mask are `Some`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProductPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub category: Option<String>,
    pub price: Option<Money>,
    pub image_url: Option<String>,
    pub attributes: Option<BTreeMap<String, String>>,
    pub active: Option<bool>,
}

impl ProductPatch {
    /// Validates exactly the masked fields of `raw` (at request path `at`).
    pub fn from_mask(paths: &[String], at: &str, raw: &RawProduct) -> Result<Self, Invalid> {
        if paths.is_empty() {
            return Err(Invalid::new("update_mask", format!("must name at least one of: {}", updatable_paths())));
        }
        let mut patch = Self::default();
        for path in paths {
            let field = Field::from_path(path.trim()).ok_or_else(|| {
                Invalid::new("update_mask", format!("unknown path {path:?}; updatable: {}", updatable_paths()))
            })?;
            let f = |name: &str| format!("{at}.{name}");
            match field {
                Field::Name => patch.name = Some(text(&f("name"), &raw.name, MAX_NAME_CHARS, true, false)?),
                Field::Description => {
                    patch.description =
                        Some(text(&f("description"), &raw.description, MAX_DESCRIPTION_CHARS, false, true)?)
                }
                Field::Category => {
                    patch.category = Some(text(&f("category"), &raw.category, MAX_CATEGORY_CHARS, true, false)?)
                }
                Field::Price => patch.price = Some(price(&f("price"), raw.price.as_ref())?),
                Field::ImageUrl => patch.image_url = Some(image_url(&f("image_url"), &raw.image_url)?),
                Field::Attributes => patch.attributes = Some(attributes(&f("attributes"), &raw.attributes)?),
                Field::Active => patch.active = Some(raw.active),
            }
        }
        Ok(patch)
    }

    pub fn archive() -> Self {
        Self { active: Some(false), ..Self::default() }
    }
}

/// What applying a patch did.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub product: Product,
    /// Fields whose value actually changed (a no-op update changes none).
    pub changed: Vec<Field>,
    /// The previous price, when the price changed.
    pub old_price: Option<Money>,
}

impl Product {
    /// The product after `patch`; `updated_at` is left to the store.
    pub fn apply(&self, patch: &ProductPatch) -> Applied {
        let mut next = self.clone();
        let mut changed = Vec::new();
        fn set<T: PartialEq + Clone>(slot: &mut T, v: &Option<T>, field: Field, changed: &mut Vec<Field>) {
            if let Some(v) = v
                && slot != v
            {
                *slot = v.clone();
                changed.push(field);
            }
        }
        set(&mut next.name, &patch.name, Field::Name, &mut changed);
        set(&mut next.description, &patch.description, Field::Description, &mut changed);
        set(&mut next.category, &patch.category, Field::Category, &mut changed);
        set(&mut next.price, &patch.price, Field::Price, &mut changed);
        set(&mut next.image_url, &patch.image_url, Field::ImageUrl, &mut changed);
        set(&mut next.attributes, &patch.attributes, Field::Attributes, &mut changed);
        set(&mut next.active, &patch.active, Field::Active, &mut changed);
        let old_price = changed.contains(&Field::Price).then_some(self.price);
        Applied { product: next, changed, old_price }
    }
}

// ---------------------------------------------------------------------------
// Listing, pagination and cache keys

pub const DEFAULT_PAGE_SIZE: u32 = 20;
pub const MAX_PAGE_SIZE: u32 = 100;
pub const MAX_BATCH_IDS: usize = 100;

/// Parses a product id.
pub fn product_id(field: &str, raw: &str) -> Result<Uuid, Invalid> {
    Uuid::parse_str(raw.trim()).map_err(|_| Invalid::new(field, "must be a UUID"))
}

/// The filters of ListProducts, normalised so equal requests compare equal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListFilter {
    pub category: Option<String>,
    pub min_price_minor: Option<i64>,
    pub max_price_minor: Option<i64>,
    /// Full-text query, whitespace collapsed and lower-cased (the search
    /// configuration is case-insensitive, so this only improves cache hits).
    pub q: Option<String>,
}

impl ListFilter {
    pub fn parse(category: &str, min_price_minor: i64, max_price_minor: i64, q: &str) -> Result<Self, Invalid> {
        let bound = |field: &str, v: i64| match v {
            v if v < 0 => Err(Invalid::new(field, "must not be negative")),
            0 => Ok(None),
            v => Ok(Some(v)),
        };
        let min = bound("min_price_minor", min_price_minor)?;
        let max = bound("max_price_minor", max_price_minor)?;
        if let (Some(lo), Some(hi)) = (min, max)
            && lo > hi
        {
            return Err(Invalid::new("min_price_minor", "must not exceed max_price_minor"));
        }
        let category = text("category", category, MAX_CATEGORY_CHARS, false, false)?;
        let q = text("q", q, 500, false, false)?.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
        Ok(Self {
            category: (!category.is_empty()).then_some(category),
            min_price_minor: min,
            max_price_minor: max,
            q: (!q.is_empty()).then_some(q),
        })
    }

    /// What a page token is bound to: it only fits the filters it came from.
    fn fingerprint(&self) -> String {
        paging::fingerprint(&["products", &serde_json::to_string(self).expect("filters serialise")])
    }
}

/// Where the next page starts, in the listing's sort order.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Cursor {
    /// Default listing: newest first, `(created_at, id)` descending.
    Recent { created_at: DateTime<Utc>, id: Uuid },
    /// Search: `(rank, id)` descending.
    Ranked {
        #[serde(with = "rank_bits")]
        rank: f32,
        id: Uuid,
    },
}

/// A rank travels as the bits of its f32, so it round-trips exactly.
mod rank_bits {
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(rank: &f32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(rank.to_bits())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
        u32::deserialize(d).map(f32::from_bits)
    }
}

/// The opaque token of the page after `cursor` (a platform page token).
pub fn encode_page_token(cursor: &Cursor, filter: &ListFilter) -> String {
    paging::encode_token(cursor, &filter.fingerprint())
}

/// The cursor `page` continues from (`None` for the first page). A token
/// issued for other filters, or for the other sort order, is refused.
pub fn decode_page_token(page: Option<&PageRequest>, filter: &ListFilter) -> Result<Option<Cursor>, Status> {
    match (paging::decode_token(page, &filter.fingerprint())?, filter.q.is_some()) {
        (Some(Cursor::Recent { .. }), true) | (Some(Cursor::Ranked { .. }), false) => {
            Err(invalid_argument("page.page_token", "is not a token this listing issued"))
        }
        (Some(Cursor::Recent { created_at, id }), false) => {
            paging::check_cursor_time(&created_at)?;
            Ok(Some(Cursor::Recent { created_at, id }))
        }
        (cursor, _) => Ok(cursor),
    }
}

/// Stable digest of a normalised list request (filters, page size, token):
/// the cache key suffix, so equivalent requests share an entry.
pub fn list_cache_digest(filter: &ListFilter, page_size: u32, page_token: &str) -> String {
    #[derive(Serialize)]
    struct Key<'a> {
        filter: &'a ListFilter,
        page_size: u32,
        page_token: &'a str,
    }
    let json = serde_json::to_vec(&Key { filter, page_size, page_token: page_token.trim() }).expect("key serialises");
    hex(&Sha256::digest(json)[..16])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    fn pb_money(code: &str, amount_minor: i64) -> Option<common::Money> {
        Some(common::Money { currency_code: code.into(), amount_minor })
    }

    fn usd(amount: i64) -> Money {
        price("price", pb_money("USD", amount).as_ref()).unwrap()
    }

    fn raw() -> RawProduct {
        RawProduct {
            sku: "MUG-001".into(),
            name: " Coffee mug ".into(),
            description: "Stoneware.\nDishwasher safe.".into(),
            category: "Kitchen".into(),
            price: pb_money("USD", 1299),
            image_url: "https://img.example.com/mug.jpg".into(),
            attributes: [("color".to_owned(), "blue".to_owned())].into(),
            active: true,
        }
    }

    #[test]
    fn price_names_the_bad_part_under_its_path() {
        for code in ["usd", "US", "USDX", "", "U$D"] {
            let e = price("price", pb_money(code, 1).as_ref()).unwrap_err();
            assert_eq!(e.field, "price.currency_code", "{code}");
        }
        assert_eq!(price("price", pb_money("USD", -1).as_ref()).unwrap_err().field, "price.amount_minor");
        assert_eq!(price("price", None).unwrap_err().field, "price");
        assert_eq!(usd(0).amount_minor, 0);
    }

    #[test]
    fn new_product_validates_each_field_by_path() {
        let p = NewProduct::parse("product", &raw()).unwrap();
        assert_eq!(p.name, "Coffee mug");
        assert_eq!(p.sku.as_str(), "MUG-001");
        type Edit = fn(&mut RawProduct);
        let cases: Vec<(Edit, &str)> = vec![
            (|r| r.sku = "bad sku".into(), "product.sku"),
            (|r| r.sku = "x".repeat(65), "product.sku"),
            (|r| r.sku = String::new(), "product.sku"),
            (|r| r.name = "  ".into(), "product.name"),
            (|r| r.name = "n".repeat(201), "product.name"),
            (|r| r.description = "d".repeat(5001), "product.description"),
            (|r| r.category = String::new(), "product.category"),
            (|r| r.price = None, "product.price"),
            (|r| r.price = pb_money("usd", 1), "product.price.currency_code"),
            (|r| r.price = pb_money("USD", -5), "product.price.amount_minor"),
            (|r| r.image_url = "ftp://x/y.png".into(), "product.image_url"),
            (|r| r.image_url = "https://".into(), "product.image_url"),
            (|r| r.image_url = "not a url".into(), "product.image_url"),
        ];
        for (edit, field) in cases {
            let mut r = raw();
            edit(&mut r);
            assert_eq!(NewProduct::parse("product", &r).unwrap_err().field, field);
        }
        let mut r = raw();
        r.image_url = String::new();
        r.description = "x".repeat(5000);
        assert!(NewProduct::parse("product", &r).is_ok(), "empty image and max description are fine");
    }

    fn stored() -> Product {
        let p = NewProduct::parse("product", &raw()).unwrap();
        Product {
            id: Uuid::now_v7(),
            sku: p.sku.as_str().to_owned(),
            name: p.name,
            description: p.description,
            category: p.category,
            price: p.price,
            image_url: p.image_url,
            attributes: p.attributes,
            active: true,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn field_mask_selects_and_validates_only_named_fields() {
        let mut r = raw();
        r.name = "Big mug".into();
        r.category = String::new(); // invalid, but not masked
        r.price = pb_money("USD", 1499);
        let patch = ProductPatch::from_mask(&["name".into(), "price".into()], "product", &r).unwrap();
        assert_eq!(patch.name.as_deref(), Some("Big mug"));
        assert_eq!(patch.price, Some(usd(1499)));
        assert!(patch.category.is_none() && patch.active.is_none());

        assert_eq!(ProductPatch::from_mask(&[], "product", &r).unwrap_err().field, "update_mask");
        assert_eq!(ProductPatch::from_mask(&["sku".into()], "product", &r).unwrap_err().field, "update_mask");
        assert_eq!(ProductPatch::from_mask(&["".into()], "product", &r).unwrap_err().field, "update_mask");
        assert_eq!(ProductPatch::from_mask(&["category".into()], "product", &r).unwrap_err().field, "product.category");
    }

    #[test]
    fn applying_a_patch_reports_only_real_changes() {
        let p = stored();
        let patch = ProductPatch {
            name: Some(p.name.clone()),
            price: Some(usd(999)),
            active: Some(false),
            ..ProductPatch::default()
        };
        let applied = p.apply(&patch);
        assert_eq!(applied.changed, vec![Field::Price, Field::Active]);
        assert_eq!(applied.old_price, Some(usd(1299)));
        assert_eq!(applied.product.price, usd(999));
        assert!(!applied.product.active);

        let again = applied.product.apply(&ProductPatch::archive());
        assert!(again.changed.is_empty(), "archiving twice is a no-op");
        assert_eq!(again.old_price, None);
    }

    #[test]
    fn list_filter_normalises_and_checks_bounds() {
        let f = ListFilter::parse(" Kitchen ", 0, 500, "  Blue   MUG ").unwrap();
        assert_eq!(f.category.as_deref(), Some("Kitchen"));
        assert_eq!((f.min_price_minor, f.max_price_minor), (None, Some(500)));
        assert_eq!(f.q.as_deref(), Some("blue mug"));
        assert_eq!(ListFilter::parse("", 10, 5, "").unwrap_err().field, "min_price_minor");
        assert_eq!(ListFilter::parse("", -1, 0, "").unwrap_err().field, "min_price_minor");
        assert_eq!(ListFilter::parse("", 0, -1, "").unwrap_err().field, "max_price_minor");
        assert!(ListFilter::parse("", 5, 5, "").is_ok(), "bounds are inclusive");
    }

    fn page(token: &str) -> Option<PageRequest> {
        Some(PageRequest { page_size: 0, page_token: token.to_owned() })
    }

    #[test]
    fn page_tokens_round_trip_for_both_orders() {
        let plain = ListFilter::parse("Kitchen", 0, 0, "").unwrap();
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let c = Cursor::Recent { created_at: at, id: Uuid::now_v7() };
        assert_eq!(decode_page_token(page(&encode_page_token(&c, &plain)).as_ref(), &plain).unwrap(), Some(c));

        let search = ListFilter::parse("", 0, 0, "mug").unwrap();
        let c = Cursor::Ranked { rank: 0.075_990_7, id: Uuid::now_v7() };
        assert_eq!(decode_page_token(page(&encode_page_token(&c, &search)).as_ref(), &search).unwrap(), Some(c));
        assert_eq!(decode_page_token(page("").as_ref(), &search).unwrap(), None);
        assert_eq!(decode_page_token(None, &search).unwrap(), None);
    }

    #[test]
    fn page_tokens_refuse_edits_other_filters_and_the_other_order() {
        let f = ListFilter::parse("Kitchen", 0, 0, "").unwrap();
        let token = encode_page_token(&Cursor::Recent { created_at: Utc::now(), id: Uuid::now_v7() }, &f);
        let refused = |token: &str, filter: &ListFilter| decode_page_token(page(token).as_ref(), filter).unwrap_err();

        let other = ListFilter::parse("Garden", 0, 0, "").unwrap();
        let e = refused(&token, &other);
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("page.page_token"), "{}", e.message());
        assert!(e.message().contains("different filters"), "{}", e.message());

        // Flip one byte of the body: it no longer decodes to a cursor.
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        bytes[10] ^= 0x01;
        let tampered = URL_SAFE_NO_PAD.encode(bytes);
        assert!(refused(&tampered, &f).message().starts_with("page.page_token"));
        for junk in ["!!!", "abc", &token[..token.len() - 3]] {
            assert!(refused(junk, &f).message().starts_with("page.page_token"), "{junk}");
        }

        // A search cursor under the filters of a plain listing (and vice versa).
        let ranked = encode_page_token(&Cursor::Ranked { rank: 0.5, id: Uuid::now_v7() }, &f);
        assert!(refused(&ranked, &f).message().starts_with("page.page_token"));
        let search = ListFilter::parse("", 0, 0, "mug").unwrap();
        let recent = encode_page_token(&Cursor::Recent { created_at: Utc::now(), id: Uuid::now_v7() }, &search);
        assert!(refused(&recent, &search).message().starts_with("page.page_token"));

        // A time edited past what Postgres can compare with.
        let edited = paging::encode_token(
            &serde_json::json!({"Recent": {"created_at": "-10000-01-01T00:00:00Z", "id": Uuid::now_v7()}}),
            &f.fingerprint(),
        );
        assert!(refused(&edited, &f).message().starts_with("page.page_token"));
    }

    #[test]
    fn list_cache_digest_ignores_cosmetic_differences() {
        let a = ListFilter::parse(" Kitchen", 0, 0, "Blue  mug").unwrap();
        let b = ListFilter::parse("Kitchen ", 0, 0, " blue mug ").unwrap();
        assert_eq!(list_cache_digest(&a, 20, ""), list_cache_digest(&b, 20, " "));
        assert_ne!(list_cache_digest(&a, 20, ""), list_cache_digest(&a, 21, ""));
        let c = ListFilter::parse("Kitchen", 0, 100, "blue mug").unwrap();
        assert_ne!(list_cache_digest(&a, 20, ""), list_cache_digest(&c, 20, ""));
    }
}
