//! `shopmesh.catalog.v1.CatalogService`: public reads served cache-aside,
//! admin writes that commit their product-events with the change.

use std::collections::HashMap;

use prost::Message as _;
use shopmesh_platform::auth::{ROLE_ADMIN, RequestAuthExt as _};
use shopmesh_platform::grpc::{db_error, invalid_argument, timestamp};
use shopmesh_platform::outbox::Outbox;
use shopmesh_platform::paging;
use shopmesh_platform::pb::common::v1::PageResponse;
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::cache::{self, Cache, Kind};
use crate::domain::{
    self, DEFAULT_PAGE_SIZE, Invalid, ListFilter, MAX_BATCH_IDS, MAX_PAGE_SIZE, NewProduct, Product, ProductPatch,
    RawProduct, decode_page_token, encode_page_token, list_cache_digest,
};
use crate::events;
use crate::pb;
use crate::store::{self, CreateError};

impl From<Invalid> for Status {
    fn from(e: Invalid) -> Self {
        invalid_argument(&e.field, e.reason)
    }
}

fn raw_product(p: pb::Product) -> RawProduct {
    RawProduct {
        sku: p.sku,
        name: p.name,
        description: p.description,
        category: p.category,
        price: p.price,
        image_url: p.image_url,
        attributes: p.attributes.into_iter().collect(),
        active: p.active,
    }
}

impl TryFrom<pb::CreateProductRequest> for NewProduct {
    type Error = Status;
    fn try_from(r: pb::CreateProductRequest) -> Result<Self, Status> {
        let product = r.product.ok_or_else(|| invalid_argument("product", "is required"))?;
        // New products are always active (proto3 can't tell "false" from unset).
        Ok(NewProduct::parse("product", &raw_product(product))?)
    }
}

/// A validated UpdateProduct request.
struct ProductUpdate {
    id: Uuid,
    patch: ProductPatch,
}

impl TryFrom<pb::UpdateProductRequest> for ProductUpdate {
    type Error = Status;
    fn try_from(r: pb::UpdateProductRequest) -> Result<Self, Status> {
        let id = id(&r.id)?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let patch = ProductPatch::from_mask(&paths, "product", &raw_product(r.product.unwrap_or_default()))?;
        Ok(Self { id, patch })
    }
}

/// A validated ListProducts request.
struct ListRequest {
    filter: ListFilter,
    page_size: u32,
    after: Option<domain::Cursor>,
    /// As sent: part of the cache key.
    page_token: String,
}

impl TryFrom<pb::ListProductsRequest> for ListRequest {
    type Error = Status;
    fn try_from(r: pb::ListProductsRequest) -> Result<Self, Status> {
        let page = r.page.unwrap_or_default();
        let size = paging::page_size(Some(&page), DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
        let filter = ListFilter::parse(&r.category, r.min_price_minor, r.max_price_minor, &r.q)?;
        let after = decode_page_token(Some(&page), &filter)?;
        Ok(Self { filter, page_size: size, after, page_token: page.page_token })
    }
}

impl From<Product> for pb::Product {
    fn from(p: Product) -> Self {
        pb::Product {
            id: p.id.to_string(),
            sku: p.sku,
            name: p.name,
            description: p.description,
            category: p.category,
            price: Some(p.price.to_proto()),
            image_url: p.image_url,
            attributes: p.attributes.into_iter().collect(),
            active: p.active,
            created_at: Some(timestamp(p.created_at)),
            updated_at: Some(timestamp(p.updated_at)),
        }
    }
}

fn id(raw: &str) -> Result<Uuid, Status> {
    Ok(domain::product_id("id", raw)?)
}

fn not_found(id: Uuid) -> Status {
    Status::not_found(format!("product {id} not found"))
}

pub struct CatalogApi {
    pub pool: PgPool,
    pub outbox: Outbox,
    pub cache: Cache,
}

impl CatalogApi {
    fn require_admin<T>(request: &Request<T>) -> Result<(), Status> {
        request.principal()?.require_role(ROLE_ADMIN)
    }

