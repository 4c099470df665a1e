//! gRPC plumbing shared by servers and clients: the server span (with the
//! caller's trace context as parent), client-side trace propagation, lazy
//! channels, and mapping internal errors to statuses without leaking them.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// A point in time as the protos carry it.
pub fn timestamp(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

/// Span for one inbound RPC; used as tonic's `trace_fn`.
pub fn server_span(req: &http::Request<()>) -> tracing::Span {
    let (service, method) = crate::metrics::split_grpc_path(req.uri().path());
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let span = tracing::info_span!(
        "grpc.server",
        otel.name = %format!("{service}/{method}"),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        request_id = %request_id,
        trace_id = tracing::field::Empty,
    );
    crate::telemetry::adopt_remote_parent(&span, &crate::telemetry::HeaderCarrier(req.headers()));
    span
}

/// Client interceptor that forwards the current trace context.
#[derive(Clone, Copy, Debug, Default)]
pub struct TracePropagation;

impl tonic::service::Interceptor for TracePropagation {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        crate::telemetry::inject_grpc(req.metadata_mut());
        Ok(req)
    }
}

/// A lazily-connecting channel to another service (`http://host:port`).
pub fn channel(uri: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(uri.to_owned())?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .connect_lazy())
}

/// `InvalidArgument` naming the offending field (as a google.rpc.BadRequest
/// detail the gateway turns into JSON).
pub fn invalid_argument(field: &str, description: impl Into<String>) -> Status {
    let description = description.into();
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {description}"),
        ErrorDetails::with_bad_request_violation(field, description),
    )
}

/// Refuses a call the service is too busy to take now: `Unavailable` (the
/// client may retry) with a `RetryInfo` saying when, which the gateway
/// turns into `Retry-After`.
pub fn busy(message: impl Into<String>, retry_after: Duration) -> Status {
    Status::with_error_details(Code::Unavailable, message, ErrorDetails::with_retry_info(Some(retry_after)))
}

/// Logs an unexpected error with its detail and returns an opaque `Internal`.
pub fn internal(context: &str, error: impl std::fmt::Display) -> Status {
    tracing::error!(error = %error, "{context}");
    Status::internal("internal error")
}

/// Maps a database error: unavailable pools become `Unavailable` (retryable),
/// everything else an opaque `Internal`.
pub fn db_error(error: sqlx::Error) -> Status {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
            tracing::error!(error = %error, "database unavailable");
            Status::unavailable("database unavailable")
        }
        other => internal("database error", other),
    }
}

/// The request id of an inbound call, if the caller sent one.
pub fn request_id<T>(req: &tonic::Request<T>) -> Option<&str> {
    req.metadata().get("x-request-id").and_then(|v| v.to_str().ok())
}

/// Parses the gRPC `TimeoutValue TimeoutUnit` format: at most 8 digits and
/// one of `H M S m u n`.
pub fn parse_grpc_timeout(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.len() < 2 {
        return None;
    }
    let (digits, unit) = s.split_at(s.len() - 1);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("500m"), Some(Duration::from_millis(500)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1M"), Some(Duration::from_secs(60)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("250u"), Some(Duration::from_micros(250)));
        assert_eq!(parse_grpc_timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "5", "5s", "123456789S", "-1S", "1.5S", " S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
