//! The one pattern for background jobs: a named task that runs a step at a
//! fixed interval (skipping missed ticks, never overlapping itself) until
//! shutdown, and whose handle is awaited at exit.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::shutdown::Shutdown;

#[derive(Debug)]
pub struct Job {
    pub name: &'static str,
    handle: JoinHandle<()>,
}

impl Job {
    /// Runs `step` every `period` (the first run one period from now).
    pub fn every<F, Fut>(name: &'static str, period: Duration, shutdown: Shutdown, step: F) -> Job
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Job::spawn(name, period, period, shutdown, step)
    }

    /// Like [`Job::every`], but the first step runs at once.
    pub fn now_and_every<F, Fut>(name: &'static str, period: Duration, shutdown: Shutdown, step: F) -> Job
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Job::spawn(name, Duration::ZERO, period, shutdown, step)
    }

    fn spawn<F, Fut>(name: &'static str, first: Duration, period: Duration, shutdown: Shutdown, mut step: F) -> Job
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + first, period);
            tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = tick.tick() => step().await,
                    _ = shutdown.wait() => break,
                }
            }
            tracing::debug!(job = name, "stopped");
        });
        Job { name, handle }
    }

    /// Waits for the job to leave its loop (after shutdown was triggered).
    pub async fn join(self) {
        if let Err(err) = self.handle.await {
            tracing::error!(job = self.name, error = %err, "background job ended abnormally");
        }
    }
}
