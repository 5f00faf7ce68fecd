//! A whole worker process: model discovery, the R host pool, the bus consumer and the
//! announcements that tell dispatchers which models and hosts are here, over whatever
//! [`Transport`] it is given.

use std::sync::Arc;
use std::time::Duration;

use backon::Retryable;
use bus::Transport;
use protocol::{Announcement, PROTOCOL_VERSION};
use settings::Settings;
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
    #[error("cannot start the first R host: {0}")]
    Pool(#[from] PoolError),
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
}

impl Worker {
    /// Finds the models and starts the R host pool (the first host before returning, so a
    /// broken model package fails here).
    pub async fn start(settings: &Settings, transport: Arc<dyn Transport>) -> Result<Worker, WorkerError> {
        let dir = &settings.models.dir;
        let models = discover(dir).map_err(|source| WorkerError::Models { dir: dir.display().to_string(), source })?;
        tracing::info!(models = ?models.iter().map(|m| m.spec.name.as_str()).collect::<Vec<_>>(), "model packages found");
        let config = pool_config(&settings.workers);
        let n_hosts = config.n_hosts;
        let pool = Pool::start(config, models).await?;
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
        })
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Consumes until `shutdown`, then drains (bounded by the drain timeout), stops the
    /// hosts and tells dispatchers it is gone.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let Worker { pool, transport, id, consume, announce_interval } = self;
        let (_queues_tx, queues) = tokio::sync::watch::channel(request_queues(&*transport, &pool.models()));
        // A broker that is down at start is waited for, not fatal.
        let subscribe = || transport.consume(queues.clone());
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
        // Announced once consuming: a dispatcher that learns of the models can publish.
        let announcer =
            tokio::spawn(announce(transport.clone(), pool.clone(), id.clone(), announce_interval, shutdown.clone()));
        crate::run(consumer, pool.clone(), consume, shutdown).await;
        let _ = announcer.await;
        pool.shutdown().await;
        tracing::info!(worker = %id, "worker stopped");
        Ok(())
    }
}

/// The queues a worker serving `models` consumes: each version's own queue, and each
/// model's name queue (unpinned requests of direct publishers; unversioned models).
fn request_queues(transport: &dyn Transport, models: &[protocol::ModelInfo]) -> Vec<String> {
    let mut queues = std::collections::BTreeSet::new();
    for model in models {
        queues.insert(transport.queue_for(&model.name, None));
        if let Some(version) = &model.version {
            queues.insert(transport.queue_for(&model.name, Some(version)));
        }
    }
    queues.into_iter().collect()
}

fn announcement(pool: &Pool, worker: &str, interval: Duration, draining: bool) -> Announcement {
    Announcement {
        version: PROTOCOL_VERSION,
        worker: worker.to_string(),
        models: pool.models(),
        live_hosts: pool.live_hosts() as u32,
        n_hosts: pool.n_hosts() as u32,
        interval_ms: interval.as_millis() as u64,
        draining,
        failed: Vec::new(),
    }
}

/// Announces the worker every `interval`, and at once whenever its live host count
/// changes, until shutdown; then once more as draining.
async fn announce(
    transport: Arc<dyn Transport>,
    pool: Pool,
    worker: String,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut live_hosts = pool.live_hosts_changes();
    loop {
        let body = protocol::encode(&announcement(&pool, &worker, interval, false)).expect("announcement encodes");
        if let Err(error) = transport.announce(body).await {
            tracing::debug!(error = %error, "cannot announce worker");
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
            // A pool that is gone ends the worker anyway; shutdown follows.
            Ok(()) = live_hosts.changed() => {}
        }
    }
    let body = protocol::encode(&announcement(&pool, &worker, interval, true)).expect("announcement encodes");
    let _ = transport.announce(body).await;
}
