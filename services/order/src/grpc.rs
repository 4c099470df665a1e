//! `OrderService`: proto in → domain → store (+ outbox) → proto out.

use sha2::{Digest, Sha256};
use shopmesh_platform::auth::RequestAuthExt;
use shopmesh_platform::grpc::{TracePropagation, db_error, invalid_argument, timestamp};
use shopmesh_platform::money::Money;
use shopmesh_platform::outbox::Outbox;
use shopmesh_platform::paging;
use shopmesh_platform::pb::common::v1::{PageResponse, PostalAddress};
use shopmesh_platform::pb::events::v1 as ev;
use sqlx::PgPool;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::{CartLine, CatalogProduct, CheckoutError, OrderInput, OrderLine, OrderStatus, price_checkout};
use crate::events::advance;
use crate::pb;
use crate::store::{self, IdempotentHit, KeyClaim, NewOrder, OrderRecord};

pub type CartClient =
    shopmesh_cart::pb::cart_service_client::CartServiceClient<InterceptedService<Channel, TracePropagation>>;
pub type CatalogClient =
    shopmesh_catalog::pb::catalog_service_client::CatalogServiceClient<InterceptedService<Channel, TracePropagation>>;
pub type UserClient =
    shopmesh_user::pb::user_service_client::UserServiceClient<InterceptedService<Channel, TracePropagation>>;

pub struct OrderApi {
    pub pool: PgPool,
    pub outbox: Outbox,
    pub backlog: std::sync::Arc<crate::backlog::Backlog>,
    pub cart: CartClient,
    pub catalog: CatalogClient,
    pub users: UserClient,
}

const MAX_IDEMPOTENCY_KEY: usize = 255;

/// What checkout orders: the cart's lines priced, and the cart version
/// they were read at.
struct PricedCart {
    lines: Vec<crate::domain::OrderLine>,
    total: Money,
    cart_version: i64,
}

/// A validated checkout request.
struct Checkout {
    payment_token: String,
    shipping: Shipping,
    coupon_code: String,
}

enum Shipping {
    SavedAddress(Uuid),
    Inline(PostalAddress),
}

impl TryFrom<&pb::CreateOrderRequest> for Checkout {
    type Error = Status;

    fn try_from(req: &pb::CreateOrderRequest) -> Result<Self, Status> {
        let payment_token = req.payment_token.trim();
        if payment_token.is_empty() || payment_token.len() > 200 {
            return Err(invalid_argument("payment_token", "is required (at most 200 characters)"));
        }
        if !is_provider_token(payment_token) {
            return Err(invalid_argument(
                "payment_token",
                "must be a token from the payment form (like tok_visa), never card details",
            ));
        }
        let shipping = match &req.shipping {
            Some(pb::create_order_request::Shipping::ShippingAddressId(id)) => Shipping::SavedAddress(
                Uuid::parse_str(id).map_err(|_| invalid_argument("shipping_address_id", "is not a valid id"))?,
            ),
            Some(pb::create_order_request::Shipping::ShippingAddress(a)) => {
                Shipping::Inline(shopmesh_platform::address::validate(a, "shipping_address")?)
            }
            None => {
                return Err(invalid_argument(
                    "shipping_address_id",
                    "a saved address id or a shipping_address is required",
                ));
            }
        };
        // No discount service exists yet: a coupon can only be unknown.
        if !req.coupon_code.trim().is_empty() {
            return Err(invalid_argument("coupon_code", "unknown coupon"));
        }
        Ok(Checkout { payment_token: payment_token.to_owned(), shipping, coupon_code: String::new() })
    }
}

/// A provider token looks like `tok_…` or `pm_…`: a short lowercase prefix,
/// an underscore, then letters, digits and underscores. The token travels in
/// events and outbox rows, so anything else (a pasted card number above all)
/// is refused before it is stored anywhere.
fn is_provider_token(token: &str) -> bool {
    let Some((prefix, rest)) = token.split_once('_') else { return false };
    (2..=8).contains(&prefix.len())
        && prefix.bytes().all(|b| b.is_ascii_lowercase())
        && !rest.is_empty()
        && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The caller's Idempotency-Key: any UTF-8 string that is not blank, kept
/// as sent (through the gateway, HTTP has already dropped the spaces around
/// a header value; a gRPC caller's are part of its key).
fn idempotency_key<T>(req: &Request<T>) -> Result<Option<String>, Status> {
    let Some(value) = req.metadata().get("idempotency-key") else { return Ok(None) };
    let key = std::str::from_utf8(value.as_encoded_bytes())
        .map_err(|_| invalid_argument("Idempotency-Key", "must be UTF-8 text"))?;
    if key.trim().is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(invalid_argument(
            "Idempotency-Key",
            format!("must be 1 to {MAX_IDEMPOTENCY_KEY} bytes, not blank"),
        ));
    }
    Ok(Some(key.to_owned()))
}

