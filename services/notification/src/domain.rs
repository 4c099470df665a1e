//! What a customer is told, pure: the message for each saga outcome, money
//! in words, and pagination cursors.

use std::fmt;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Why a value was rejected; `field` is the request field path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

/// An amount for display: "USD 12.34", "JPY 500", "KWD 1.250".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Amount {
    pub currency: String,
    pub minor: i64,
}

impl Amount {
    /// Digits after the decimal point in `currency` (ISO 4217 minor unit).
    fn exponent(currency: &str) -> u32 {
        match currency {
            "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX" | "UYI" | "VND"
            | "VUV" | "XAF" | "XOF" | "XPF" => 0,
            "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
            _ => 2,
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exp = Self::exponent(&self.currency);
        let sign = if self.minor < 0 { "-" } else { "" };
        let abs = self.minor.unsigned_abs();
        if exp == 0 {
            return write!(f, "{} {sign}{abs}", self.currency);
        }
        let unit = 10u64.pow(exp);
        write!(f, "{} {sign}{}.{:0width$}", self.currency, abs / unit, abs % unit, width = exp as usize)
    }
}

/// Why an order was cancelled, as the customer should hear it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelCause {
    OutOfStock,
    PaymentDeclined,
    Timeout,
    CustomerRequest,
    Unknown,
}

impl CancelCause {
    fn in_words(self) -> &'static str {
        match self {
            Self::OutOfStock => "some items were out of stock",
            Self::PaymentDeclined => "the payment was declined",
            Self::Timeout => "it could not be completed in time",
            Self::CustomerRequest => "you asked us to cancel it",
            Self::Unknown => "it could not be completed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    OrderConfirmed,
    OrderCancelled,
    OrderRefunded,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrderConfirmed => "ORDER_CONFIRMED",
            Self::OrderCancelled => "ORDER_CANCELLED",
            Self::OrderRefunded => "ORDER_REFUNDED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ORDER_CONFIRMED" => Some(Self::OrderConfirmed),
            "ORDER_CANCELLED" => Some(Self::OrderCancelled),
            "ORDER_REFUNDED" => Some(Self::OrderRefunded),
            _ => None,
        }
    }
}

/// Something that happened to one of the user's orders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Occurrence {
    Confirmed { order_id: String, total: Option<Amount> },
    Cancelled { order_id: String, cause: CancelCause },
    Refunded { order_id: String, amount: Option<Amount> },
}

/// A notification's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: Kind,
    pub order_id: String,
    pub title: String,
    pub body: String,
}

pub fn compose(occurrence: Occurrence) -> Message {
    match occurrence {
        Occurrence::Confirmed { order_id, total } => Message {
            kind: Kind::OrderConfirmed,
            title: "Order confirmed".into(),
            body: match total {
                Some(total) => format!("Your order {order_id} is confirmed. We charged {total}."),
                None => format!("Your order {order_id} is confirmed."),
            },
            order_id,
        },
        Occurrence::Cancelled { order_id, cause } => Message {
            kind: Kind::OrderCancelled,
            title: "Order cancelled".into(),
            body: format!("Your order {order_id} was cancelled because {}.", cause.in_words()),
            order_id,
        },
        Occurrence::Refunded { order_id, amount } => Message {
            kind: Kind::OrderRefunded,
            title: "Refund issued".into(),
            body: match amount {
                Some(amount) => format!("We refunded {amount} for your order {order_id}."),
                None => format!("We refunded the payment for your order {order_id}."),
            },
            order_id,
        },
    }
}

pub const DEFAULT_PAGE_SIZE: i64 = 20;
pub const MAX_PAGE_SIZE: i64 = 100;

/// 0 means the default; larger than the maximum is capped.
pub fn page_size(field: &str, raw: i32) -> Result<i64, Invalid> {
    match raw {
        n if n < 0 => Err(Invalid::new(field, "must not be negative")),
        0 => Ok(DEFAULT_PAGE_SIZE),
        n => Ok(i64::from(n).min(MAX_PAGE_SIZE)),
    }
}

/// Keyset position: the last row of the previous page, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

