//! What the catalog publishes (product-events, through the outbox) and what
//! it consumes: its own product-events, to drop cached entries on every
//! replica whichever replica (or seed job) made the change.

use std::time::Duration;

use futures::StreamExt as _;
use rdkafka::Message as _;
use shopmesh_platform::events::{DomainEvent as _, ReceivedEvent};
use shopmesh_platform::kafka::{Kafka, Pace, topics};
use shopmesh_platform::pb::events::v1::{PriceChanged, ProductCreated, ProductUpdated};
use shopmesh_platform::shutdown::Shutdown;
use uuid::Uuid;

use crate::cache::Cache;
use crate::domain::{Applied, Product};

pub fn created(p: &Product) -> ProductCreated {
    ProductCreated {
        product_id: p.id.to_string(),
        sku: p.sku.clone(),
        name: p.name.clone(),
        category: p.category.clone(),
        price: Some(p.price.to_proto()),
    }
}

pub fn updated(applied: &Applied) -> ProductUpdated {
    ProductUpdated {
        product_id: applied.product.id.to_string(),
        changed_fields: applied.changed.iter().map(|f| f.path().to_owned()).collect(),
        active: applied.product.active,
    }
}

pub fn price_changed(applied: &Applied) -> Option<PriceChanged> {
    applied.old_price.map(|old| PriceChanged {
        product_id: applied.product.id.to_string(),
        old_price: Some(old.to_proto()),
        new_price: Some(applied.product.price.to_proto()),
    })
}

/// Drops cache entries on product-events. Each replica has its own consumer
/// group (so each sees every event) and never commits offsets: invalidation
/// is idempotent, so no inbox, and an empty group leaves nothing behind.
pub struct CacheInvalidator {
    pub kafka: Kafka,
    pub cache: Cache,
    pub shutdown: Shutdown,
    /// Events older than this cannot concern any live entry (longest TTL plus slack).
    pub horizon: Duration,
}

impl CacheInvalidator {
    pub fn group() -> String {
        format!("catalog-cache-{}", Uuid::now_v7())
    }

    pub async fn run(self) {
        let group = Self::group();
        let consumer = loop {
            match self.kafka.consumer(&group, &[topics::PRODUCT], Pace::Prompt) {
                Ok(c) => break c,
                Err(e) => {
                    tracing::error!(error = %e, "creating cache-invalidation consumer failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = self.shutdown.wait() => return,
                    }
                }
            }
        };
        {
            let mut stream = consumer.stream();
            loop {
                let msg = tokio::select! {
                    _ = self.shutdown.wait() => break,
                    msg = stream.next() => msg,
                };
                match msg {
                    Some(Ok(m)) => {
                        let payload = m.payload().unwrap_or_default();
                        match ReceivedEvent::decode_envelope(payload, m.topic(), m.partition(), m.offset()) {
                            Ok(event) => self.apply(&event).await,
                            Err(e) => tracing::warn!(error = %e, "undecodable product event ignored"),
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "kafka receive error");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    None => break,
                }
            }
        }
        shopmesh_platform::kafka::close_consumer(consumer).await;
    }

    async fn apply(&self, event: &ReceivedEvent) {
        // A new group starts from the earliest offset; skip history that is
        // older than any entry could be.
        let occurred = event.envelope.occurred_at.as_ref().map(|t| t.seconds).unwrap_or(0);
        let cutoff = chrono::Utc::now().timestamp() - self.horizon.as_secs() as i64;
        if occurred < cutoff {
            return;
        }
        let product = match event.event_type() {
            // A new product only changes listings.
            t if t == ProductCreated::TYPE => None,
            t if t == ProductUpdated::TYPE || t == PriceChanged::TYPE => {
                Uuid::parse_str(&event.envelope.aggregate_id).ok()
            }
            _ => return,
        };
        // Retried until Redis takes it: this is what repairs entries a
        // writer could not invalidate while Redis was unreachable.
        let mut backoff = Duration::from_millis(200);
        while !self.cache.invalidate(product).await {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.shutdown.wait() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        metrics::counter!("catalog_cache_invalidations_total", "source" => "event").increment(1);
    }
}