/// Copies the caller's credentials onto a call made on their behalf.
fn on_behalf<T>(from: &Request<impl Sized>, message: T) -> Request<T> {
    let mut out = for_public_data(from, message);
    if let Some(auth) = from.metadata().get("authorization") {
        out.metadata_mut().insert("authorization", auth.clone());
    }
    out
}

/// A call for public data (catalog prices) made while serving `from`: the
/// request id goes along, the credentials do not, so the callee spends no
/// token verification and denylist lookup on an answer that is the same
/// for everyone.
fn for_public_data<T>(from: &Request<impl Sized>, message: T) -> Request<T> {
    let mut out = Request::new(message);
    if let Some(id) = from.metadata().get("x-request-id") {
        out.metadata_mut().insert("x-request-id", id.clone());
    }
    out
}

fn checkout_status(e: CheckoutError) -> Status {
    match e {
        CheckoutError::EmptyCart => Status::failed_precondition("cart is empty"),
        CheckoutError::Unknown(id) | CheckoutError::Unavailable(id) => {
            Status::failed_precondition(format!("product {id} in the cart is no longer available; remove it and retry"))
        }
        CheckoutError::Quantity(id) => Status::failed_precondition(format!("cart line {id} has an invalid quantity")),
        CheckoutError::NothingToCharge => {
            Status::failed_precondition("the cart's total is zero; add something with a price to check out")
        }
        CheckoutError::Money(m) => Status::failed_precondition(format!("cannot total the cart: {m}")),
    }
}

fn status_proto(s: OrderStatus) -> pb::OrderStatus {
    match s {
        OrderStatus::Pending => pb::OrderStatus::Pending,
        OrderStatus::Confirmed => pb::OrderStatus::Confirmed,
        OrderStatus::Cancelled => pb::OrderStatus::Cancelled,
    }
}

fn reason_proto(r: Option<crate::domain::CancelReason>) -> i32 {
    use crate::domain::CancelReason::*;
    let reason = match r {
        None => ev::CancelReason::Unspecified,
        Some(OutOfStock) => ev::CancelReason::OutOfStock,
        Some(PaymentDeclined) => ev::CancelReason::PaymentDeclined,
        Some(Timeout) => ev::CancelReason::Timeout,
        Some(CustomerRequest) => ev::CancelReason::CustomerRequest,
    };
    reason as i32
}

fn order_proto(o: OrderRecord) -> pb::Order {
    pb::Order {
        id: o.id.to_string(),
        user_id: o.user_id,
        status: status_proto(o.status) as i32,
        cancel_reason: reason_proto(o.cancel_reason),
        lines: o
            .lines
            .iter()
            .map(|l| pb::OrderLine {
                product_id: l.product_id.clone(),
                sku: l.sku.clone(),
                name: l.name.clone(),
                unit_price: Some(l.unit_price.to_proto()),
                quantity: l.quantity,
                line_total: l.line_total().ok().map(Money::to_proto),
            })
            .collect(),
        total: Some(o.total.to_proto()),
        shipping_address: Some(o.shipping_address),
        coupon_code: o.coupon_code,
        history: o
            .history
            .into_iter()
            .map(|h| pb::StatusChange {
                status: status_proto(h.status) as i32,
                reason: reason_proto(h.reason),
                changed_at: Some(timestamp(h.changed_at)),
                note: h.note,
            })
            .collect(),
        created_at: Some(timestamp(o.created_at)),
        updated_at: Some(timestamp(o.updated_at)),
    }
}

fn parse_order_id(id: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(id).map_err(|_| invalid_argument("id", "is not a valid order id"))
}

impl OrderApi {
    async fn load_visible(&self, id: Uuid, caller: &shopmesh_platform::auth::Principal) -> Result<OrderRecord, Status> {
        let owner = (!caller.is_admin()).then_some(caller.user_id.as_str());
        store::load_order(&self.pool, id, owner)
            .await
            .map_err(db_error)?
            .ok_or_else(|| Status::not_found("order not found"))
    }