impl Cursor {
    pub fn encode(&self) -> String {
        let raw = format!("{}.{}", self.created_at.timestamp_micros(), self.id);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// Empty means the first page.
    pub fn decode(field: &str, token: &str) -> Result<Option<Self>, Invalid> {
        if token.is_empty() {
            return Ok(None);
        }
        let bad = || Invalid::new(field, "is not a token from a previous response");
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
        let raw = String::from_utf8(raw).map_err(|_| bad())?;
        let (micros, id) = raw.split_once('.').ok_or_else(bad)?;
        let created_at = DateTime::from_timestamp_micros(micros.parse().map_err(|_| bad())?).ok_or_else(bad)?;
        let id = Uuid::parse_str(id).map_err(|_| bad())?;
        Ok(Some(Self { created_at, id }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amount(currency: &str, minor: i64) -> String {
        Amount { currency: currency.into(), minor }.to_string()
    }

    #[test]
    fn money_is_formatted_from_minor_units() {
        assert_eq!(amount("USD", 1234), "USD 12.34");
        assert_eq!(amount("USD", 5), "USD 0.05");
        assert_eq!(amount("USD", 100), "USD 1.00");
        assert_eq!(amount("EUR", 0), "EUR 0.00");
        assert_eq!(amount("USD", -1234), "USD -12.34");
        assert_eq!(amount("JPY", 500), "JPY 500");
        assert_eq!(amount("KWD", 1250), "KWD 1.250");
        assert_eq!(amount("USD", i64::MIN), "USD -92233720368547758.08");
    }

    #[test]
    fn confirmation_names_order_and_total() {
        let m = compose(Occurrence::Confirmed {
            order_id: "o-1".into(),
            total: Some(Amount { currency: "USD".into(), minor: 1999 }),
        });
        assert_eq!((m.kind, m.title.as_str()), (Kind::OrderConfirmed, "Order confirmed"));
        assert_eq!(m.body, "Your order o-1 is confirmed. We charged USD 19.99.");
        assert_eq!(m.order_id, "o-1");
    }

    #[test]
    fn cancellation_gives_the_reason_in_words() {
        let m = compose(Occurrence::Cancelled { order_id: "o-1".into(), cause: CancelCause::OutOfStock });
        assert_eq!((m.kind, m.title.as_str()), (Kind::OrderCancelled, "Order cancelled"));
        assert_eq!(m.body, "Your order o-1 was cancelled because some items were out of stock.");
        let timeout = compose(Occurrence::Cancelled { order_id: "o-2".into(), cause: CancelCause::Timeout });
        assert!(timeout.body.ends_with("because it could not be completed in time."), "{}", timeout.body);
    }

    #[test]
    fn refund_formats_the_amount() {
        let m = compose(Occurrence::Refunded {
            order_id: "o-1".into(),
            amount: Some(Amount { currency: "USD".into(), minor: 1234 }),
        });
        assert_eq!((m.kind, m.title.as_str()), (Kind::OrderRefunded, "Refund issued"));
        assert_eq!(m.body, "We refunded USD 12.34 for your order o-1.");
    }

    #[test]
    fn kind_round_trips_through_its_column_value() {
        for k in [Kind::OrderConfirmed, Kind::OrderCancelled, Kind::OrderRefunded] {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
        assert_eq!(Kind::parse("OTHER"), None);
    }

    #[test]
    fn page_size_defaults_and_caps() {
        assert_eq!(page_size("page.page_size", 0), Ok(20));
        assert_eq!(page_size("page.page_size", 250), Ok(100));
        assert!(page_size("page.page_size", -3).is_err());
    }

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c =
            Cursor { created_at: DateTime::from_timestamp_micros(1_700_000_000_000_001).unwrap(), id: Uuid::now_v7() };
        assert_eq!(Cursor::decode("page.page_token", &c.encode()), Ok(Some(c)));
        assert_eq!(Cursor::decode("page.page_token", ""), Ok(None));
        assert_eq!(Cursor::decode("page.page_token", "@@").unwrap_err().field, "page.page_token");
    }
}
