//! What the cart consumes: `OrderConfirmed` from order-events takes what was
//! bought out of the buyer's cart; units added after checkout read the cart,
//! and lines put in or given a quantity since, stay.
//! The platform's inbox makes each event apply once.

use std::collections::HashMap;
use std::sync::Mutex;

use shopmesh_platform::consumer::{EventHandler, HandlerError};
use shopmesh_platform::events::{DomainEvent as _, ReceivedEvent};
use shopmesh_platform::pb::events::v1::OrderConfirmed;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::cache::CartCache;
use crate::domain::Cart;
use crate::store;

/// Consumer group and inbox name.
pub const CONSUMER: &str = "cart";

pub struct CheckoutClearer {
    pub cache: CartCache,
    /// The carts a batch's transaction wrote, by event, for `after_commit`
    /// to put in Redis. Batches are applied one after another, so whatever
    /// an earlier, rolled-back attempt left here is stale by then: the
    /// committed batch's carts are taken and the rest dropped.
    written: Mutex<HashMap<Uuid, (String, Cart)>>,
}

impl CheckoutClearer {
    pub fn new(cache: CartCache) -> Self {
        Self { cache, written: Mutex::default() }
    }
}

#[async_trait::async_trait]
impl EventHandler for CheckoutClearer {
    fn wants(&self, event_type: &str) -> bool {
        event_type == OrderConfirmed::TYPE
    }

    async fn handle(&self, tx: &mut PgConnection, event: &ReceivedEvent) -> Result<(), HandlerError> {
        let confirmed = event.payload::<OrderConfirmed>()?;
        if confirmed.user_id.is_empty() {
            return Err(HandlerError::Permanent(format!("order {} has no user_id", confirmed.order_id)));
        }
        let ordered = confirmed
            .lines
            .iter()
            .map(|l| {
                let product_id = uuid::Uuid::parse_str(&l.product_id).map_err(|e| {
                    HandlerError::Permanent(format!(
                        "order {} line product_id {:?}: {e}",
                        confirmed.order_id, l.product_id
                    ))
                })?;
                Ok((product_id, u32::try_from(l.quantity).unwrap_or(0)))
            })
            .collect::<Result<Vec<_>, HandlerError>>()?;
        let mut cart = store::lock(tx, &confirmed.user_id).await?;
        if ordered.is_empty() {
            // Producers before lines were carried: the old rule, empty it all.
            cart.clear();
        } else {
            cart.remove_ordered(ordered, confirmed.cart_version);
        }
        cart.touch(chrono::Utc::now());
        store::save(tx, &confirmed.user_id, &cart).await?;
        // The new copy goes in after the commit (`after_commit`); until then
        // nobody reads the old one, nor one this transaction may never
        // commit, and no reader can put the old one back.
        self.cache.hold(&confirmed.user_id, cart.version).await;
        self.written.lock().expect("written carts").insert(event.event_id, (confirmed.user_id.clone(), cart));
        tracing::info!(order_id = %confirmed.order_id, user_id = %confirmed.user_id, "ordered lines taken out of the cart");
        Ok(())
    }

    /// Puts each emptied cart's committed copy back in Redis: its version
    /// wins over an older copy a reader may have put back meanwhile.
    async fn after_commit(&self, _pool: &PgPool, applied: &[&ReceivedEvent]) {
        let mut written = std::mem::take(&mut *self.written.lock().expect("written carts"));
        for event in applied {
            if let Some((user_id, cart)) = written.remove(&event.event_id) {
                self.cache.put(&user_id, &cart).await;
            }
        }
    }
}
