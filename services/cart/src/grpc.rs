//! `shopmesh.cart.v1.CartService`: every RPC acts on the caller's own cart.
//! Writes lock the cart in Postgres, check the products and price the result
//! against the catalog, commit, then refresh the Redis copy.

use std::collections::HashMap;

use shopmesh_catalog::domain::Invalid;
use shopmesh_catalog::pb::BatchGetProductsRequest;
use shopmesh_catalog::pb::catalog_service_client::CatalogServiceClient;
use shopmesh_platform::auth::RequestAuthExt as _;
use shopmesh_platform::grpc::{TracePropagation, db_error, internal, invalid_argument, timestamp};
use shopmesh_platform::money::{Currency, Money};
use sqlx::PgPool;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

use crate::cache::CartCache;
use crate::domain::{self, Cart, CartError, CatalogProduct, PricedCart, PricingError, Quantity, Unavailable};
use crate::pb;
use crate::store;

pub type CatalogClient = CatalogServiceClient<InterceptedService<Channel, TracePropagation>>;

fn invalid(e: Invalid) -> Status {
    invalid_argument(&e.field, e.reason)
}

fn product_id(raw: &str) -> Result<Uuid, Status> {
    shopmesh_catalog::domain::product_id("product_id", raw).map_err(invalid)
}

/// A validated AddItem or UpdateItem request.
struct LineChange {
    product_id: Uuid,
    quantity: Quantity,
}

impl LineChange {
    fn parse(product: &str, quantity: i32) -> Result<Self, Status> {
        Ok(Self { product_id: product_id(product)?, quantity: Quantity::parse("quantity", quantity).map_err(invalid)? })
    }
}

impl TryFrom<pb::AddItemRequest> for LineChange {
    type Error = Status;
    fn try_from(r: pb::AddItemRequest) -> Result<Self, Status> {
        Self::parse(&r.product_id, r.quantity)
    }
}

impl TryFrom<pb::UpdateItemRequest> for LineChange {
    type Error = Status;
    fn try_from(r: pb::UpdateItemRequest) -> Result<Self, Status> {
        Self::parse(&r.product_id, r.quantity)
    }
}

fn cart_error(e: CartError) -> Status {
    match e {
        CartError::QuantityAboveMax { .. } => invalid_argument("quantity", e.to_string()),
        CartError::TooManyLines => Status::failed_precondition(e.to_string()),
        CartError::NotInCart(_) => Status::not_found(e.to_string()),
    }
}

fn unavailable(e: Unavailable) -> Status {
    match e {
        Unavailable::Unknown(_) => Status::not_found(e.to_string()),
        Unavailable::Archived { .. } => Status::failed_precondition(e.to_string()),
    }
}

fn pricing_error(e: PricingError) -> Status {
    match e {
        PricingError::MixedCurrencies(..) => Status::failed_precondition(e.to_string()),
        PricingError::Overflow => Status::failed_precondition(e.to_string()),
    }
}

pub struct CartApi {
    pub pool: PgPool,
    pub cache: CartCache,
    pub catalog: CatalogClient,
    /// Currency of an empty cart's zero total.
    pub default_currency: Currency,
}

