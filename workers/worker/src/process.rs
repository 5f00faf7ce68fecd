//! A whole worker process: model discovery, the R host pool, the bus consumer, the
//! announcements that tell dispatchers which models and hosts are here, and the reload of
//! the models directory, over whatever [`Transport`] it is given.
//!
//! The worker consumes, for each versioned model it serves, its version queue and its
//! name queue, and for an unversioned model its name queue ([`request_queues`]); the set
//! follows the pool's models through a watch the transport follows. Every
//! `models.poll_interval_ms` it looks in `models.dir` again and hands what it finds to
//! [`Pool::reload`], which loads changed packages without dropping a request; every change
//! is announced at once (with the packages that failed, `Announcement::failed`).
//!
//! Shutdown over a broker announces `draining` first and goes on consuming for
//! `workers.drain_notice_ms`, so every dispatcher has heard before the queues lose this
//! consumer; then it stops consuming and drains. In-process there is no one to tell.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use backon::Retryable;
use bus::Transport;
use protocol::{Announcement, ModelInfo, PROTOCOL_VERSION};
use settings::Settings;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::{discover, pool_config, worker_id, ConsumeConfig, DiscoverError, Pool, PoolError};

/// The first and the longest wait between tries to subscribe to a broker that is not
/// there yet.
const CONSUME_RETRY_FIRST: Duration = Duration::from_millis(200);
const CONSUME_RETRY_LONGEST: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot find models in {dir}: {source}")]
    Models { dir: String, source: DiscoverError },
    /// `models.strict` and a package did not load: the message names each and its error.
    #[error("{0}")]
    Strict(PoolError),
    #[error("cannot start the first R host: {0}")]
    Pool(PoolError),
    #[error("cannot consume from the broker: {0}")]
    Bus(#[from] bus::BusError),
}

/// A worker ready to consume: its pool is up.
pub struct Worker {
    pool: Pool,
    transport: Arc<dyn Transport>,
    id: String,
    consume: ConsumeConfig,
    announce_interval: Duration,
    drain_notice: Duration,
    models_dir: PathBuf,
    /// Zero: the directory is read once, at start.
    poll_interval: Duration,
}

impl Worker {
    /// Finds the models and starts the R host pool (the first host before returning, so a
    /// package that fails to load is known here: reported, or with `models.strict` an
    /// error naming it).
    pub async fn start(settings: &Settings, transport: Arc<dyn Transport>) -> Result<Worker, WorkerError> {
        let dir = &settings.models.dir;
        let discovered =
            discover(dir).map_err(|source| WorkerError::Models { dir: dir.display().to_string(), source })?;
        let found: Vec<String> = discovered.packages.iter().map(|p| p.spec.model_ref().to_string()).collect();
        tracing::info!(models = ?found, failed = discovered.failed.len(), "model packages found");
        let mut config = pool_config(&settings.workers);
        config.strict = settings.models.strict;
        let n_hosts = config.n_hosts;
        let pool = Pool::start(config, discovered).await.map_err(|error| match error {
            PoolError::Load(_) => WorkerError::Strict(error),
            error => WorkerError::Pool(error),
        })?;
        let id = worker_id(settings.workers.id.as_deref());
        Ok(Worker {
            pool,
            transport,
            consume: ConsumeConfig {
                worker_id: id.clone(),
                max_in_flight: n_hosts + settings.workers.queue_capacity,
                drain_timeout: Duration::from_millis(settings.workers.drain_timeout_ms),
            },
            id,
            announce_interval: Duration::from_millis(settings.bus.announce_interval_ms.max(100)),
            drain_notice: Duration::from_millis(settings.workers.drain_notice_ms),
            models_dir: dir.clone(),
            poll_interval: Duration::from_millis(settings.models.poll_interval_ms),
        })
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Consumes until `shutdown` (plus the drain notice over a broker), then drains
    /// (bounded by the drain timeout), stops the hosts and tells dispatchers it is gone.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let Worker { pool, transport, id, consume, announce_interval, drain_notice, models_dir, poll_interval } = self;
        // Held here until consuming ends: the consumer follows it.
        let queues_tx = Arc::new(watch::Sender::new(request_queues(&*transport, &pool.models())));
        // A broker that is down at start is waited for, not fatal.
        let subscribe = || transport.consume(queues_tx.subscribe());
        let subscribed = subscribe.retry(crate::backoff(CONSUME_RETRY_FIRST, CONSUME_RETRY_LONGEST)).notify(
            |error, delay| tracing::warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "cannot consume yet"),
        );
        let consumer = tokio::select! {
            _ = shutdown.cancelled() => {
                pool.shutdown().await;
                return Ok(());
            }
            subscribed = subscribed => subscribed?,
        };
        let poller = (!poll_interval.is_zero())
            .then(|| tokio::spawn(poll_models(pool.clone(), models_dir, poll_interval, shutdown.clone())));
        // Announced once consuming: a dispatcher that learns of the models can publish.
        let (draining_tx, draining_rx) = oneshot::channel();
        let follower = Follower {
            transport: transport.clone(),
            pool: pool.clone(),
            worker: id.clone(),
            interval: announce_interval,
        };
        let announcer = tokio::spawn(follower.run(queues_tx.clone(), shutdown.clone(), draining_tx));
        let stop_consuming = CancellationToken::new();
        let notice = tokio::spawn(drain_notice_then_stop(
            shutdown.clone(),
            (!transport.in_process()).then_some(drain_notice),
            draining_rx,
            stop_consuming.clone(),
        ));
        crate::run(consumer, pool.clone(), transport.clone(), consume, stop_consuming).await;
        notice.abort();
        let _ = announcer.await;
        if let Some(poller) = poller {
            let _ = poller.await;
        }
        drop(queues_tx);
        pool.shutdown().await;
        tracing::info!(worker = %id, "worker stopped");
        Ok(())
    }
}

