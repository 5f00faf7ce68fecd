//! A whole worker process: model discovery, the R host pool, the bus consumer and, over a
//! broker, the announcements that tell dispatchers which models and hosts are here.

use std::sync::Arc;
use std::time::Duration;

use backon::Retryable;
use bus::amqp::AmqpBus;
use bus::{Catalog, EmbeddedBus};
use protocol::{Announcement, PROTOCOL_VERSION};
use settings::Settings;
use tokio_util::sync::CancellationToken;

use crate::{discover, pool_config, worker_id, ConsumeConfig, DiscoverError, Pool, PoolError};

/// The first and the longest wait between tries to subscribe to a broker that is not
/// there yet.
const CONSUME_RETRY_FIRST: Duration = Duration::from_millis(200);
const CONSUME_RETRY_LONGEST: Duration = Duration::from_secs(5);

/// The transport a worker consumes from.
pub enum WorkerBus {
    Embedded(EmbeddedBus),
    Amqp(AmqpBus),
}

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
    bus: WorkerBus,
    id: String,
    consume: ConsumeConfig,
    announce_interval: Duration,
}

impl Worker {
    /// Finds the models and starts the R host pool (the first host before returning, so a
    /// broken model package fails here). `catalog` learns the models and live hosts.
    pub async fn start(settings: &Settings, bus: WorkerBus, catalog: Arc<Catalog>) -> Result<Worker, WorkerError> {
        let dir = &settings.models.dir;
        let models = discover(dir).map_err(|source| WorkerError::Models { dir: dir.display().to_string(), source })?;
        tracing::info!(models = ?models.iter().map(|m| m.spec.name.as_str()).collect::<Vec<_>>(), "model packages found");
        let config = pool_config(&settings.workers);
        let n_hosts = config.n_hosts;
        let pool = Pool::start(config, models, catalog).await?;
        let id = worker_id(settings.workers.id.as_deref());
        Ok(Worker {
            pool,
            bus,
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
    /// hosts and, over a broker, tells dispatchers it is gone.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let Worker { pool, bus, id, consume, announce_interval } = self;
        match bus {
            WorkerBus::Embedded(bus) => {
                let queue = bus::Requester::queue_for(&bus, "");
                crate::run(bus.consumer(&queue), pool.clone(), consume, shutdown).await;
            }
            WorkerBus::Amqp(bus) => {
                let names: Vec<String> = pool
                    .models()
                    .into_iter()
                    .map(|m| m.name)
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                // A broker that is down at start is waited for, not fatal.
                let subscribe = || bus.consumer(&names);
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
                let announcer =
                    tokio::spawn(announce(bus.clone(), pool.clone(), id.clone(), announce_interval, shutdown.clone()));
                crate::run(consumer, pool.clone(), consume, shutdown).await;
                let _ = announcer.await;
            }
        }
        pool.shutdown().await;
        tracing::info!(worker = %id, "worker stopped");
        Ok(())
    }
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
    }
}

/// Announces the worker every `interval` until shutdown, then once more as draining.
async fn announce(bus: AmqpBus, pool: Pool, worker: String, interval: Duration, shutdown: CancellationToken) {
    loop {
        let body = protocol::encode(&announcement(&pool, &worker, interval, false)).expect("announcement encodes");
        if let Err(error) = bus.announce(body).await {
            tracing::debug!(error = %error, "cannot announce worker");
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
    let body = protocol::encode(&announcement(&pool, &worker, interval, true)).expect("announcement encodes");
    let _ = bus.announce(body).await;
}