impl CartApi {
    /// The catalog's current view of `ids` (one BatchGetProducts call).
    async fn products(&self, ids: Vec<Uuid>) -> Result<HashMap<Uuid, CatalogProduct>, Status> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let ids = ids.iter().map(Uuid::to_string).collect();
        let response = self.catalog.clone().batch_get_products(BatchGetProductsRequest { ids }).await.map_err(|s| {
            match s.code() {
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                    tracing::warn!(error = %s, "catalog unavailable");
                    Status::unavailable("catalog unavailable; try again")
                }
                _ => internal("catalog BatchGetProducts failed", s),
            }
        })?;
        let mut out = HashMap::new();
        for p in response.into_inner().products {
            let id = Uuid::parse_str(&p.id).map_err(|e| internal("catalog returned a bad product id", e))?;
            let price =
                Money::from_proto_opt(p.price.as_ref()).map_err(|e| internal("catalog returned a bad price", e))?;
            out.insert(id, CatalogProduct { id, sku: p.sku, name: p.name, price, active: p.active });
        }
        Ok(out)
    }

    /// Redis first; on a miss Postgres, then put the copy back.
    async fn load(&self, user_id: &str) -> Result<Cart, Status> {
        if let Some(cart) = self.cache.get(user_id).await {
            return Ok(cart);
        }
        self.load_stored(user_id).await
    }

    /// Postgres' cart, put back in Redis (where it replaces an older copy).
    async fn load_stored(&self, user_id: &str) -> Result<Cart, Status> {
        let cart = store::load(&self.pool, user_id).await.map_err(db_error)?;
        let cart = cart.unwrap_or_else(|| Cart::empty(chrono::Utc::now()));
        self.cache.put(user_id, &cart).await;
        Ok(cart)
    }

    /// Locks, mutates (`Ok(false)`: nothing changed), checks
    /// `must_be_purchasable` and prices the result, then commits and
    /// refreshes Redis. Nothing is stored if any check fails.
    ///
    /// The catalog is asked before the lock is taken, for the products the
    /// cart held a moment ago: a slow catalog must not keep the cart row
    /// locked and a connection out of the pool (every other write of the
    /// user, and then everyone's, would wait behind it). Only a product that
    /// came in meanwhile is asked for under the lock.
    async fn write<F>(&self, user_id: &str, must_be_purchasable: Option<Uuid>, mutate: F) -> Result<pb::Cart, Status>
    where
        F: FnOnce(&mut Cart) -> Result<bool, Status> + Send,
    {
        let mut asked = self.load(user_id).await?.product_ids();
        asked.extend(must_be_purchasable);
        let mut catalog = self.products(asked.clone()).await?;
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let mut cart = store::lock(&mut tx, user_id).await.map_err(db_error)?;
        let changed = mutate(&mut cart)?;
        let unpriced: Vec<Uuid> = cart.product_ids().into_iter().filter(|id| !asked.contains(id)).collect();
        if !unpriced.is_empty() {
            catalog.extend(self.products(unpriced).await?);
        }
        if let Some(id) = must_be_purchasable {
            domain::purchasable(id, &catalog).map_err(unavailable)?;
        }
        let priced = domain::price(&cart, &catalog).map_err(pricing_error)?;
        if changed {
            cart.touch(chrono::Utc::now());
            store::save(&mut tx, user_id, &cart).await.map_err(db_error)?;
            tx.commit().await.map_err(db_error)?;
        } else {
            tx.rollback().await.map_err(db_error)?;
        }
        self.cache.put(user_id, &cart).await;
        Ok(self.view(user_id, &cart, priced))
    }

    fn view(&self, user_id: &str, cart: &Cart, priced: PricedCart) -> pb::Cart {
        pb::Cart {
            user_id: user_id.to_owned(),
            lines: priced
                .lines
                .into_iter()
                .map(|l| pb::CartLine {
                    product_id: l.product_id.to_string(),
                    sku: l.sku,
                    name: l.name,
                    unit_price: Some(l.unit_price.to_proto()),
                    quantity: i32::from(l.quantity.get()),
                    line_total: Some(l.line_total.to_proto()),
                })
                .collect(),
            total: Some(priced.total.unwrap_or(Money::zero(self.default_currency)).to_proto()),
            unavailable_lines: priced
                .unavailable
                .into_iter()
                .map(|l| pb::UnavailableLine {
                    product_id: l.product_id.to_string(),
                    quantity: i32::from(l.quantity.get()),
                })
                .collect(),
            // At most 50 lines of 99.
            item_count: priced.item_count as i32,
            updated_at: Some(timestamp(cart.updated_at)),
            version: cart.version,
        }
    }
}

fn caller<T>(request: &Request<T>) -> Result<String, Status> {
    let p = request.principal()?;
    if p.user_id.is_empty() {
        return Err(Status::unauthenticated("token has no subject"));
    }
    Ok(p.user_id.clone())
}

#[tonic::async_trait]
impl pb::cart_service_server::CartService for CartApi {
    async fn get_cart(&self, request: Request<pb::GetCartRequest>) -> Result<Response<pb::GetCartResponse>, Status> {
        let user_id = caller(&request)?;
        let cart = if request.get_ref().consistent_read {
            self.load_stored(&user_id).await?
        } else {
            self.load(&user_id).await?
        };
        let catalog = self.products(cart.product_ids()).await?;
        let priced = domain::price(&cart, &catalog).map_err(pricing_error)?;
        Ok(Response::new(pb::GetCartResponse { cart: Some(self.view(&user_id, &cart, priced)) }))
    }

    async fn add_item(&self, request: Request<pb::AddItemRequest>) -> Result<Response<pb::AddItemResponse>, Status> {
        let user_id = caller(&request)?;
        let LineChange { product_id: id, quantity: qty } = request.into_inner().try_into()?;
        let now = chrono::Utc::now();
        let mutate = move |cart: &mut Cart| cart.add(id, qty, now).map(|()| true).map_err(cart_error);
        let cart = self.write(&user_id, Some(id), mutate).await?;
        Ok(Response::new(pb::AddItemResponse { cart: Some(cart) }))
    }

    async fn update_item(
        &self,
        request: Request<pb::UpdateItemRequest>,
    ) -> Result<Response<pb::UpdateItemResponse>, Status> {
        let user_id = caller(&request)?;
        let LineChange { product_id: id, quantity: qty } = request.into_inner().try_into()?;
        let mutate = move |cart: &mut Cart| cart.set_quantity(id, qty).map(|()| true).map_err(cart_error);
        let cart = self.write(&user_id, Some(id), mutate).await?;
        Ok(Response::new(pb::UpdateItemResponse { cart: Some(cart) }))
    }

    async fn remove_item(
        &self,
        request: Request<pb::RemoveItemRequest>,
    ) -> Result<Response<pb::RemoveItemResponse>, Status> {
        let user_id = caller(&request)?;
        let id = product_id(&request.get_ref().product_id)?;
        let mutate = move |cart: &mut Cart| Ok(cart.remove(id));
        let cart = self.write(&user_id, None, mutate).await?;
        Ok(Response::new(pb::RemoveItemResponse { cart: Some(cart) }))
    }

    async fn clear_cart(
        &self,
        request: Request<pb::ClearCartRequest>,
    ) -> Result<Response<pb::ClearCartResponse>, Status> {
        let user_id = caller(&request)?;
        let mutate = |cart: &mut Cart| {
            let had_lines = !cart.lines.is_empty();
            cart.clear();
            Ok(had_lines)
        };
        let cart = self.write(&user_id, None, mutate).await?;
        Ok(Response::new(pb::ClearCartResponse { cart: Some(cart) }))
    }
}