/// Stops consuming once `shutdown` fires: at once in-process, and over a broker
/// (`notice` set) only after the draining announcement went out and `notice` passed, so
/// that requests published by dispatchers that had not heard yet are still taken.
async fn drain_notice_then_stop(
    shutdown: CancellationToken,
    notice: Option<Duration>,
    draining_announced: oneshot::Receiver<()>,
    stop_consuming: CancellationToken,
) {
    shutdown.cancelled().await;
    if let Some(notice) = notice {
        let _ = draining_announced.await;
        tracing::info!(
            notice_ms = notice.as_millis() as u64,
            "draining announced; consuming until every dispatcher has heard"
        );
        tokio::time::sleep(notice).await;
    }
    stop_consuming.cancel();
}

/// Looks in `dir` every `interval` and hands what it finds to the pool, until shutdown.
/// A directory that is missing or holds no package is taken for a passing mistake (a
/// volume not mounted yet) and changes nothing.
async fn poll_models(pool: Pool, dir: PathBuf, interval: Duration, shutdown: CancellationToken) {
    let mut last_error = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let looked = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || discover(&dir)).await
        };
        match looked {
            Ok(Ok(discovered)) => {
                last_error = None;
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    () = pool.reload(discovered) => {}
                }
            }
            Ok(Err(error)) => {
                let message = error.to_string();
                if last_error.as_ref() != Some(&message) {
                    tracing::warn!(error = %message, "cannot look for model packages; serving those loaded");
                    last_error = Some(message);
                }
            }
            Err(panic) => tracing::error!(error = %panic, "looking for model packages panicked"),
        }
    }
}

/// The queues a worker serving `models` consumes: each version's own queue, and each
/// model's name queue (unpinned requests of direct publishers; unversioned models).
fn request_queues(transport: &dyn Transport, models: &[ModelInfo]) -> Vec<String> {
    let mut queues = std::collections::BTreeSet::new();
    for model in models {
        queues.insert(transport.queue_for(&model.name, None));
        if let Some(version) = &model.version {
            queues.insert(transport.queue_for(&model.name, Some(version)));
        }
    }
    queues.into_iter().collect()
}

/// What follows the pool for the bus: the announcements and the queues consumed.
struct Follower {
    transport: Arc<dyn Transport>,
    pool: Pool,
    worker: String,
    interval: Duration,
}

impl Follower {
    fn announcement(&self, draining: bool) -> Announcement {
        Announcement {
            version: PROTOCOL_VERSION,
            worker: self.worker.clone(),
            models: self.pool.models(),
            live_hosts: self.pool.live_hosts() as u32,
            n_hosts: self.pool.n_hosts() as u32,
            interval_ms: self.interval.as_millis() as u64,
            draining,
            failed: self.pool.failed(),
        }
    }

    async fn announce(&self, draining: bool) {
        let body = protocol::encode(&self.announcement(draining)).expect("announcement encodes");
        if let Err(error) = self.transport.announce(body).await {
            tracing::debug!(error = %error, "cannot announce worker");
        }
    }

    /// Reads the depth of each served version's request queue on the bus (what KEDA
    /// scales on) into `rfleet_bus_queue_messages`; a queue the bus cannot tell about keeps
    /// its last value.
    async fn read_queue_depths(&self) {
        for info in self.pool.models() {
            let Some(model) = self.pool.model(&info.name, info.version.as_deref()) else { continue };
            let queue = self.transport.queue_for(&info.name, info.version.as_deref());
            if let Some(depth) = self.transport.queue_depth(&queue).await {
                model.metrics.bus_queue(depth);
            }
        }
    }

    /// Announces the worker every `interval`, and at once whenever its live host count or
    /// its models change (the queues consumed follow the models first), until shutdown;
    /// then once more as draining, and says so on `draining_tx`.
    async fn run(
        self,
        queues_tx: Arc<watch::Sender<Vec<String>>>,
        shutdown: CancellationToken,
        draining_tx: oneshot::Sender<()>,
    ) {
        let mut live_hosts = self.pool.live_hosts_changes();
        let mut changes = self.pool.changes();
        loop {
            self.announce(false).await;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.interval) => self.read_queue_depths().await,
                // A pool that is gone ends the worker anyway; shutdown follows.
                Ok(()) = live_hosts.changed() => {}
                Ok(()) = changes.changed() => {
                    let queues = request_queues(&*self.transport, &self.pool.models());
                    queues_tx.send_if_modified(|consumed| {
                        let changed = *consumed != queues;
                        *consumed = queues;
                        changed
                    });
                }
            }
        }
        self.announce(true).await;
        let _ = draining_tx.send(());
    }
}