    /// Runs `patch` on product `id` in one transaction with its events.
    async fn patch(&self, id: Uuid, patch: &ProductPatch) -> Result<Product, Status> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let current = store::get_for_update(&mut tx, id).await.map_err(db_error)?.ok_or_else(|| not_found(id))?;
        let applied = current.apply(patch);
        if applied.changed.is_empty() {
            // Nothing to write, nothing to announce (archiving twice lands here).
            tx.rollback().await.map_err(db_error)?;
            return Ok(current);
        }
        let saved = store::update(&mut tx, &applied.product).await.map_err(db_error)?;
        self.outbox.enqueue(&mut tx, &events::updated(&applied)).await.map_err(db_error)?;
        if let Some(price) = events::price_changed(&applied) {
            self.outbox.enqueue(&mut tx, &price).await.map_err(db_error)?;
        }
        self.outbox.commit(tx).await.map_err(db_error)?;
        // If Redis misses this, the event consumer retries it.
        self.cache.invalidate(Some(id)).await;
        tracing::info!(product_id = %id, changed = ?applied.changed, "product updated");
        Ok(saved)
    }
}

#[tonic::async_trait]
impl pb::catalog_service_server::CatalogService for CatalogApi {
    async fn list_products(
        &self,
        request: Request<pb::ListProductsRequest>,
    ) -> Result<Response<pb::ListProductsResponse>, Status> {
        let ListRequest { filter, page_size, after, page_token } = request.into_inner().try_into()?;
        let key = match self.cache.generation().await {
            Some(generation) => {
                Some(self.cache.list_key(generation, &list_cache_digest(&filter, page_size, &page_token)))
            }
            None => {
                cache::record(Kind::List, false);
                None
            }
        };
        if let Some(key) = &key
            && let Some(bytes) = self.cache.get(Kind::List, key).await
            && let Ok(cached) = pb::ListProductsResponse::decode(bytes.as_slice())
        {
            return Ok(Response::new(cached));
        }

        let found = store::list(&self.pool, &filter, after, page_size).await.map_err(db_error)?;
        let response = pb::ListProductsResponse {
            page: Some(PageResponse {
                next_page_token: found.next.map(|c| encode_page_token(&c, &filter)).unwrap_or_default(),
            }),
            products: found.products.into_iter().map(Into::into).collect(),
        };
        if let Some(key) = key {
            self.cache.put(Kind::List, key, response.encode_to_vec()).await;
        }
        Ok(Response::new(response))
    }

    async fn get_product(
        &self,
        request: Request<pb::GetProductRequest>,
    ) -> Result<Response<pb::GetProductResponse>, Status> {
        let id = id(&request.get_ref().id)?;
        let key = self.cache.product_key(id);
        if let Some(bytes) = self.cache.get(Kind::Product, &key).await
            && let Ok(product) = pb::Product::decode(bytes.as_slice())
        {
            return Ok(Response::new(pb::GetProductResponse { product: Some(product) }));
        }
        // Read before the row, so a write racing this read voids the fill.
        let generation = self.cache.generation().await;
        let product: pb::Product =
            store::get(&self.pool, id).await.map_err(db_error)?.ok_or_else(|| not_found(id))?.into();
        if let Some(generation) = generation {
            self.cache.put_product(id, product.encode_to_vec(), generation).await;
        }
        Ok(Response::new(pb::GetProductResponse { product: Some(product) }))
    }

