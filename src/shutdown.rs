//! The process-wide shutdown signal.
//!
//! SIGTERM or SIGINT cancels one [`Shutdown`] token. Listeners stop
//! accepting, connections finish the requests they are serving, background
//! jobs leave their loops; whatever still runs after the grace period is
//! dropped with the runtime.

use tokio_util::sync::CancellationToken;

#[derive(Clone, Default, Debug)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once shutdown has been triggered.
    pub async fn wait(&self) {
        self.token.cancelled().await
    }

    /// Triggers shutdown on the first SIGTERM or SIGINT.
    pub fn trigger_on_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let this = self.clone();
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                _ = this.wait() => return,
            };
            tracing::info!(
                signal = name,
                "shutdown requested: no new connections, draining in-flight requests"
            );
            this.trigger();
        });
        Ok(())
    }
}
