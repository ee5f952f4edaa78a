//! The one pattern for background jobs: a named task that runs a step at a
//! fixed interval (skipping missed ticks, never overlapping itself) until
//! shutdown, and whose handle is awaited at exit.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
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

    /// Like [`Job::every`], but also as soon as `wake` is notified (a
    /// notification during a step runs one more step right after it; many
    /// make one).
    pub fn every_or_when<F, Fut>(
        name: &'static str,
        period: Duration,
        wake: Option<Arc<Notify>>,
        shutdown: Shutdown,
        step: F,
    ) -> Job
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Job::spawn_woken(name, period, period, wake, shutdown, step)
    }

    fn spawn<F, Fut>(name: &'static str, first: Duration, period: Duration, shutdown: Shutdown, step: F) -> Job
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Job::spawn_woken(name, first, period, None, shutdown, step)
    }

    fn spawn_woken<F, Fut>(
        name: &'static str,
        first: Duration,
        period: Duration,
        wake: Option<Arc<Notify>>,
        shutdown: Shutdown,
        mut step: F,
    ) -> Job
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + first, period);
            tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
            let woken = || async {
                match &wake {
                    Some(wake) => wake.notified().await,
                    None => std::future::pending().await,
                }
            };
            loop {
                tokio::select! {
                    _ = tick.tick() => step().await,
                    _ = woken() => step().await,
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
