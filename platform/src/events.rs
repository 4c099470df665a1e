//! Domain events: which topic each payload goes to, which aggregate keys it,
//! and the envelope that carries it.

use std::collections::HashMap;

use prost::Message;
use uuid::Uuid;

use crate::kafka::topics;
use crate::pb::events::v1 as ev;

/// A payload of `shopmesh.events.v1` with its routing.
pub trait DomainEvent: Message + Default + Sized {
    /// Fully-qualified proto name; the envelope's `type`.
    const TYPE: &'static str;
    /// Logical topic (before the deployment's prefix).
    const TOPIC: &'static str;
    /// Kafka key: all events of one aggregate share a partition, in order.
    fn aggregate_id(&self) -> &str;
}

macro_rules! domain_events {
    ($($name:ident => $topic:expr, $key:ident;)*) => {$(
        impl DomainEvent for ev::$name {
            const TYPE: &'static str = concat!("shopmesh.events.v1.", stringify!($name));
            const TOPIC: &'static str = $topic;
            fn aggregate_id(&self) -> &str {
                &self.$key
            }
        }
    )*};
}

domain_events! {
    UserRegistered => topics::USER, user_id;
    ProductCreated => topics::PRODUCT, product_id;
    ProductUpdated => topics::PRODUCT, product_id;
    PriceChanged => topics::PRODUCT, product_id;
    OrderCreated => topics::ORDER, order_id;
    OrderConfirmed => topics::ORDER, order_id;
    OrderCancelled => topics::ORDER, order_id;
    StockReserved => topics::INVENTORY, order_id;
    StockReservationFailed => topics::INVENTORY, order_id;
    StockReleased => topics::INVENTORY, order_id;
    StockCommitted => topics::INVENTORY, order_id;
    LowStock => topics::INVENTORY, product_id;
    PaymentCaptured => topics::PAYMENT, order_id;
    PaymentDeclined => topics::PAYMENT, order_id;
    PaymentRefunded => topics::PAYMENT, order_id;
}

/// Wraps `event` in a new envelope stamped with a UUIDv7, the current time
/// and the current span's trace context.
pub fn envelope<E: DomainEvent>(source: &str, event: &E) -> ev::EventEnvelope {
    envelope_in(source, event, &tracing::Span::current())
}

/// Like [`envelope`], with `span` as the trace parent: a handler applying
/// several consumed events at once publishes each outcome under the span of
/// the event that caused it.
pub fn envelope_in<E: DomainEvent>(source: &str, event: &E, span: &tracing::Span) -> ev::EventEnvelope {
    let trace = crate::telemetry::trace_headers_of(span);
    let now = chrono::Utc::now();
    ev::EventEnvelope {
        id: Uuid::now_v7().to_string(),
        r#type: E::TYPE.to_owned(),
        aggregate_id: event.aggregate_id().to_owned(),
        occurred_at: Some(crate::grpc::timestamp(now)),
        traceparent: trace.get("traceparent").cloned().unwrap_or_default(),
        tracestate: trace.get("tracestate").cloned().unwrap_or_default(),
        source: source.to_owned(),
        payload: event.encode_to_vec(),
    }
}

/// An event as a consumer receives it.
#[derive(Clone, Debug)]
pub struct ReceivedEvent {
    pub envelope: ev::EventEnvelope,
    pub event_id: Uuid,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum EventDecodeError {
    #[error("envelope: {0}")]
    Envelope(#[from] prost::DecodeError),
    #[error("envelope id {0:?} is not a UUID")]
    Id(String),
    #[error("expected {expected}, got {actual}")]
    WrongType { expected: &'static str, actual: String },
}

impl ReceivedEvent {
    pub fn decode_envelope(bytes: &[u8], topic: &str, partition: i32, offset: i64) -> Result<Self, EventDecodeError> {
        let envelope = ev::EventEnvelope::decode(bytes)?;
        let event_id = Uuid::parse_str(&envelope.id).map_err(|_| EventDecodeError::Id(envelope.id.clone()))?;
        Ok(Self { envelope, event_id, topic: topic.to_owned(), partition, offset })
    }

    pub fn event_type(&self) -> &str {
        &self.envelope.r#type
    }

    pub fn is<E: DomainEvent>(&self) -> bool {
        self.envelope.r#type == E::TYPE
    }

    /// Decodes the payload as `E`, checking the envelope says it is one.
    pub fn payload<E: DomainEvent>(&self) -> Result<E, EventDecodeError> {
        if !self.is::<E>() {
            return Err(EventDecodeError::WrongType { expected: E::TYPE, actual: self.envelope.r#type.clone() });
        }
        Ok(E::decode(self.envelope.payload.as_slice())?)
    }

    /// When the producer says the event happened, if it said so validly.
    pub fn occurred_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let t = self.envelope.occurred_at.as_ref()?;
        chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
    }

    /// The producer's trace context, as a carrier map.
    pub fn trace_headers(&self) -> HashMap<String, String> {
        trace_headers(&self.envelope)
    }
}

/// The trace context `envelope` carries, as a carrier map (only the fields set).
pub fn trace_headers(envelope: &ev::EventEnvelope) -> HashMap<String, String> {
    let mut m = HashMap::new();
    if !envelope.traceparent.is_empty() {
        m.insert("traceparent".to_owned(), envelope.traceparent.clone());
    }
    if !envelope.tracestate.is_empty() {
        m.insert("tracestate".to_owned(), envelope.tracestate.clone());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_payload_and_routing() {
        let created = ev::OrderCreated { order_id: "o-1".into(), user_id: "u-1".into(), ..Default::default() };
        let env = envelope("order", &created);
        assert_eq!(env.r#type, "shopmesh.events.v1.OrderCreated");
        assert_eq!(env.aggregate_id, "o-1");
        let received = ReceivedEvent::decode_envelope(&env.encode_to_vec(), "order-events", 0, 7).unwrap();
        assert!(received.is::<ev::OrderCreated>());
        assert_eq!(received.payload::<ev::OrderCreated>().unwrap(), created);
        assert!(received.payload::<ev::OrderConfirmed>().is_err());
        assert_eq!(received.event_id.get_version_num(), 7);
        let stamped = env.occurred_at.unwrap();
        let occurred = received.occurred_at().unwrap();
        assert_eq!((occurred.timestamp(), occurred.timestamp_subsec_nanos() as i32), (stamped.seconds, stamped.nanos));
    }
}
