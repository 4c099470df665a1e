//! Cursor pagination shared by every List RPC: page-size rules and opaque
//! page tokens. A token carries the keyset cursor plus a fingerprint of the
//! request's filters, so a token replayed with other filters is refused
//! instead of silently returning the wrong page.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Datelike, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tonic::Status;

use crate::pb::common::v1::PageRequest;

/// The keyset position of a newest-first listing: `(created_at, id)` of the
/// last item returned.
pub type NewestFirst = (DateTime<Utc>, uuid::Uuid);

/// The effective page size: `default` when unset, capped at `max`.
pub fn page_size(page: Option<&PageRequest>, default: u32, max: u32) -> Result<u32, Status> {
    let requested = page.map(|p| p.page_size).unwrap_or(0);
    match requested {
        n if n < 0 => Err(crate::grpc::invalid_argument("page.page_size", "must not be negative")),
        0 => Ok(default),
        n => Ok((n as u32).min(max)),
    }
}

/// A stable fingerprint of the filters a token was issued for.
pub fn fingerprint(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    URL_SAFE_NO_PAD.encode(&h.finalize()[..8])
}

#[derive(Serialize, serde::Deserialize)]
struct Envelope<T> {
    c: T,
    f: String,
}

/// Encodes the cursor of the last item returned.
pub fn encode_token<T: Serialize>(cursor: &T, filters: &str) -> String {
    let json = serde_json::to_vec(&Envelope { c: cursor, f: filters.to_owned() }).expect("cursor serialises");
    URL_SAFE_NO_PAD.encode(json)
}

/// Decodes `token` (None when empty = first page). A malformed token, or one
/// issued for other filters, is `InvalidArgument` on `page.page_token`.
pub fn decode_token<T: DeserializeOwned>(page: Option<&PageRequest>, filters: &str) -> Result<Option<T>, Status> {
    let token = page.map(|p| p.page_token.as_str()).unwrap_or("");
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || crate::grpc::invalid_argument("page.page_token", "is not a token this list issued");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let env: Envelope<T> = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if env.f != filters {
        return Err(crate::grpc::invalid_argument("page.page_token", "was issued for different filters"));
    }
    Ok(Some(env.c))
}

/// Decodes the token of a newest-first listing (see [`decode_token`]).
pub fn decode_newest_first(page: Option<&PageRequest>, filters: &str) -> Result<Option<NewestFirst>, Status> {
    let cursor = decode_token::<NewestFirst>(page, filters)?;
    if let Some((at, _)) = &cursor {
        check_cursor_time(at)?;
    }
    Ok(cursor)
}

/// Tokens are not signed, so a client can edit the time in one. Postgres
/// refuses a time outside its range with an error that would surface as a
/// 500; refuse anything no row can have been created at instead.
pub fn check_cursor_time(at: &DateTime<Utc>) -> Result<(), Status> {
    if (1..=9999).contains(&at.year()) {
        Ok(())
    } else {
        Err(crate::grpc::invalid_argument("page.page_token", "is not a token this list issued"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(size: i32, token: &str) -> PageRequest {
        PageRequest { page_size: size, page_token: token.to_owned() }
    }

    #[test]
    fn page_size_defaults_and_caps() {
        assert_eq!(page_size(None, 20, 100).unwrap(), 20);
        assert_eq!(page_size(Some(&page(0, "")), 20, 100).unwrap(), 20);
        assert_eq!(page_size(Some(&page(500, "")), 20, 100).unwrap(), 100);
        assert!(page_size(Some(&page(-1, "")), 20, 100).is_err());
    }

    #[test]
    fn token_round_trips_and_is_bound_to_filters() {
        let f = fingerprint(&["books", "10"]);
        let token = encode_token(&("2026-01-01T00:00:00Z", "id-9"), &f);
        let back: Option<(String, String)> = decode_token(Some(&page(10, &token)), &f).unwrap();
        assert_eq!(back.unwrap().1, "id-9");
        let other = fingerprint(&["toys", "10"]);
        assert!(decode_token::<(String, String)>(Some(&page(10, &token)), &other).is_err());
        assert!(decode_token::<(String, String)>(Some(&page(10, "garbage!")), &f).is_err());
        assert!(decode_token::<(String, String)>(None, &f).unwrap().is_none());
    }

    #[test]
    fn a_newest_first_token_with_an_edited_time_is_refused() {
        let f = fingerprint(&["orders"]);
        let id = uuid::Uuid::now_v7();
        let at = DateTime::from_timestamp_micros(1_700_000_000_000_001).unwrap();
        let token = encode_token(&(at, id), &f);
        assert_eq!(decode_newest_first(Some(&page(10, &token)), &f).unwrap(), Some((at, id)));
        for edited in ["-10000-01-01T00:00:00Z", "+20000-01-01T00:00:00Z", "0000-12-31T23:59:59Z"] {
            let token = encode_token(&(edited, id), &f);
            let err = decode_newest_first(Some(&page(10, &token)), &f).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{edited}");
        }
    }

    #[test]
    fn fingerprint_separates_parts() {
        assert_ne!(fingerprint(&["ab", "c"]), fingerprint(&["a", "bc"]));
    }
}
