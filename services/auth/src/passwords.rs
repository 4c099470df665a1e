//! Argon2id password hashing, off the async runtime (each hash is ~tens of
//! milliseconds of CPU and would otherwise stall other requests), at most a
//! few at a time (`PasswordWork`).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use tokio::sync::Semaphore;

use crate::domain::Password;

/// What the requests of the API may spend on passwords. Each hash holds
/// ~19 MiB for its duration, and tokio would run up to 512 of them on its
/// blocking threads: a burst of logins could take the process out of memory
/// and starve its CPU. Work runs `at_once` at a time; a request that cannot
/// start within `max_wait` is told the service is busy.
#[derive(Clone)]
pub struct PasswordWork {
    running: Arc<Semaphore>,
    at_once: usize,
    max_wait: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordWorkError {
    #[error("{0} password checks are already running and none finished within {1:?}")]
    Busy(usize, Duration),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl PasswordWork {
    pub fn new(at_once: usize, max_wait: Duration) -> Self {
        let at_once = at_once.max(1);
        Self { running: Arc::new(Semaphore::new(at_once)), at_once, max_wait }
    }

    /// This, waiting no longer than `limit` (a caller's deadline) if given.
    pub fn waiting_at_most(&self, limit: Option<Duration>) -> Self {
        let max_wait = limit.map_or(self.max_wait, |l| l.min(self.max_wait));
        Self { max_wait, ..self.clone() }
    }

    /// Runs `work` on a blocking thread once one of the slots is free.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T, PasswordWorkError> {
        let permit = tokio::time::timeout(self.max_wait, self.running.clone().acquire_owned())
            .await
            .map_err(|_| PasswordWorkError::Busy(self.at_once, self.max_wait))?
            .expect("the semaphore is never closed");
        // The slot goes with the work: a caller that gives up does not free
        // it while the hash still runs.
        let joined = tokio::task::spawn_blocking(move || {
            let _slot = permit;
            work()
        })
        .await
        .map_err(anyhow::Error::from)?;
        Ok(joined?)
    }

    pub async fn hash(&self, password: &Password) -> Result<String, PasswordWorkError> {
        let password = password.clone();
        self.run(move || hash_blocking(password.expose())).await
    }

    /// True if `password` matches the stored PHC string.
    pub async fn verify(&self, password: &Password, phc: &str) -> Result<bool, PasswordWorkError> {
        let (password, phc) = (password.clone(), phc.to_owned());
        self.run(move || Ok(verify_blocking(password.expose(), &phc))).await
    }

    /// Spends the time of a real verification on an unknown email, so
    /// response time does not reveal which emails have accounts; in a slot
    /// like any other check, so it costs the same wait too.
    pub async fn verify_dummy(&self, password: &Password) -> Result<(), PasswordWorkError> {
        let password = password.clone();
        self.run(move || {
            verify_blocking(password.expose(), dummy_hash()?);
            Ok(())
        })
        .await
    }
}

/// PHC string (`$argon2id$v=19$...`) with a random salt, outside the API's
/// slots (the admin bootstrap and CLI).
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

fn verify_blocking(password: &str, phc: &str) -> bool {
    Argon2::default().verify_password(password.as_bytes(), phc).is_ok()
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
        let work = PasswordWork::new(2, Duration::from_secs(5));
        assert!(work.verify(&pw, &a).await.unwrap());
        assert!(!work.verify(&Password::parse("wrong password").unwrap(), &a).await.unwrap());
        assert!(!work.verify(&pw, "not a phc string").await.unwrap());
        warm_up().await.unwrap();
        work.verify_dummy(&pw).await.unwrap();
    }

    #[tokio::test]
    async fn a_check_that_cannot_start_in_time_is_refused_as_busy_and_a_slot_frees_when_work_ends() {
        let work = PasswordWork::new(1, Duration::from_millis(50));
        let pw = Password::parse("correct horse battery").unwrap();
        let (started, release) = (Arc::new(tokio::sync::Notify::new()), Arc::new(std::sync::Barrier::new(2)));
        let hold = {
            let (started, release) = (started.clone(), release.clone());
            let work = work.clone();
            tokio::spawn(async move {
                work.run(move || {
                    started.notify_one();
                    release.wait();
                    Ok(())
                })
                .await
            })
        };
        started.notified().await;
        assert!(matches!(work.verify(&pw, "x").await, Err(PasswordWorkError::Busy(1, _))));
        release.wait();
        hold.await.unwrap().unwrap();
        assert!(!work.verify(&pw, "not a phc string").await.unwrap(), "the slot is free again");
    }
}
