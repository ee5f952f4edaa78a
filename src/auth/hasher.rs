//! The bounded pool that runs argon2 off the async reactor.
//!
//! At most `workers` hashes run at once, and at most `queue` more wait;
//! anything beyond is refused at once ([`Overloaded`]) so a password-spraying
//! flood turns into fast 503s instead of a growing queue, and requests that
//! need no hashing (warm sign-ins) keep their share of the CPU.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;

use crate::telemetry;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the password hashing pool is full")]
pub struct Overloaded;

/// A place taken in the pool's queue ([`Hasher::admit`]); given back when
/// dropped unused.
#[derive(Debug)]
pub struct Admission(tokio::sync::OwnedSemaphorePermit);

#[derive(Debug, Clone)]
pub struct Hasher {
    admitted: Arc<Semaphore>,
    running: Arc<Semaphore>,
}

impl Hasher {
    pub fn new(workers: usize, queue: usize) -> Hasher {
        let workers = workers.max(1);
        Hasher {
            admitted: Arc::new(Semaphore::new(workers + queue)),
            running: Arc::new(Semaphore::new(workers)),
        }
    }

    /// The default worker count: every core but one, so the reactor keeps
    /// a core while the pool is saturated.
    pub fn default_workers() -> usize {
        std::thread::available_parallelism()
            .map(|n| n.get().saturating_sub(1))
            .unwrap_or(1)
            .max(1)
    }

    /// Runs `work` on a blocking thread once a worker is free.
    pub async fn run<R, F>(&self, work: F) -> Result<R, Overloaded>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let admission = self.admit()?;
        self.run_admitted(admission, work).await
    }

    /// A place in the pool, taken now for work that may follow: a check
    /// that must be able to spend its hash afterwards asks first, so a full
    /// pool refuses it before anything is checked.
    pub fn admit(&self) -> Result<Admission, Overloaded> {
        Arc::clone(&self.admitted)
            .try_acquire_owned()
            .map(Admission)
            .map_err(|_| Overloaded)
    }

    /// Runs `work` in the place `admission` holds (never refused for a
    /// full queue: the place is already taken).
    pub async fn run_admitted<R, F>(&self, admission: Admission, work: F) -> Result<R, Overloaded>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let admitted = admission.0;
        let queued = Instant::now();
        telemetry::argon2_queue(1.0);
        let running = Arc::clone(&self.running).acquire_owned().await;
        telemetry::argon2_queue(-1.0);
        telemetry::argon2_waited(queued.elapsed().as_secs_f64());
        let running = running.map_err(|_| Overloaded)?;
        let result = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let r = work();
            telemetry::argon2_hashed(started.elapsed().as_secs_f64());
            drop(running);
            drop(admitted);
            r
        })
        .await;
        // A panic inside argon2 would be a bug; refuse the request rather
        // than take the server down.
        result.map_err(|_| Overloaded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn refuses_at_once_when_full() {
        let hasher = Hasher::new(1, 1);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let blocked = {
            let h = hasher.clone();
            let rx = Arc::clone(&rx);
            tokio::spawn(async move { h.run(move || rx.lock().unwrap().recv().ok()).await })
        };
        let queued = {
            let h = hasher.clone();
            tokio::spawn(async move { h.run(|| 7).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(hasher.run(|| 1).await, Err(Overloaded));
        tx.send(()).unwrap();
        assert_eq!(blocked.await.unwrap(), Ok(Some(())));
        assert_eq!(queued.await.unwrap(), Ok(7));
        assert_eq!(hasher.run(|| 2).await, Ok(2));
    }
}
