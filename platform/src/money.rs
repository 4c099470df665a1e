//! Money as the domain sees it: an ISO 4217 currency and an integer amount
//! of minor units. Parsed once from protobuf at the edge; arithmetic is
//! checked, and mixing currencies is an error rather than a silent sum.

use std::fmt;

use crate::pb::common::v1 as pb;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Currency([u8; 3]);

impl Currency {
    pub fn parse(code: &str) -> Result<Self, MoneyError> {
        let bytes = code.as_bytes();
        if bytes.len() == 3 && bytes.iter().all(u8::is_ascii_uppercase) {
            Ok(Self([bytes[0], bytes[1], bytes[2]]))
        } else {
            Err(MoneyError::Currency(code.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("validated ASCII")
    }

    /// Digits after the decimal point (ISO 4217 exponent) for display.
    pub fn exponent(&self) -> u32 {
        match self.as_str() {
            // ISO 4217 minor-unit exponents other than 2.
            "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX" | "UYI" | "VND"
            | "VUV" | "XAF" | "XOF" | "XPF" => 0,
            "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
            _ => 2,
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Money {
    pub currency: Currency,
    pub amount_minor: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("currency_code {0:?} is not a 3-letter upper-case ISO 4217 code")]
    Currency(String),
    #[error("amount_minor must not be negative")]
    Negative,
    #[error("amount overflows")]
    Overflow,
    #[error("cannot combine {0} with {1}")]
    CurrencyMismatch(Currency, Currency),
    #[error("money is required")]
    Missing,
}

impl Money {
    pub fn new(currency: Currency, amount_minor: i64) -> Self {
        Self { currency, amount_minor }
    }

    pub fn zero(currency: Currency) -> Self {
        Self { currency, amount_minor: 0 }
    }

    /// A price or total: a valid currency and a non-negative amount.
    pub fn from_proto(m: &pb::Money) -> Result<Self, MoneyError> {
        let currency = Currency::parse(&m.currency_code)?;
        if m.amount_minor < 0 {
            return Err(MoneyError::Negative);
        }
        Ok(Self { currency, amount_minor: m.amount_minor })
    }

    /// Like [`Money::from_proto`] for an optional proto field.
    pub fn from_proto_opt(m: Option<&pb::Money>) -> Result<Self, MoneyError> {
        Self::from_proto(m.ok_or(MoneyError::Missing)?)
    }

    pub fn to_proto(self) -> pb::Money {
        pb::Money { currency_code: self.currency.as_str().to_owned(), amount_minor: self.amount_minor }
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        if self.currency != other.currency {
            return Err(MoneyError::CurrencyMismatch(self.currency, other.currency));
        }
        let amount_minor = self.amount_minor.checked_add(other.amount_minor).ok_or(MoneyError::Overflow)?;
        Ok(Money { currency: self.currency, amount_minor })
    }

    pub fn checked_mul(self, quantity: i64) -> Result<Money, MoneyError> {
        let amount_minor = self.amount_minor.checked_mul(quantity).ok_or(MoneyError::Overflow)?;
        Ok(Money { currency: self.currency, amount_minor })
    }

    /// Sums `items` in `currency` (an empty sum is zero in that currency).
    pub fn sum(currency: Currency, items: impl IntoIterator<Item = Money>) -> Result<Money, MoneyError> {
        items.into_iter().try_fold(Money::zero(currency), Money::checked_add)
    }
}

/// "USD 12.34", "JPY 500".
impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exp = self.currency.exponent();
        if exp == 0 {
            return write!(f, "{} {}", self.currency, self.amount_minor);
        }
        let scale = 10i64.pow(exp);
        let sign = if self.amount_minor < 0 { "-" } else { "" };
        let abs = self.amount_minor.unsigned_abs();
        let (whole, frac) = (abs / scale as u64, abs % scale as u64);
        write!(f, "{} {sign}{whole}.{frac:0width$}", self.currency, width = exp as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(n: i64) -> Money {
        Money::new(Currency::parse("USD").unwrap(), n)
    }

    #[test]
    fn parses_and_rejects_currencies() {
        assert!(Currency::parse("EUR").is_ok());
        for bad in ["usd", "US", "USDX", "", "U$D"] {
            assert!(Currency::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn proto_round_trip_and_negative_rejected() {
        let p = pb::Money { currency_code: "USD".into(), amount_minor: 1999 };
        assert_eq!(Money::from_proto(&p).unwrap().to_proto(), p);
        let neg = pb::Money { currency_code: "USD".into(), amount_minor: -1 };
        assert_eq!(Money::from_proto(&neg), Err(MoneyError::Negative));
        assert_eq!(Money::from_proto_opt(None), Err(MoneyError::Missing));
    }

    #[test]
    fn arithmetic_is_checked_and_currency_safe() {
        assert_eq!(usd(1999).checked_mul(3).unwrap(), usd(5997));
        assert_eq!(usd(100).checked_add(usd(1)).unwrap(), usd(101));
        let eur = Money::new(Currency::parse("EUR").unwrap(), 1);
        assert!(matches!(usd(1).checked_add(eur), Err(MoneyError::CurrencyMismatch(..))));
        assert_eq!(usd(i64::MAX).checked_add(usd(1)), Err(MoneyError::Overflow));
        assert_eq!(usd(i64::MAX / 2 + 1).checked_mul(2), Err(MoneyError::Overflow));
        let cur = Currency::parse("USD").unwrap();
        assert_eq!(Money::sum(cur, [usd(1), usd(2), usd(3)]).unwrap(), usd(6));
        assert_eq!(Money::sum(cur, []).unwrap(), usd(0));
    }

    #[test]
    fn displays_with_currency_exponent() {
        assert_eq!(usd(1234).to_string(), "USD 12.34");
        assert_eq!(usd(5).to_string(), "USD 0.05");
        assert_eq!(Money::new(Currency::parse("JPY").unwrap(), 500).to_string(), "JPY 500");
        assert_eq!(Money::new(Currency::parse("KWD").unwrap(), 1500).to_string(), "KWD 1.500");
        assert_eq!(Money::new(Currency::parse("XOF").unwrap(), 500).to_string(), "XOF 500");
        assert_eq!(Money::new(Currency::parse("HUF").unwrap(), 500).to_string(), "HUF 5.00");
    }
}
