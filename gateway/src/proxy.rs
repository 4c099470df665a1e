//! The one handler behind every transcoded route: match, authenticate,
//! rate-limit, build the request, call upstream, render.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tonic::Code;

use crate::Shared;
use crate::edge_auth::{AuthOutcome, AuthRejection, authenticate, is_public_method};
use crate::errors::ApiError;
use crate::middleware::RouteLabel;
use crate::ratelimit::{Bucket, Decision, client_ip};
use crate::routes::LookupError;
use crate::transcode::{build_request, render_response};
use crate::upstream::{effective_timeout, forward_metadata};

pub async fn handle(State(gw): State<Arc<Shared>>, req: Request) -> Response {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let (parts, body) = req.into_parts();
    let lookup = gw.table.lookup(parts.method.as_str(), parts.uri.path());
    let (route, public) = match &lookup {
        Ok((tpl, binding, _)) => (tpl.as_str().to_owned(), is_public_method(binding.method.full_name())),
        // Unmatched paths are answered without a token: a 404 leaks nothing.
        Err(_) => ("unmatched".to_owned(), true),
    };
    let outcome = authenticate(gw.auth.as_ref(), &parts.headers, public).await;
    let user_id = match &outcome {
        AuthOutcome::Authenticated(p) => Some(p.user_id.clone()),
        _ => None,
    };
    let label = RouteLabel { route: route.clone(), user_id: user_id.clone() };

    // Rate limiting comes before 401/404 so token guessing and scanning are
    // limited too.
    let mut decision = None;
    if gw.limiter.config().enabled {
        let ip = client_ip(peer, &parts.headers, gw.trust_forwarded_for);
        let limits = gw.limiter.config();
        let (bucket, id) = if limits.login_routes.contains(&route) {
            (Bucket::Login, ip)
        } else if limits.signup_routes.contains(&route) {
            (Bucket::Signup, ip)
        } else if let Some(uid) = &user_id {
            (Bucket::User, uid.clone())
        } else {
            (Bucket::Anonymous, ip)
        };
        let d = gw.limiter.check(bucket, &id).await;
        if !d.allowed {
            let e = ApiError::new(Code::ResourceExhausted, "rate limit exceeded, retry later");
            return finish(e.into_response(), Some(d), label);
        }
        decision = Some(d);
    }

    let result = async {
        let (_, binding, vars) = lookup.map_err(|e| match e {
            LookupError::NotFound => ApiError::not_found(),
            LookupError::MethodNotAllowed { allowed } => ApiError::method_not_allowed(&allowed),
        })?;
        match &outcome {
            AuthOutcome::Rejected(AuthRejection::Invalid(reason)) => {
                return Err(ApiError::unauthenticated(reason.clone()));
            }
            AuthOutcome::Rejected(e @ AuthRejection::Unavailable(_)) => {
                return Err(ApiError::new(Code::Unavailable, e.to_string()));
            }
            _ => {}
        }
        let body = read_body(&parts.headers, body, gw.body_limit).await?;
        let request =
            build_request(binding, &vars, parts.uri.query(), &body).map_err(|e| ApiError::bad_request(e.0))?;
        let timeout = effective_timeout(&parts.headers, gw.default_timeout);
        let mut metadata = forward_metadata(&parts.headers);
        if outcome == AuthOutcome::Anonymous {
            // A token the edge chose not to trust (stale, on a public route)
            // would make the service refuse the call.
            metadata.remove("authorization");
        }
        let reply = gw
            .upstreams
            .unary(&binding.method, request, metadata, timeout)
            .await
            .map_err(|s| ApiError::from_status(&s, &gw.pool))?;
        let json = render_response(binding, &reply)
            .map_err(|e| ApiError::new(Code::Internal, format!("rendering response: {e}")))?;
        Ok::<_, ApiError>(json)
    }
    .await;

    let resp = match result {
        Ok(json) => {
            let mut resp = (StatusCode::OK, json).into_response();
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        Err(e) => {
            if e.status().is_server_error() {
                tracing::warn!(route = %route, code = ?e.code, message = %e.message, "request failed");
            }
            e.into_response()
        }
    };
    finish(resp, decision, label)
}

fn finish(mut resp: Response, decision: Option<Decision>, label: RouteLabel) -> Response {
    if let Some(d) = decision {
        for (name, value) in d.headers() {
            resp.headers_mut().insert(name, value);
        }
    }
    resp.extensions_mut().insert(label);
    resp
}

/// Reads the body up to `limit` bytes; larger is 413 before and after
/// trusting `Content-Length`.
async fn read_body(
    headers: &http::HeaderMap,
    mut body: axum::body::Body,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        discard_rest(body).await;
        return Err(ApiError::payload_too_large(limit));
    }
    match Limited::new(&mut body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            discard_rest(body).await;
            Err(ApiError::payload_too_large(limit))
        }
        Err(e) => Err(ApiError::bad_request(format!("reading request body: {e}"))),
    }
}

/// Of a body over the limit, how much more is read and dropped before the
/// 413 goes out, and for how long at most.
const DISCARD_MAX_BYTES: u64 = 8 * 1024 * 1024;
const DISCARD_MAX_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads and drops what the client is still sending. Answering first would
/// close the connection under a client that is still writing: it sees a
/// broken pipe or a reset instead of the 413. Past the bounds it gets that.
async fn discard_rest(mut body: axum::body::Body) {
    let drain = async {
        let mut read = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |d| d.len() as u64);
            if read > DISCARD_MAX_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DISCARD_MAX_TIME, drain).await;
}
