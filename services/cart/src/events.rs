//! What the cart consumes: `OrderConfirmed` from order-events empties the
//! buyer's cart. The platform's inbox makes each event apply once.
//!
//! Known gap: the whole cart is cleared, including lines added after
//! checkout began; only the checked-out lines should go (OrderConfirmed
//! carries no lines yet).

use shopmesh_platform::consumer::{EventHandler, HandlerError};
use shopmesh_platform::events::{DomainEvent as _, ReceivedEvent};
use shopmesh_platform::pb::events::v1::OrderConfirmed;
use sqlx::PgConnection;

use crate::cache::CartCache;
use crate::store;

/// Consumer group and inbox name.
pub const CONSUMER: &str = "cart";

pub struct CheckoutClearer {
    pub cache: CartCache,
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
        let mut cart = store::lock(tx, &confirmed.user_id).await?;
        cart.clear();
        cart.touch(chrono::Utc::now());
        store::save(tx, &confirmed.user_id, &cart).await?;
        // Written before the commit (there is no after-commit hook): the new
        // version wins over any concurrent repopulate of the old cart, and a
        // rolled-back attempt is redone by the retry.
        self.cache.put(&confirmed.user_id, &cart).await;
        tracing::info!(order_id = %confirmed.order_id, user_id = %confirmed.user_id, "cart cleared after checkout");
        Ok(())
    }
}
