//! Argon2id password hashing, off the async runtime (each hash is ~tens of
//! milliseconds of CPU and would otherwise stall other requests).

use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};

use crate::domain::Password;

/// PHC string (`$argon2id$v=19$...`) with a random salt.
pub async fn hash(password: &Password) -> anyhow::Result<String> {
    let password = password.clone();
    tokio::task::spawn_blocking(move || hash_blocking(password.expose())).await?
}

fn hash_blocking(password: &str) -> anyhow::Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing password: {e}"))
}

/// True if `password` matches the stored PHC string.
pub async fn verify(password: &Password, phc: &str) -> anyhow::Result<bool> {
    let (password, phc) = (password.clone(), phc.to_owned());
    Ok(tokio::task::spawn_blocking(move || verify_blocking(password.expose(), &phc)).await?)
}

fn verify_blocking(password: &str, phc: &str) -> bool {
    Argon2::default().verify_password(password.as_bytes(), phc).is_ok()
}

/// Spends the time of a real verification on an unknown email, so response
/// time does not reveal which emails have accounts.
pub async fn verify_dummy(password: &Password) -> anyhow::Result<()> {
    let password = password.clone();
    tokio::task::spawn_blocking(move || {
        verify_blocking(password.expose(), dummy_hash()?);
        Ok(())
    })
    .await?
}

/// Computes the dummy hash at start, so the first unknown-email login isn't
/// slower than the rest.
pub async fn warm_up() -> anyhow::Result<()> {
    tokio::task::spawn_blocking(|| dummy_hash().map(|_| ())).await?
}

fn dummy_hash() -> anyhow::Result<&'static str> {
    static DUMMY: OnceLock<String> = OnceLock::new();
    if let Some(h) = DUMMY.get() {
        return Ok(h);
    }
    let h = hash_blocking("shopmesh-dummy-password")?;
    Ok(DUMMY.get_or_init(|| h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_salted_argon2id_and_verify() {
        let pw = Password::parse("correct horse battery").unwrap();
        let a = hash(&pw).await.unwrap();
        let b = hash(&pw).await.unwrap();
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b, "random salt");
        assert!(!a.contains("correct horse"));
        assert!(verify(&pw, &a).await.unwrap());
        assert!(!verify(&Password::parse("wrong password").unwrap(), &a).await.unwrap());
        assert!(!verify(&pw, "not a phc string").await.unwrap());
        warm_up().await.unwrap();
        verify_dummy(&pw).await.unwrap();
    }
}
