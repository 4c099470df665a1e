//! What a customer is told, pure: the message for each saga outcome (money
//! is written the platform's way, e.g. "USD 12.34").

use shopmesh_platform::money::Money;

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
    Confirmed { order_id: String, total: Option<Money> },
    Cancelled { order_id: String, cause: CancelCause },
    Refunded { order_id: String, amount: Option<Money> },
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

#[cfg(test)]
mod tests {
    use shopmesh_platform::money::Currency;

    use super::*;

    fn money(currency: &str, minor: i64) -> Money {
        Money::new(Currency::parse(currency).unwrap(), minor)
    }

    fn amount(currency: &str, minor: i64) -> String {
        money(currency, minor).to_string()
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
        let m = compose(Occurrence::Confirmed { order_id: "o-1".into(), total: Some(money("USD", 1999)) });
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
        let m = compose(Occurrence::Refunded { order_id: "o-1".into(), amount: Some(money("USD", 1234)) });
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
}
