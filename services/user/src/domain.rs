//! Profile and address-book rules: what a valid name, phone and postal
//! address are, and how an update mask selects what changes. Pure.

use shopmesh_platform::pb::common::v1::PostalAddress;
use tonic::Status;

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

pub const MAX_NAME_CHARS: usize = 200;
/// A user's address book is capped so one account can't grow it unbounded.
pub const MAX_ADDRESSES: i64 = 20;

/// Trimmed text of at most `max` characters, without control characters;
/// empty allowed only when not `required`.
fn text(field: &str, raw: &str, max: usize, required: bool) -> Result<String, Invalid> {
    let v = raw.trim();
    if required && v.is_empty() {
        return Err(Invalid::new(field, "is required"));
    }
    if v.chars().count() > max {
        return Err(Invalid::new(field, format!("must be at most {max} characters")));
    }
    if v.chars().any(char::is_control) {
        return Err(Invalid::new(field, "must not contain control characters"));
    }
    Ok(v.to_owned())
}

/// A display name: trimmed, non-empty, at most 200 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(field: &str, raw: &str) -> Result<Self, Invalid> {
        text(field, raw, MAX_NAME_CHARS, true).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A phone number in E.164 shape (`+` then 7–15 digits), or empty for none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phone(String);

impl Phone {
    pub fn parse(field: &str, raw: &str) -> Result<Self, Invalid> {
        let v = raw.trim();
        if v.is_empty() {
            return Ok(Self(String::new()));
        }
        if shopmesh_platform::address::valid_phone(v) {
            Ok(Self(v.to_owned()))
        } else {
            Err(Invalid::new(field, "must be in E.164 format: + and 7 to 15 digits, e.g. +4930123456"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What UpdateMe changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileUpdate {
    pub name: Option<DisplayName>,
    /// `Some` of an empty phone clears it.
    pub phone: Option<Phone>,
}

pub const UPDATABLE_PATHS: &[&str] = &["name", "phone"];

impl ProfileUpdate {
    /// Field-mask semantics: only the named paths are read (and validated)
    /// from the submitted profile; every other submitted value is ignored.
    pub fn from_mask(paths: &[String], name: &str, phone: &str) -> Result<Self, Invalid> {
        if paths.is_empty() {
            return Err(Invalid::new(
                "update_mask",
                format!("must name at least one of: {}", UPDATABLE_PATHS.join(", ")),
            ));
        }
        let mut update = Self::default();
        for path in paths {
            match path.trim() {
                "name" => update.name = Some(DisplayName::parse("profile.name", name)?),
                "phone" => update.phone = Some(Phone::parse("profile.phone", phone)?),
                other => {
                    return Err(Invalid::new(
                        "update_mask",
                        format!("unknown path {other:?}; updatable: {}", UPDATABLE_PATHS.join(", ")),
                    ));
                }
            }
        }
        Ok(update)
    }
}

/// A validated address to add to the caller's book.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAddress {
    pub label: String,
    /// Checked and normalised by the platform's one definition of a
    /// shippable address (the same rules checkout applies).
    pub postal: PostalAddress,
    /// Asked to become the default (the first address always does).
    pub make_default: bool,
}

impl NewAddress {
    /// `prefix` is the request path of the postal address, used in field names.
    pub fn parse(
        label: &str,
        postal: &PostalAddress,
        make_default: bool,
        label_field: &str,
        prefix: &str,
    ) -> Result<Self, Status> {
        let label = text(label_field, label, 50, false)
            .map_err(|e| shopmesh_platform::grpc::invalid_argument(&e.field, e.reason))?;
        Ok(Self { label, postal: shopmesh_platform::address::validate(postal, prefix)?, make_default })
    }

    /// Whether the new address is the default, given how many the user has.
    pub fn becomes_default(&self, existing: i64) -> bool {
        existing == 0 || self.make_default
    }
}

/// Why an address can't be added now.
pub fn check_capacity(existing: i64) -> Result<(), String> {
    if existing >= MAX_ADDRESSES {
        Err(format!("address book is full ({MAX_ADDRESSES} addresses); delete one first"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn phone_accepts_e164_or_empty() {
        assert_eq!(Phone::parse("phone", " +4930123456 ").unwrap().as_str(), "+4930123456");
        assert_eq!(Phone::parse("phone", "").unwrap().as_str(), "");
        assert!(Phone::parse("phone", "+1234567").is_ok());
        assert!(Phone::parse("phone", "+123456789012345").is_ok());
        for bad in
            ["4930123456", "+123456", "+1234567890123456", "+49 30 123456", "+49-30", "+0123456789", "++491234567"]
        {
            assert_eq!(Phone::parse("phone", bad).unwrap_err().field, "phone", "{bad:?}");
        }
    }

    #[test]
    fn mask_selects_only_named_fields() {
        let u = ProfileUpdate::from_mask(&paths(&["name"]), " Ada ", "garbage").unwrap();
        assert_eq!(u.name.unwrap().as_str(), "Ada");
        assert_eq!(u.phone, None, "phone is not in the mask, so its value is ignored");

        let u = ProfileUpdate::from_mask(&paths(&["phone"]), "", "+4930123456").unwrap();
        assert_eq!(u.name, None);
        assert_eq!(u.phone.unwrap().as_str(), "+4930123456");

        let u = ProfileUpdate::from_mask(&paths(&["phone", "name"]), "Ada", "").unwrap();
        assert_eq!(u.phone.unwrap().as_str(), "", "empty phone in the mask clears it");
        assert!(u.name.is_some());
    }

    #[test]
    fn mask_errors_name_the_field() {
        assert_eq!(ProfileUpdate::from_mask(&[], "Ada", "").unwrap_err().field, "update_mask");
        let e = ProfileUpdate::from_mask(&paths(&["name", "email"]), "Ada", "").unwrap_err();
        assert_eq!(e.field, "update_mask");
        assert!(e.reason.contains("email"));
        assert_eq!(ProfileUpdate::from_mask(&paths(&["name"]), "  ", "").unwrap_err().field, "profile.name");
        assert_eq!(
            ProfileUpdate::from_mask(&paths(&["name"]), &"x".repeat(201), "").unwrap_err().field,
            "profile.name"
        );
        assert_eq!(ProfileUpdate::from_mask(&paths(&["phone"]), "", "12345").unwrap_err().field, "profile.phone");
    }

    fn postal() -> PostalAddress {
        PostalAddress {
            recipient_name: "Ada Lovelace".into(),
            line1: "Unter den Linden 1".into(),
            city: "Berlin".into(),
            postal_code: "10117".into(),
            country_code: "DE".into(),
            ..PostalAddress::default()
        }
    }

    fn parse(label: &str, p: PostalAddress) -> Result<NewAddress, Status> {
        NewAddress::parse(label, &p, false, "address.label", "address.postal_address")
    }

    fn field_of(e: Status) -> String {
        e.message().split(':').next().unwrap_or_default().to_owned()
    }

    #[test]
    fn valid_address_is_trimmed_and_normalised() {
        let a =
            parse("home", PostalAddress { city: "  Berlin ".into(), country_code: "de".into(), ..postal() }).unwrap();
        assert_eq!(a.postal.city, "Berlin");
        assert_eq!(a.postal.country_code, "DE");
        assert_eq!(a.postal.phone, "");
    }

    #[test]
    fn address_requires_its_fields() {
        type Breaker = fn(&mut PostalAddress);
        let cases: [(&str, Breaker); 5] = [
            ("recipient_name", |r| r.recipient_name.clear()),
            ("line1", |r| r.line1 = "  ".into()),
            ("city", |r| r.city.clear()),
            ("postal_code", |r| r.postal_code.clear()),
            ("country_code", |r| r.country_code.clear()),
        ];
        for (field, break_it) in cases {
            let mut p = postal();
            break_it(&mut p);
            assert_eq!(field_of(parse("home", p).unwrap_err()), format!("address.postal_address.{field}"));
        }
    }

    #[test]
    fn country_code_is_two_letters() {
        for bad in ["DEU", "D", "D1", "Dé"] {
            assert!(parse("home", PostalAddress { country_code: bad.into(), ..postal() }).is_err(), "{bad:?}");
        }
        assert!(parse("home", PostalAddress { country_code: "US".into(), ..postal() }).is_ok());
    }

    #[test]
    fn address_lengths_and_phone_are_checked() {
        let e = parse("home", PostalAddress { postal_code: "1".repeat(21), ..postal() }).unwrap_err();
        assert_eq!(field_of(e), "address.postal_address.postal_code");
        let e = parse(&"l".repeat(51), postal()).unwrap_err();
        assert_eq!(field_of(e), "address.label");
        let e = parse("home", PostalAddress { phone: "030 123".into(), ..postal() }).unwrap_err();
        assert_eq!(field_of(e), "address.postal_address.phone");
    }

    #[test]
    fn first_address_becomes_default_and_book_is_capped() {
        let a = parse("home", postal()).unwrap();
        assert!(a.becomes_default(0));
        assert!(!a.becomes_default(3));
        let wants_default = NewAddress::parse("w", &postal(), true, "address.label", "address.postal_address").unwrap();
        assert!(wants_default.becomes_default(3));
        assert!(check_capacity(19).is_ok());
        assert!(check_capacity(20).is_err());
    }
}