    /// The response to a checkout retried with a live Idempotency-Key: the
    /// original order, or an error if the key was used for another request.
    /// `None` when the key is unused.
    async fn replay(
        &self,
        caller: &shopmesh_platform::auth::Principal,
        key: &str,
        request_hash: &str,
    ) -> Result<Option<Response<pb::CreateOrderResponse>>, Status> {
        let hit = {
            let mut conn = self.pool.acquire().await.map_err(db_error)?;
            store::find_idempotency_key(&mut conn, &caller.user_id, key, request_hash).await.map_err(db_error)?
        };
        match hit {
            None => Ok(None),
            Some(IdempotentHit::DifferentRequest) => Err(reused_key()),
            Some(IdempotentHit::SameRequest(id)) => {
                let order = self.load_visible(id, caller).await?;
                Ok(Some(Response::new(pb::CreateOrderResponse { order: Some(order_proto(order)) })))
            }
        }
    }

    async fn resolve_shipping(
        &self,
        req: &Request<pb::CreateOrderRequest>,
        shipping: Shipping,
    ) -> Result<PostalAddress, Status> {
        match shipping {
            Shipping::Inline(a) => Ok(a),
            Shipping::SavedAddress(id) => {
                let call = on_behalf(req, shopmesh_user::pb::GetAddressRequest { address_id: id.to_string() });
                let resp = self.users.clone().get_address(call).await.map_err(|s| match s.code() {
                    tonic::Code::NotFound => invalid_argument("shipping_address_id", "no such saved address"),
                    _ => s,
                })?;
                resp.into_inner()
                    .address
                    .and_then(|a| a.postal_address)
                    .ok_or_else(|| invalid_argument("shipping_address_id", "saved address has no postal address"))
            }
        }
    }

    /// Cart lines, priced at the catalog's current prices. Read from the
    /// cart's store of record: a cached copy some replica failed to update
    /// would bill lines the buyer removed, and record the wrong version.
    async fn price_cart(&self, req: &Request<pb::CreateOrderRequest>) -> Result<PricedCart, Status> {
        let read = shopmesh_cart::pb::GetCartRequest { consistent_read: true };
        let cart = self.cart.clone().get_cart(on_behalf(req, read)).await?.into_inner();
        let cart = cart.cart.unwrap_or_default();
        // The cart leaves lines it can no longer sell out of its view; they
        // go to pricing too, so checkout refuses them instead of quietly
        // ordering the rest.
        let lines: Vec<CartLine> = cart
            .lines
            .into_iter()
            .map(|l| CartLine { product_id: l.product_id, quantity: l.quantity })
            .chain(
                cart.unavailable_lines.into_iter().map(|l| CartLine { product_id: l.product_id, quantity: l.quantity }),
            )
            .collect();
        if lines.is_empty() {
            return Err(checkout_status(CheckoutError::EmptyCart));
        }
        let ids = lines.iter().map(|l| l.product_id.clone()).collect();
        let products = self
            .catalog
            .clone()
            .batch_get_products(for_public_data(req, shopmesh_catalog::pb::BatchGetProductsRequest { ids }))
            .await?
            .into_inner()
            .products;
        let catalog: Vec<CatalogProduct> = products
            .into_iter()
            .filter_map(|p| {
                let price = Money::from_proto_opt(p.price.as_ref()).ok()?;
                Some(CatalogProduct { id: p.id, sku: p.sku, name: p.name, price, active: p.active })
            })
            .collect();
        let (lines, total) = price_checkout(&lines, &catalog).map_err(checkout_status)?;
        Ok(PricedCart { lines, total, cart_version: cart.version })
    }
}

