//! A worker: consumes scoring requests from the bus and scores them on a supervised
//! pool of R host processes.
//!
//! # Layout
//! - [`discover`]: finds model packages on disk, with a fingerprint of each; a broken
//!   package is a failure beside the others, not an error.
//! - [`host`]: one R host child process: start, channel, kill.
//! - [`pool`]: the supervisor: one driver task per host, replacement, retries, recycling,
//!   reloads (a new package set on new hosts, one host at a time), and carrying out the
//!   scheduler's decisions.
//! - [`request`]: a request for the pool and its answer ([`PoolRequest`], [`PoolScored`],
//!   [`PoolError`]) and the model it names ([`ServedModel`]: one package as loaded),
//!   shared by the pool and the scheduler.
//! - [`schedule`]: the queue, and which requests start together on which idle hosts
//!   (only hosts holding a request's package), and which idle host a reload retires.
//! - [`policy`]: batch sizes and waits, and when a job is split across hosts.
//! - [`rows`]: frames concatenated into batches and cut into row ranges.
//! - [`forest`]: forests cut into tree ranges, and the parts combined exactly.
//! - [`engine`]: which engine scores a model's requests (R on the pool, or the native
//!   engine on the model's compiled forest), the self-check at load that decides `auto`
//!   (or the R hosts' own, for a model they released under `r_fallback = false`), and
//!   native scoring off the runtime's threads for large requests.
//! - [`consume`]: the bus loop: decode, check, pick the version (the one pinned, else the
//!   highest held), score, reply, acknowledge; a guard around the handler settles a
//!   delivery whose handling panicked (requeued, then dead-lettered).
//! - [`process`]: a whole worker: discovery, pool, consumer (following the queues of the
//!   models served), announcements, the drain notice, and polling the models directory.
//! - [`metrics`]: the worker's Prometheus metrics, each model's series cached per package
//!   as loaded.
//! - [`listen`]: the worker's own HTTP listener (`metrics.listen`): `/metrics`, `/live`,
//!   `/ready`.
//!
//! **Invariant:** this crate never links R; R lives only in `rfleet-rhost` children, so a
//! crash in R costs one host, never the worker.

pub mod consume;
pub mod discover;
pub mod engine;
pub mod forest;
pub mod host;
pub mod listen;
pub mod metrics;
pub mod policy;
pub mod pool;
pub mod process;
pub mod request;
pub mod rows;
mod schedule;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use consume::{run, serve, Answer, ConsumeConfig, Handler, MAX_PANICKING_ATTEMPTS};
pub use discover::{discover, DiscoverError, Discovered, Fingerprint, ModelPackage, PackageFailure};
pub use host::{Call, Host, HostConfig, HostError, Started};
pub use policy::Throughput;
pub use pool::{Pool, PoolConfig};
pub use process::{Worker, WorkerError};
pub use request::{PoolError, PoolRequest, PoolScored, ServedModel};

/// The R host binary: configured, else `rfleet-rhost` next to the running executable
/// (where `cargo build` and the release archive put it), else on `PATH`.
pub fn rhost_path(configured: Option<&Path>) -> PathBuf {
    if let Some(path) = configured {
        return path.to_path_buf();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("rfleet-rhost")))
        .filter(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from("rfleet-rhost"))
}

/// Builds the pool configuration from settings; `n_hosts = 0` means one per core.
pub fn pool_config(settings: &settings::WorkerSettings) -> PoolConfig {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    PoolConfig {
        engine: settings.engine,
        host: HostConfig {
            rhost_path: rhost_path(settings.rhost_path.as_deref()),
            start_timeout: Duration::from_millis(settings.host_start_timeout_ms),
        },
        n_hosts: if settings.n_hosts == 0 { cores } else { settings.n_hosts },
        host_timeout: Duration::from_millis(settings.host_timeout_ms),
        max_requests_per_host: settings.max_requests_per_host,
        max_host_rss_mib: settings.max_host_rss_mib,
        throughput: Throughput::from_settings(settings),
        // `models.strict` is another section's: the worker sets it.
        strict: false,
    }
}

/// Waits between tries of something that must eventually work (an R host start, the first
/// subscription to the broker): exponential from `first`, jittered so that workers that
/// failed together do not retry together, never more than `longest`, and never giving up
/// (shutdown ends it). backon's jitter adds up to the delay again, hence the cap at half.
pub(crate) fn backoff(first: Duration, longest: Duration) -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(longest / 2)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}

/// The message a panic carries (`panic!` with a literal gives a `&str`, with arguments a
/// `String`), for the error reply and the log line that report it.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(message), _) => (*message).to_string(),
        (None, Some(message)) => message.clone(),
        (None, None) => "a panic without a message".to_string(),
    }
}

/// This worker's name: configured, else `hostname-pid`.
pub fn worker_id(configured: Option<&str>) -> String {
    configured.map(str::to_string).unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "worker".into());
        format!("{}-{}", host.trim(), std::process::id())
    })
}
