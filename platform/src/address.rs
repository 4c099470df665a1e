//! Postal address rules shared by the address book (user) and checkout
//! (order): one definition of what a shippable address is.

use tonic::Status;

use crate::grpc::invalid_argument;
use crate::pb::common::v1::PostalAddress;

fn text(value: &str, field: &str, min: usize, max: usize) -> Result<String, Status> {
    let v = value.trim();
    let n = v.chars().count();
    if n < min {
        return Err(invalid_argument(field, "is required"));
    }
    if n > max {
        return Err(invalid_argument(field, format!("must be at most {max} characters")));
    }
    if v.chars().any(char::is_control) {
        return Err(invalid_argument(field, "must not contain control characters"));
    }
    Ok(v.to_owned())
}

/// "+" then 7–15 digits, not starting with 0 (E.164); empty means none.
pub fn valid_phone(phone: &str) -> bool {
    phone.is_empty()
        || phone.strip_prefix('+').is_some_and(|d| {
            (7..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0')
        })
}

/// Validates and normalises (trims, upper-cases the country) an address;
/// errors name the field as `<prefix>.<field>`.
pub fn validate(address: &PostalAddress, prefix: &str) -> Result<PostalAddress, Status> {
    let f = |name: &str| format!("{prefix}.{name}");
    let country = address.country_code.trim().to_ascii_uppercase();
    if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(invalid_argument(&f("country_code"), "must be an ISO 3166-1 alpha-2 code like \"DE\""));
    }
    let postal_code = text(&address.postal_code, &f("postal_code"), 1, 20)?;
    if !postal_code.chars().all(|c| c.is_ascii_alphanumeric() || c == ' ' || c == '-') {
        return Err(invalid_argument(&f("postal_code"), "may contain only letters, digits, spaces and dashes"));
    }
    let phone = address.phone.trim().to_owned();
    if !valid_phone(&phone) {
        return Err(invalid_argument(&f("phone"), "must be + followed by 7 to 15 digits"));
    }
    Ok(PostalAddress {
        recipient_name: text(&address.recipient_name, &f("recipient_name"), 1, 200)?,
        line1: text(&address.line1, &f("line1"), 1, 200)?,
        line2: text(&address.line2, &f("line2"), 0, 200)?,
        city: text(&address.city, &f("city"), 1, 100)?,
        region: text(&address.region, &f("region"), 0, 100)?,
        postal_code,
        country_code: country,
        phone,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> PostalAddress {
        PostalAddress {
            recipient_name: " Ada Lovelace ".into(),
            line1: "1 Analytical St".into(),
            city: "London".into(),
            postal_code: "N1 9GU".into(),
            country_code: "gb".into(),
            ..Default::default()
        }
    }

    #[test]
    fn normalises_a_valid_address() {
        let a = validate(&good(), "shipping_address").unwrap();
        assert_eq!(a.recipient_name, "Ada Lovelace");
        assert_eq!(a.country_code, "GB");
    }

    #[test]
    fn names_the_offending_field() {
        let mut a = good();
        a.city = "  ".into();
        let err = validate(&a, "address.postal_address").unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().starts_with("address.postal_address.city"), "{}", err.message());
        let mut a = good();
        a.country_code = "GBR".into();
        assert!(validate(&a, "x").unwrap_err().message().starts_with("x.country_code"));
        let mut a = good();
        a.phone = "12345".into();
        assert!(validate(&a, "x").unwrap_err().message().starts_with("x.phone"));
    }

    #[test]
    fn phone_rules() {
        assert!(valid_phone(""));
        assert!(valid_phone("+4915112345678"));
        assert!(!valid_phone("4915112345678"));
        assert!(!valid_phone("+12"));
        assert!(!valid_phone("+49 151"));
        assert!(!valid_phone("+0123456789"), "no country code starts with 0");
    }
}