    async fn batch_get_products(
        &self,
        request: Request<pb::BatchGetProductsRequest>,
    ) -> Result<Response<pb::BatchGetProductsResponse>, Status> {
        let raw = request.into_inner().ids;
        if raw.len() > MAX_BATCH_IDS {
            return Err(invalid_argument("ids", format!("at most {MAX_BATCH_IDS} ids per call")));
        }
        let mut ids = Vec::with_capacity(raw.len());
        for (i, s) in raw.iter().enumerate() {
            let id = domain::product_id(&format!("ids[{i}]"), s)?;
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        let cached = self.cache.get_many(ids.iter().map(|id| self.cache.product_key(*id)).collect()).await;
        let mut found: HashMap<Uuid, pb::Product> = HashMap::with_capacity(ids.len());
        let mut missing = Vec::new();
        for (id, bytes) in ids.iter().zip(cached) {
            match bytes.and_then(|b| pb::Product::decode(b.as_slice()).ok()) {
                Some(p) => {
                    found.insert(*id, p);
                }
                None => missing.push(*id),
            }
        }
        if !missing.is_empty() {
            let generation = self.cache.generation().await;
            for product in store::get_many(&self.pool, &missing).await.map_err(db_error)? {
                let id = product.id;
                let product: pb::Product = product.into();
                if let Some(generation) = generation {
                    self.cache.put_product(id, product.encode_to_vec(), generation).await;
                }
                found.insert(id, product);
            }
        }
        // Request order; unknown ids omitted.
        let products = ids.iter().filter_map(|id| found.remove(id)).collect();
        Ok(Response::new(pb::BatchGetProductsResponse { products }))
    }

    async fn list_categories(
        &self,
        _request: Request<pb::ListCategoriesRequest>,
    ) -> Result<Response<pb::ListCategoriesResponse>, Status> {
        let key = self.cache.generation().await.map(|g| self.cache.categories_key(g));
        match &key {
            Some(key) => {
                if let Some(bytes) = self.cache.get(Kind::Categories, key).await
                    && let Ok(cached) = pb::ListCategoriesResponse::decode(bytes.as_slice())
                {
                    return Ok(Response::new(cached));
                }
            }
            None => cache::record(Kind::Categories, false),
        }
        let categories = store::categories(&self.pool).await.map_err(db_error)?;
        let response = pb::ListCategoriesResponse {
            categories: categories
                .into_iter()
                .map(|(name, product_count)| pb::Category { name, product_count })
                .collect(),
        };
        if let Some(key) = key {
            self.cache.put(Kind::Categories, key, response.encode_to_vec()).await;
        }
        Ok(Response::new(response))
    }

    async fn create_product(
        &self,
        request: Request<pb::CreateProductRequest>,
    ) -> Result<Response<pb::CreateProductResponse>, Status> {
        Self::require_admin(&request)?;
        let new = NewProduct::try_from(request.into_inner())?;
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let product = store::insert(&mut tx, Uuid::now_v7(), &new).await.map_err(|e| match e {
            CreateError::DuplicateSku => {
                Status::already_exists(format!("a product with sku {} already exists", new.sku.as_str()))
            }
            CreateError::Db(e) => db_error(e),
        })?;
        self.outbox.enqueue(&mut tx, &events::created(&product)).await.map_err(db_error)?;
        self.outbox.commit(tx).await.map_err(db_error)?;
        // If Redis misses this, the event consumer retries it.
        self.cache.invalidate(None).await;
        tracing::info!(product_id = %product.id, sku = %product.sku, "product created");
        Ok(Response::new(pb::CreateProductResponse { product: Some(product.into()) }))
    }

    async fn update_product(
        &self,
        request: Request<pb::UpdateProductRequest>,
    ) -> Result<Response<pb::UpdateProductResponse>, Status> {
        Self::require_admin(&request)?;
        let ProductUpdate { id, patch } = request.into_inner().try_into()?;
        let product = self.patch(id, &patch).await?;
        Ok(Response::new(pb::UpdateProductResponse { product: Some(product.into()) }))
    }

    async fn archive_product(
        &self,
        request: Request<pb::ArchiveProductRequest>,
    ) -> Result<Response<pb::ArchiveProductResponse>, Status> {
        Self::require_admin(&request)?;
        let id = id(&request.get_ref().id)?;
        let product = self.patch(id, &ProductPatch::archive()).await?;
        Ok(Response::new(pb::ArchiveProductResponse { product: Some(product.into()) }))
    }
}

#[cfg(test)]
mod tests {
    use shopmesh_platform::pb::common::v1::PageRequest;

    use super::*;

    fn list(page_size: i32) -> Result<ListRequest, Status> {
        let page = Some(PageRequest { page_size, page_token: String::new() });
        ListRequest::try_from(pb::ListProductsRequest { page, ..Default::default() })
    }

    #[test]
    fn page_size_defaults_clamps_and_rejects_negative() {
        assert_eq!(list(0).ok().unwrap().page_size, 20);
        assert_eq!(list(7).ok().unwrap().page_size, 7);
        assert_eq!(list(1000).ok().unwrap().page_size, 100);
        let e = list(-1).err().unwrap();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("page.page_size"), "{}", e.message());
    }
}
