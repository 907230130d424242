//! A whole grid in one process: a tracker and workers on loopback, as
//! `septet demo`, the `local_grid` example and the grid benchmark run it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use septet_client::TrackerClient;
use septet_client::DEFAULT_REQUEST_TIMEOUT;
use septet_common::secure::Security;
use septet_common::Role;
use septet_tracker::TrackerConfig;
use septet_worker::WorkerConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long [`LocalGrid::start`] waits for its workers to register.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(10);

/// A tracker and one-slot workers serving on 127.0.0.1 in this process.
#[derive(Debug)]
pub struct LocalGrid {
    tracker: SocketAddr,
    stop_workers: CancellationToken,
    stop_tracker: CancellationToken,
    workers: Vec<JoinHandle<septet_common::Result<()>>>,
    tracker_task: JoinHandle<septet_tracker::Result<()>>,
    state: septet_tracker::Tracker,
    security: Security,
}

impl LocalGrid {
    /// Starts a tracker and `workers` workers on loopback and waits until
    /// every worker is alive in the peer table.
    ///
    /// # Errors
    /// When a port cannot be bound, or the workers have not all registered
    /// within 10 s (everything started is stopped again).
    pub async fn start(workers: u32) -> Result<Self> {
        Self::start_with(workers, Security::default()).await
    }

    /// [`LocalGrid::start`] with every connection — tracker, workers and
    /// the grid's own status checks — authenticated (and encrypted) as
    /// `security` says. Requesters must use the same `security`.
    ///
    /// # Errors
    /// As [`LocalGrid::start`].
    pub async fn start_with(workers: u32, security: Security) -> Result<Self> {
        let listener =
            septet_common::listener::bind("127.0.0.1:0").await.context("could not bind the local tracker")?;
        let tracker = listener.local_addr()?;
        let (stop_workers, stop_tracker) = (CancellationToken::new(), CancellationToken::new());
        let s = stop_tracker.clone();
        let config = TrackerConfig { security: security.clone(), ..TrackerConfig::default() };
        let state = septet_tracker::Tracker::new(config).context("the local tracker's settings")?;
        let serve = septet_tracker::server::serve(state.clone(), listener, async move { s.cancelled().await });
        let tracker_task = tokio::spawn(serve);
        let mut grid = Self {
            tracker,
            stop_workers,
            stop_tracker,
            workers: Vec::new(),
            tracker_task,
            state,
            security: security.clone(),
        };
        let started =
            async {
                for _ in 0..workers {
                    let listener =
                        septet_common::listener::bind("127.0.0.1:0").await.context("could not bind a local worker")?;
                    let config = WorkerConfig {
                        tracker: Some(tracker.to_string()),
                        security: security.clone(),
                        ..WorkerConfig::default()
                    };
                    let s = grid.stop_workers.clone();
                    grid.workers
                        .push(tokio::spawn(septet_worker::run(listener, config, async move { s.cancelled().await })));
                }
                grid.wait_alive(workers as usize).await
            }
            .await;
        match started {
            Ok(()) => Ok(grid),
            Err(e) => {
                let _ = grid.shutdown().await;
                Err(e)
            }
        }
    }

    async fn wait_alive(&self, workers: usize) -> Result<()> {
        let mut client =
            TrackerClient::connect_with(self.tracker, Role::Client, DEFAULT_REQUEST_TIMEOUT, &self.security)
                .await
                .context("could not reach the local tracker")?;
        let deadline = tokio::time::Instant::now() + REGISTRATION_TIMEOUT;
        loop {
            let (_, rows) = client.peers().await?;
            if rows.iter().filter(|r| r.state == "alive").count() >= workers {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the local workers did not register within {REGISTRATION_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The tracker's address.
    pub fn tracker(&self) -> SocketAddr {
        self.tracker
    }

    /// The tracker's state, for its status page and metrics
    /// (`septet_tracker::http::run`).
    pub fn tracker_state(&self) -> &septet_tracker::Tracker {
        &self.state
    }

    /// Stops the workers (they deregister), then the tracker.
    ///
    /// # Errors
    /// The first error a worker or the tracker ended with, or a panic in one.
    pub async fn shutdown(self) -> Result<()> {
        self.stop_workers.cancel();
        let mut result = Ok(());
        for worker in self.workers {
            let ended = worker.await.context("a local worker panicked").and_then(|r| Ok(r?));
            result = result.and(ended);
        }
        self.stop_tracker.cancel();
        let ended = self.tracker_task.await.context("the local tracker panicked").and_then(|r| Ok(r?));
        result.and(ended)
    }
}
