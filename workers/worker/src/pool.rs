//! The supervisor: a pool of R hosts, each request to one idle host.
//!
//! A host that dies or hangs is killed and replaced in the background; the request it
//! held is tried once more on another host, and a request that loses two hosts is
//! answered with `host_crashed` rather than being allowed to take down the whole pool.
//! Hosts are also recycled after a number of requests or above a memory size.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bus::Catalog;
use protocol::host::{HostOutput, ModelSpec};
use protocol::{ErrorBody, Input, ModelInfo};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::host::{Host, HostConfig, HostError};

/// How many hosts to keep and when to replace them.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub host: HostConfig,
    pub n_hosts: usize,
    /// A host that takes longer for one request is killed.
    pub host_timeout: Duration,
    /// Recycle after this many requests (0: never).
    pub max_requests_per_host: u64,
    /// Recycle above this resident size in MiB (0: never).
    pub max_host_rss_mib: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Start(#[from] HostError),
    #[error("no R host became free before the deadline")]
    DeadlineExceeded,
    #[error("the worker is shutting down")]
    ShuttingDown,
    #[error("the request was given to {attempts} R hosts and each one was lost ({last}); it is not retried further")]
    Crashed { attempts: u32, last: String },
}

/// What the pool returns for one request.
pub struct PoolScored {
    pub result: Result<HostOutput, ErrorBody>,
    pub r_us: u64,
    pub host_pid: u32,
    pub attempts: u32,
    /// Time spent waiting for an idle host.
    pub wait: Duration,
}