#[tonic::async_trait]
impl pb::order_service_server::OrderService for OrderApi {
    async fn create_order(
        &self,
        req: Request<pb::CreateOrderRequest>,
    ) -> Result<Response<pb::CreateOrderResponse>, Status> {
        let caller = req.principal()?.clone();
        let checkout = Checkout::try_from(req.get_ref())?;
        let key = idempotency_key(&req)?;
        let request_hash = hex(&Sha256::digest(prost::Message::encode_to_vec(req.get_ref())));

        if let Some(key) = &key
            && let Some(replay) = self.replay(&caller, key, &request_hash).await?
        {
            return Ok(replay);
        }
        // After the replay: a retry of a placed order still gets its order.
        self.backlog.admit()?;

        let shipping = self.resolve_shipping(&req, checkout.shipping).await?;
        let PricedCart { lines, total, cart_version } = self.price_cart(&req).await?;
        let id = Uuid::now_v7();
        let new = NewOrder {
            id,
            user_id: &caller.user_id,
            lines: &lines,
            total,
            shipping_address: &shipping,
            coupon_code: &checkout.coupon_code,
            cart_version,
        };
        let created = ev::OrderCreated {
            order_id: id.to_string(),
            user_id: caller.user_id.clone(),
            lines: lines.iter().map(OrderLine::to_event).collect(),
            total: Some(total.to_proto()),
            payment_token: checkout.payment_token,
        };
        let created = self.outbox.row(&created, &tracing::Span::current());
        let claim = key.as_deref().map(|key| KeyClaim { key, request_hash: &request_hash });
        let Some(order) = store::place_order(&self.pool, &new, claim, &created).await.map_err(db_error)? else {
            // Only a key can be lost: a concurrent retry won it; answer with its order.
            let replay = match key.as_deref() {
                Some(key) => self.replay(&caller, key, &request_hash).await?,
                None => None,
            };
            return replay.ok_or_else(reused_key);
        };
        self.outbox.committed();
        metrics::counter!("orders_created_total").increment(1);
        tracing::info!(order_id = %id, user_id = %caller.user_id, total = %total, "order placed");
        Ok(Response::new(pb::CreateOrderResponse { order: Some(order_proto(order)) }))
    }

    async fn list_orders(
        &self,
        req: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let caller = req.principal()?.clone();
        let page = req.get_ref().page.as_ref();
        let size = paging::page_size(page, 20, 100)?;
        let filters = paging::fingerprint(&["orders", &caller.user_id]);
        let cursor = paging::decode_newest_first(page, &filters)?;
        let (orders, next) = store::list_orders(&self.pool, &caller.user_id, cursor, size).await.map_err(db_error)?;
        Ok(Response::new(pb::ListOrdersResponse {
            orders: orders.into_iter().map(order_proto).collect(),
            page: Some(PageResponse {
                next_page_token: next.map(|c| paging::encode_token(&c, &filters)).unwrap_or_default(),
            }),
        }))
    }

    async fn get_order(&self, req: Request<pb::GetOrderRequest>) -> Result<Response<pb::GetOrderResponse>, Status> {
        let caller = req.principal()?.clone();
        let id = parse_order_id(&req.get_ref().id)?;
        let order = self.load_visible(id, &caller).await?;
        Ok(Response::new(pb::GetOrderResponse { order: Some(order_proto(order)) }))
    }

    async fn cancel_order(
        &self,
        req: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::CancelOrderResponse>, Status> {
        let caller = req.principal()?.clone();
        let id = parse_order_id(&req.get_ref().id)?;
        // Ownership first, so another user's order is indistinguishable from none.
        self.load_visible(id, &caller).await?;
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        advance(&mut tx, &self.outbox, id, OrderInput::CustomerCancel).await.map_err(db_error)?;
        self.outbox.commit(tx).await.map_err(db_error)?;
        let order = self.load_visible(id, &caller).await?;
        Ok(Response::new(pb::CancelOrderResponse { order: Some(order_proto(order)) }))
    }
}

fn reused_key() -> Status {
    Status::already_exists("Idempotency-Key was already used for a different checkout request; use a new key")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed(raw: &[u8]) -> Request<()> {
        let mut req = Request::new(());
        let value = tonic::metadata::AsciiMetadataValue::try_from(raw).expect("header bytes");
        req.metadata_mut().insert("idempotency-key", value);
        req
    }

    #[test]
    fn an_idempotency_key_is_any_utf8_text_kept_as_sent_and_never_blank() {
        assert_eq!(idempotency_key(&Request::new(())).unwrap(), None);
        for key in ["checkout-42", "заказ-42 ✓", " padded "] {
            assert_eq!(idempotency_key(&keyed(key.as_bytes())).unwrap().as_deref(), Some(key));
        }
        for bad in [&b" \t "[..], b"\xff\xfe", &[b'k'; 256]] {
            let refused = idempotency_key(&keyed(bad)).unwrap_err();
            assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn provider_tokens_pass_and_card_details_do_not() {
        for ok in ["tok_visa", "tok_chargeDeclined", "tok_insufficient_funds", "pm_1NqXyZ2eZvKYlo2C"] {
            assert!(is_provider_token(ok), "{ok}");
        }
        for bad in ["4242424242424242", "4242 4242 4242 4242", "tok_", "_visa", "TOK_visa", "tok_visa 12/34", "x_visa"]
        {
            assert!(!is_provider_token(bad), "{bad}");
        }
    }
}
