//! Logs and traces. JSON logs carry the span fields (request id, trace id);
//! spans are OpenTelemetry spans, exported over OTLP/HTTP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set. W3C trace context crosses process
//! boundaries through HTTP headers, gRPC metadata and Kafka headers.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, global};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, TracerProviderBuilder};
use rdkafka::message::{Headers, OwnedHeaders};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Keeps the tracer provider alive; flushes pending spans when dropped.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.provider.force_flush();
        let _ = self.provider.shutdown();
    }
}

/// Installs the global subscriber and propagator. Spans always get real
/// trace ids (so context propagates even without a collector); they are
/// exported only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
/// `SHOPMESH_LOG_FORMAT=pretty` switches JSON logs to human-readable ones.
pub fn init(service_name: &str) -> anyhow::Result<TelemetryGuard> {
    let exporter = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => Some(opentelemetry_otlp::SpanExporter::builder().with_http().build()?),
        _ => None,
    };
    Ok(init_with(service_name, |builder| match exporter {
        Some(e) => builder.with_batch_exporter(e),
        None => builder,
    }))
}

/// As [`init`], letting the caller add exporters (tests add an in-memory
/// one). A second call in the same process keeps the first subscriber.
pub fn init_with(
    service_name: &str,
    configure: impl FnOnce(TracerProviderBuilder) -> TracerProviderBuilder,
) -> TelemetryGuard {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service_name.to_owned()).build();
    let builder = configure(SdkTracerProvider::builder().with_resource(resource));
    let provider = builder.build();
    global::set_tracer_provider(provider.clone());
    let tracer = provider.tracer("shopmesh");

    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,rdkafka=warn,tower_http=warn,h2=warn,hyper=warn"));
    let fmt = if std::env::var("SHOPMESH_LOG_FORMAT").as_deref() == Ok("pretty") {
        tracing_subscriber::fmt::layer().with_target(false).boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed()
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init();
    TelemetryGuard { provider }
}

/// The W3C trace id of the current span, or empty when there is none.
pub fn current_trace_id() -> String {
    let cx = Span::current().context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() { sc.trace_id().to_string() } else { String::new() }
}

/// Makes `span` a child of the remote context carried in `carrier`, and
/// records its trace id as a log field.
pub fn adopt_remote_parent(span: &Span, carrier: &dyn Extractor) {
    let parent = global::get_text_map_propagator(|p| p.extract(carrier));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    let sc = span.context().span().span_context().clone();
    if sc.is_valid() {
        span.record("trace_id", sc.trace_id().to_string());
    }
}

/// The current span's W3C headers (`traceparent`, `tracestate`).
pub fn current_trace_headers() -> HashMap<String, String> {
    trace_headers_of(&Span::current())
}

/// W3C headers naming `span` as the parent.
pub fn trace_headers_of(span: &Span) -> HashMap<String, String> {
    let mut map = HashMap::new();
    let cx = span.context();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut map));
    map
}

fn inject(carrier: &mut dyn Injector) {
    let cx = Span::current().context();
    global::get_text_map_propagator(|p| p.inject_context(&cx, carrier));
}

/// Carrier over an HTTP header map (also gRPC metadata via `into_headers`).
pub struct HeaderCarrier<'a>(pub &'a http::HeaderMap);

impl Extractor for HeaderCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(val)) = (http::HeaderName::try_from(key), http::HeaderValue::try_from(value)) {
            self.0.insert(name, val);
        }
    }
}

/// Writes the current trace context into outgoing HTTP headers.
pub fn inject_http(headers: &mut http::HeaderMap) {
    inject(&mut HeaderInjector(headers));
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// Writes the current trace context into outgoing gRPC metadata.
pub fn inject_grpc(metadata: &mut tonic::metadata::MetadataMap) {
    inject(&mut MetadataInjector(metadata));
}

/// A string map carrier (event envelopes keep traceparent as a field).
pub struct MapCarrier<'a>(pub &'a HashMap<String, String>);

impl Extractor for MapCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The W3C headers carried by a Kafka record.
pub fn kafka_trace_headers(headers: &impl Headers) -> HashMap<String, String> {
    let read = || {
        headers
            .iter()
            .filter(|h| h.key == "traceparent" || h.key == "tracestate")
            .filter_map(|h| Some((h.key.to_owned(), std::str::from_utf8(h.value?).ok()?.to_owned())))
            .collect()
    };
    // rust-rdkafka 0.39 panics on a header name that is not UTF-8, which any
    // producer can write: such a record is read without its trace instead.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).unwrap_or_else(|_| {
        tracing::warn!("a Kafka record's header name is not UTF-8; its trace context is ignored");
        HashMap::new()
    })
}

/// Adds W3C headers from a map (captured when the event was written) to a
/// Kafka record.
pub fn kafka_headers_from(map: &HashMap<String, String>, mut headers: OwnedHeaders) -> OwnedHeaders {
    for (k, v) in map {
        headers = headers.insert(rdkafka::message::Header { key: k, value: Some(v.as_bytes()) });
    }
    headers
}

/// Extracts a remote context without attaching it (for span links).
pub fn extract(carrier: &dyn Extractor) -> Context {
    global::get_text_map_propagator(|p| p.extract(carrier))
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Header, Headers};

    use super::kafka_trace_headers;

    /// Headers whose second name is not UTF-8, read the way rust-rdkafka
    /// 0.39 reads them (`CStr::to_str().unwrap()`).
    struct NonUtf8Name;

    impl Headers for NonUtf8Name {
        fn count(&self) -> usize {
            2
        }
        fn try_get(&self, idx: usize) -> Option<Header<'_, &[u8]>> {
            let name: &[u8] = if idx == 0 { b"traceparent" } else { b"\xff\xfe" };
            Some(Header { key: std::str::from_utf8(name).unwrap(), value: Some(b"00-abc-def-01".as_slice()) })
        }
    }

    #[test]
    fn a_record_with_a_header_name_that_is_not_utf8_is_read_without_its_trace() {
        assert!(kafka_trace_headers(&NonUtf8Name).is_empty());
    }
}
