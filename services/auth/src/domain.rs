//! Identity rules: what a valid email, password and name are, roles, and
//! refresh-token material. Pure; parsing a value here is the only validation.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use shopmesh_platform::auth::{ROLE_ADMIN, ROLE_CUSTOMER};

/// Why a value was rejected; `field` is the request field it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: &'static str,
    pub reason: String,
}

impl Invalid {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self { field, reason: reason.into() }
    }
}

/// A normalised (trimmed, lower-cased) email of a plausible shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

const MAX_EMAIL_LEN: usize = 254;

impl Email {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let email = normalize_email(raw);
        if email.is_empty() {
            return Err(Invalid::new("email", "is required"));
        }
        if email.len() > MAX_EMAIL_LEN {
            return Err(Invalid::new("email", format!("must be at most {MAX_EMAIL_LEN} characters")));
        }
        let bad_shape = || Invalid::new("email", "is not a valid email address");
        let (local, domain) = email.split_once('@').ok_or_else(bad_shape)?;
        let labels_ok = domain.split('.').all(|l| !l.is_empty() && !l.starts_with('-') && !l.ends_with('-'));
        if local.is_empty()
            || local.len() > 64
            || domain.contains('@')
            || !domain.contains('.')
            || !labels_ok
            || email.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad_shape());
        }
        Ok(Self(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The lookup form of an email; login uses it without judging the shape.
pub fn normalize_email(raw: &str) -> String {
    raw.trim().to_lowercase()
}

pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_CHARS: usize = 256;

/// A password that satisfies the length policy. Debug never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let chars = raw.chars().count();
        if chars < MIN_PASSWORD_CHARS {
            return Err(Invalid::new("password", format!("must be at least {MIN_PASSWORD_CHARS} characters")));
        }
        if chars > MAX_PASSWORD_CHARS {
            return Err(Invalid::new("password", format!("must be at most {MAX_PASSWORD_CHARS} characters")));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

pub const MAX_NAME_CHARS: usize = 200;

/// A display name: trimmed, non-empty, at most 200 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let name = raw.trim();
        if name.is_empty() {
            return Err(Invalid::new("name", "is required"));
        }
        if name.chars().count() > MAX_NAME_CHARS {
            return Err(Invalid::new("name", format!("must be at most {MAX_NAME_CHARS} characters")));
        }
        if name.chars().any(char::is_control) {
            return Err(Invalid::new("name", "must not contain control characters"));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A validated registration.
#[derive(Debug, Clone)]
pub struct NewAccount {
    pub email: Email,
    pub password: Password,
    pub name: DisplayName,
}

/// What a login presents. Only emptiness and the length cap are checked:
/// a shape error would tell an attacker more than "invalid email or password".
#[derive(Debug, Clone)]
pub struct Credentials {
    pub email: String,
    pub password: Password,
}

impl Credentials {
    pub fn parse(email: &str, password: &str) -> Result<Self, Invalid> {
        let email = normalize_email(email);
        if email.is_empty() {
            return Err(Invalid::new("email", "is required"));
        }
        if password.is_empty() {
            return Err(Invalid::new("password", "is required"));
        }
        // The cap bounds hashing work; accounts can't have longer passwords anyway.
        if password.chars().count() > MAX_PASSWORD_CHARS {
            return Err(Invalid::new("password", format!("must be at most {MAX_PASSWORD_CHARS} characters")));
        }
        Ok(Self { email, password: Password(password.to_owned()) })
    }

    /// Whether an account could have this email: one that `Email::parse`
    /// would refuse (too long, control characters such as NUL, which
    /// Postgres text cannot even hold) is not looked up at all.
    pub fn could_be_registered(&self) -> bool {
        self.email.len() <= MAX_EMAIL_LEN && !self.email.chars().any(char::is_control)
    }
}

pub fn customer_roles() -> Vec<String> {
    vec![ROLE_CUSTOMER.to_owned()]
}

/// Admins keep the customer role so they can also shop.
pub fn admin_roles() -> Vec<String> {
    vec![ROLE_CUSTOMER.to_owned(), ROLE_ADMIN.to_owned()]
}

/// An opaque refresh token as handed to the client. Only its hash is stored.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken(String);

pub const REFRESH_TOKEN_BYTES: usize = 32;

impl RefreshToken {
    pub fn generate() -> Self {
        let bytes: [u8; REFRESH_TOKEN_BYTES] = rand::random();
        Self(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Accepts what a client sends back; anything not shaped like one of
    /// ours can't match a stored hash, so reject it early.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(Invalid::new("refresh_token", "is required"));
        }
        match URL_SAFE_NO_PAD.decode(raw) {
            Ok(bytes) if bytes.len() == REFRESH_TOKEN_BYTES => Ok(Self(raw.to_owned())),
            _ => Err(Invalid::new("refresh_token", "is malformed")),
        }
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the token: a database leak gives no usable tokens, and the
    /// token's 256 random bits make a slow hash unnecessary.
    pub fn hash(&self) -> Vec<u8> {
        Sha256::digest(self.0.as_bytes()).to_vec()
    }
}

impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefreshToken(***)")
    }
}

/// What presenting a stored refresh token leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshVerdict {
    /// Valid: mark it used and issue the next one of the family.
    Rotate,
    /// Already used once: a stolen copy is in play, so the family dies.
    ReuseDetected,
    Revoked,
    Expired,
}

/// The state of a stored refresh token and its family.
#[derive(Debug, Clone, Copy)]
pub struct RefreshState {
    pub used: bool,
    pub family_revoked: bool,
    pub expired: bool,
}

impl RefreshState {
    pub fn verdict(self) -> RefreshVerdict {
        // Revocation wins: a dead family needs no second revocation.
        if self.family_revoked {
            RefreshVerdict::Revoked
        } else if self.used {
            RefreshVerdict::ReuseDetected
        } else if self.expired {
            RefreshVerdict::Expired
        } else {
            RefreshVerdict::Rotate
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_trimmed_and_lowercased() {
        assert_eq!(Email::parse("  Alice@Example.COM ").unwrap().as_str(), "alice@example.com");
    }

    #[test]
    fn email_shape_is_checked() {
        for bad in [
            "",
            "   ",
            "alice",
            "@example.com",
            "alice@",
            "alice@example",
            "a@b@c.com",
            "al ice@example.com",
            "a@.com",
            "a@example..com",
            "a@-x.com",
        ] {
            let err = Email::parse(bad).unwrap_err();
            assert_eq!(err.field, "email", "{bad:?}");
        }
        assert!(Email::parse("a.b+tag@sub.example.co").is_ok());
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(Email::parse(&long).is_err());
    }

    #[test]
    fn password_length_policy_counts_characters() {
        assert_eq!(Password::parse("1234567").unwrap_err().field, "password");
        assert!(Password::parse("12345678").is_ok());
        // 8 multibyte characters are 8 characters, not 24 bytes.
        assert!(Password::parse("ééééééé").is_err());
        assert!(Password::parse("éééééééé").is_ok());
        assert!(Password::parse(&"x".repeat(256)).is_ok());
        assert!(Password::parse(&"x".repeat(257)).is_err());
    }

    #[test]
    fn password_never_shows_in_debug() {
        let p = Password::parse("hunter2hunter2").unwrap();
        assert!(!format!("{p:?}").contains("hunter2"));
        let c = Credentials::parse("a@b.co", "hunter2hunter2").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn name_is_trimmed_and_bounded() {
        assert_eq!(DisplayName::parse("  Ada  ").unwrap().as_str(), "Ada");
        assert_eq!(DisplayName::parse("  ").unwrap_err().field, "name");
        assert!(DisplayName::parse(&"n".repeat(200)).is_ok());
        assert!(DisplayName::parse(&"n".repeat(201)).is_err());
        assert!(DisplayName::parse("a\u{0}b").is_err());
    }

    #[test]
    fn credentials_only_check_presence() {
        assert_eq!(Credentials::parse(" ", "x").unwrap_err().field, "email");
        assert_eq!(Credentials::parse("a@b.co", "").unwrap_err().field, "password");
        // Short passwords are not rejected at login: they simply don't match.
        assert_eq!(Credentials::parse(" A@B.co ", "short").unwrap().email, "a@b.co");
    }

    #[test]
    fn refresh_tokens_are_random_and_hashed() {
        let a = RefreshToken::generate();
        let b = RefreshToken::generate();
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 43, "32 bytes base64url without padding");
        assert_eq!(a.hash().len(), 32);
        assert_eq!(a.hash(), RefreshToken::parse(a.expose()).unwrap().hash());
        assert_ne!(a.hash(), b.hash());
        // Known vector: the hash is plain SHA-256 of the token text.
        let t = RefreshToken("abc".into());
        assert_eq!(
            t.hash().iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn malformed_refresh_tokens_are_rejected() {
        assert_eq!(RefreshToken::parse("").unwrap_err().field, "refresh_token");
        assert!(RefreshToken::parse("not base64 !").is_err());
        assert!(RefreshToken::parse(&URL_SAFE_NO_PAD.encode([0u8; 16])).is_err());
    }

    #[test]
    fn refresh_verdicts() {
        let s = |used, family_revoked, expired| RefreshState { used, family_revoked, expired }.verdict();
        assert_eq!(s(false, false, false), RefreshVerdict::Rotate);
        assert_eq!(s(true, false, false), RefreshVerdict::ReuseDetected);
        assert_eq!(s(true, false, true), RefreshVerdict::ReuseDetected);
        assert_eq!(s(false, false, true), RefreshVerdict::Expired);
        assert_eq!(s(true, true, false), RefreshVerdict::Revoked);
    }
}
