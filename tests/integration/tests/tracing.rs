//! One checkout is ONE trace: the gateway's span → the order's gRPC span →
//! the outbox publish → the inventory consumer → publish → the payment
//! consumer → publish → the order consumer confirming, linked through W3C
//! `traceparent` in gRPC metadata and Kafka headers. Spans are collected in
//! process with the OpenTelemetry SDK's in-memory exporter.

use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use shopmesh_integration_tests::shop::Shop;
use shopmesh_integration_tests::{SAGA_CONSUMERS, install_telemetry};

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string())
}

/// The one span of `trace` that `pick` selects; fails listing the trace otherwise.
fn one<'a>(spans: &'a [SpanData], trace: TraceId, what: &str, pick: impl Fn(&SpanData) -> bool) -> &'a SpanData {
    let found: Vec<&SpanData> = spans.iter().filter(|s| s.span_context.trace_id() == trace && pick(s)).collect();
    assert_eq!(
        found.len(),
        1,
        "{what}: expected one span in trace {trace}, found {}; the trace has: {:#?}",
        found.len(),
        spans
            .iter()
            .filter(|s| s.span_context.trace_id() == trace)
            .map(|s| (s.name.to_string(), attr(s, "event_type"), attr(s, "consumer")))
            .collect::<Vec<_>>()
    );
    found[0]
}

fn assert_child(child: &SpanData, parent: &SpanData, what: &str) {
    assert_ne!(parent.span_context.span_id(), SpanId::INVALID);
    assert_eq!(
        child.parent_span_id,
        parent.span_context.span_id(),
        "{what}: {} should be a child of {}",
        child.name,
        parent.name
    );
}

fn publish<'a>(spans: &'a [SpanData], trace: TraceId, event: &str) -> &'a SpanData {
    let ty = format!("shopmesh.events.v1.{event}");
    one(spans, trace, &format!("publish {event}"), |s| {
        s.span_kind == SpanKind::Producer && attr(s, "event_type").as_deref() == Some(ty.as_str())
    })
}

fn consume<'a>(spans: &'a [SpanData], trace: TraceId, consumer: &str, event: &str) -> &'a SpanData {
    let ty = format!("shopmesh.events.v1.{event}");
    one(spans, trace, &format!("{consumer} consumes {event}"), |s| {
        s.span_kind == SpanKind::Consumer
            && attr(s, "consumer").as_deref() == Some(consumer)
            && attr(s, "event_type").as_deref() == Some(ty.as_str())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_checkout_is_one_trace_from_the_gateway_through_kafka_to_confirmation() {
    let exporter = InMemorySpanExporter::default();
    let collector = exporter.clone();
    install_telemetry(move |b| b.with_simple_exporter(collector));

    let shop = Shop::start(|_| {}, true).await;
    let lamp = shop.product("TRACE-1", 2500, 5).await;
    let ann = shop.customer("ann@trace.test").await;
    shop.add_to_cart(&ann, &lamp, 1).await;
    let id = shop.checkout(&ann, "tok_visa").await["id"].as_str().unwrap().to_owned();
    assert_eq!(shop.final_order(&ann, &id).await["status"], "ORDER_STATUS_CONFIRMED");
    shop.env.wait_consumers_caught_up(SAGA_CONSUMERS, shopmesh_integration_tests::shop::SAGA).await;

    let spans = exporter.get_finished_spans().unwrap();
    let gateway = spans
        .iter()
        .find(|s| {
            s.span_kind == SpanKind::Server
                && attr(s, "http.route").as_deref() == Some("/v1/orders")
                && attr(s, "http.request.method").as_deref() == Some("POST")
        })
        .unwrap_or_else(|| {
            let servers: Vec<_> =
                spans.iter().filter(|s| s.span_kind == SpanKind::Server).map(|s| s.name.to_string()).collect();
            panic!("no gateway span for the checkout among server spans {servers:?}")
        });
    let trace = gateway.span_context.trace_id();

    let create = one(&spans, trace, "CreateOrder", |s| s.name == "shopmesh.order.v1.OrderService/CreateOrder");
    assert_child(create, gateway, "gateway → order over gRPC");
    let created = publish(&spans, trace, "OrderCreated");
    assert_child(created, create, "order's transaction → outbox publish");
    let reserve = consume(&spans, trace, "inventory", "OrderCreated");
    assert_child(reserve, created, "publish → inventory over Kafka");
    let reserved = publish(&spans, trace, "StockReserved");
    assert_child(reserved, reserve, "inventory → outbox publish");
    let charge = consume(&spans, trace, "payment", "StockReserved");
    assert_child(charge, reserved, "publish → payment over Kafka");
    let captured = publish(&spans, trace, "PaymentCaptured");
    assert_child(captured, charge, "payment → outbox publish");
    let confirm = consume(&spans, trace, "order", "PaymentCaptured");
    assert_child(confirm, captured, "publish → order over Kafka");
    let confirmed = publish(&spans, trace, "OrderConfirmed");
    assert_child(confirmed, confirm, "order confirm → outbox publish");
    // The rest of the saga hangs off the same trace too.
    assert_child(consume(&spans, trace, "inventory", "OrderConfirmed"), confirmed, "commit stock");
    assert_child(consume(&spans, trace, "cart", "OrderConfirmed"), confirmed, "clear cart");
    assert_child(consume(&spans, trace, "notification", "OrderConfirmed"), confirmed, "notify");
}