/// A cheap handle to the pool.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    config: PoolConfig,
    models: Vec<ModelSpec>,
    infos: RwLock<Vec<ModelInfo>>,
    /// Idle hosts, most recently used last. Taking the last one keeps a warm host (its
    /// model in the CPU caches) busy at low load instead of rotating through all of them.
    idle: std::sync::Mutex<Vec<Host>>,
    /// One permit per idle host; waiters queue fairly. Closed at shutdown.
    available: Semaphore,
    live: AtomicUsize,
    catalog: Arc<Catalog>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Pool {
    /// Starts the first host (so a broken model package fails here, loudly), then the
    /// others in the background.
    pub async fn start(config: PoolConfig, models: Vec<ModelSpec>, catalog: Arc<Catalog>) -> Result<Pool, PoolError> {
        let (first, infos, _r_version) = Host::start(&config.host, &models).await?;
        catalog.set_models(infos.clone());
        let pool = Pool {
            inner: Arc::new(Inner {
                config,
                models,
                infos: RwLock::new(infos),
                idle: std::sync::Mutex::new(Vec::new()),
                available: Semaphore::new(0),
                live: AtomicUsize::new(0),
                catalog,
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        };
        pool.add_idle(first);
        for _ in 1..pool.inner.config.n_hosts.max(1) {
            pool.replace();
        }
        Ok(pool)
    }

    /// The models as the hosts loaded them (with inferred schemas).
    pub fn models(&self) -> Vec<ModelInfo> {
        self.inner.infos.read().expect("pool lock poisoned").clone()
    }

    /// Hosts alive now (idle or busy).
    pub fn live_hosts(&self) -> usize {
        self.inner.live.load(Ordering::Relaxed)
    }

    pub fn n_hosts(&self) -> usize {
        self.inner.config.n_hosts
    }

    /// Scores `input` on one host, retrying once on another if the host is lost.
    pub async fn score(
        &self,
        model: &str,
        input: Input,
        predict_type: Option<String>,
        deadline: Option<Instant>,
    ) -> Result<PoolScored, PoolError> {
        let started = Instant::now();
        let mut attempts = 0;
        loop {
            let mut host = self.acquire(deadline).await?;
            attempts += 1;
            let wait = started.elapsed();
            let pid = host.pid();
            match host.score(model, input.clone(), predict_type.clone(), self.inner.config.host_timeout).await {
                Ok(scored) => {
                    self.release(host);
                    return Ok(PoolScored { result: scored.result, r_us: scored.r_us, host_pid: pid, attempts, wait });
                }
                Err(error) => {
                    tracing::warn!(host = pid, model, attempts, error = %error, "r host lost; replacing it");
                    self.lose(host);
                    if attempts >= 2 {
                        return Err(PoolError::Crashed { attempts, last: error.to_string() });
                    }
                }
            }
        }
    }

    /// Stops replacing hosts and stops the idle ones; busy hosts stop when released.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.available.close();
        let idle: Vec<Host> = std::mem::take(&mut *self.inner.idle.lock().expect("pool lock poisoned"));
        for host in idle {
            self.inner.live.fetch_sub(1, Ordering::Relaxed);
            host.stop().await;
        }
        self.publish_live();
        self.inner.tasks.wait().await;
    }

    async fn acquire(&self, deadline: Option<Instant>) -> Result<Host, PoolError> {
        let permit = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline.into(), self.inner.available.acquire())
                .await
                .map_err(|_| PoolError::DeadlineExceeded)?,
            None => self.inner.available.acquire().await,
        };
        // The permit stands for one host in `idle`; the host now leaves it.
        permit.map_err(|_| PoolError::ShuttingDown)?.forget();
        let host = self.inner.idle.lock().expect("pool lock poisoned").pop();
        Ok(host.expect("a permit is only issued for an idle host"))
    }

    fn release(&self, host: Host) {
        let config = &self.inner.config;
        let worn = config.max_requests_per_host > 0 && host.served >= config.max_requests_per_host;
        let rss = if config.max_host_rss_mib > 0 { host.rss_mib() } else { None };
        let fat = rss.is_some_and(|rss| rss > config.max_host_rss_mib);
        if self.inner.shutdown.is_cancelled() || worn || fat {
            if worn || fat {
                tracing::info!(host = host.pid(), served = host.served, rss_mib = rss, "recycling r host");
            }
            self.inner.live.fetch_sub(1, Ordering::Relaxed);
            self.publish_live();
            self.inner.tasks.spawn(host.stop());
            self.replace();
        } else {
            self.push_idle(host);
        }
    }

    fn lose(&self, host: Host) {
        self.inner.live.fetch_sub(1, Ordering::Relaxed);
        self.publish_live();
        // Dropping kills the child (kill_on_drop) and tokio reaps it.
        drop(host);
        self.replace();
    }

    fn add_idle(&self, host: Host) {
        self.inner.live.fetch_add(1, Ordering::Relaxed);
        self.publish_live();
        self.push_idle(host);
    }

    fn push_idle(&self, host: Host) {
        self.inner.idle.lock().expect("pool lock poisoned").push(host);
        self.inner.available.add_permits(1);
    }

    fn publish_live(&self) {
        self.inner.catalog.set_live_hosts(self.live_hosts());
    }

    /// Starts a host in the background, retrying with backoff until it is up or the pool
    /// shuts down.
    fn replace(&self) {
        if self.inner.shutdown.is_cancelled() {
            return;
        }
        let pool = self.clone();
        self.inner.tasks.spawn(async move {
            let mut backoff = Duration::from_millis(500);
            loop {
                let start = Host::start(&pool.inner.config.host, &pool.inner.models);
                let result = tokio::select! {
                    _ = pool.inner.shutdown.cancelled() => return,
                    result = start => result,
                };
                match result {
                    Ok((host, _, _)) => {
                        if pool.inner.shutdown.is_cancelled() {
                            host.stop().await;
                        } else {
                            pool.add_idle(host);
                        }
                        return;
                    }
                    Err(error) => {
                        tracing::error!(error = %error, retry_in_ms = backoff.as_millis() as u64, "cannot start r host");
                        tokio::select! {
                            _ = pool.inner.shutdown.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
        });
    }
}
