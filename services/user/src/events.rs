//! What the user service consumes: `UserRegistered` from user-events creates
//! the profile. The platform's inbox makes each event apply once; the insert
//! is also idempotent on its own.

use shopmesh_platform::consumer::{EventHandler, HandlerError};
use shopmesh_platform::events::{DomainEvent as _, ReceivedEvent};
use shopmesh_platform::pb::events::v1::UserRegistered;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::store;

/// Consumer group and inbox name.
pub const CONSUMER: &str = "user";

pub struct ProfileCreator;

#[async_trait::async_trait]
impl EventHandler for ProfileCreator {
    fn wants(&self, event_type: &str) -> bool {
        event_type == UserRegistered::TYPE
    }

    async fn handle(&self, tx: &mut PgConnection, event: &ReceivedEvent) -> Result<(), HandlerError> {
        let registered = event.payload::<UserRegistered>()?;
        // A malformed id will never apply: dead-letter it instead of retrying.
        let user_id = Uuid::parse_str(&registered.user_id)
            .map_err(|_| HandlerError::Permanent(format!("user_id {:?} is not a UUID", registered.user_id)))?;
        let created = store::create_profile(tx, user_id, &registered.email, &registered.name).await?;
        tracing::info!(%user_id, created, "profile from UserRegistered");
        Ok(())
    }
}
