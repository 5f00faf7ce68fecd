//! One R host child process, seen from its supervisor.
//!
//! R cannot be restarted inside a process and may crash it (extendr disables R's C stack
//! check; model code can segfault), so each host is a child the supervisor can kill and
//! replace. The channel is a Unix socket at the child's fd 3, never its stdout or stderr:
//! R prints there, and the supervisor turns those lines into logs. The child is killed
//! when its [`Host`] is dropped and when the supervisor dies (`PR_SET_PDEATHSIG`).

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use protocol::host::{FromHost, HostOutput, ModelSpec, Phases, ToHost, TreeRange, HOST_FD, MAX_MESSAGE_BYTES};
use protocol::{ErrorBody, Input, LoadFailure, ModelInfo, ModelRef, NativeLoad};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// How to start hosts.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub rhost_path: PathBuf,
    pub start_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot start R host {path}: {source}")]
    Spawn { path: PathBuf, source: std::io::Error },
    #[error("R host failed to load the models: {0}")]
    LoadFailed(String),
    #[error("R host did not start within {0:?}")]
    StartTimeout(Duration),
    #[error("R host {pid} died ({status})")]
    Died { pid: u32, status: String },
    #[error("R host {pid} took longer than {timeout:?} and was killed")]
    Timeout { pid: u32, timeout: Duration },
    #[error("R host {pid} broke the channel protocol: {message}")]
    Protocol { pid: u32, message: String },
}

impl HostError {
    /// Whether the host is gone (or was killed) and must be replaced.
    pub fn host_lost(&self) -> bool {
        matches!(self, HostError::Died { .. } | HostError::Timeout { .. } | HostError::Protocol { .. })
    }
}

/// A started, ready R host.
pub struct Host {
    pid: u32,
    child: Child,
    channel: Framed<UnixStream, LengthDelimitedCodec>,
    next_id: u64,
    /// Requests scored so far, for recycling.
    pub served: u64,
}

/// What one R call computes.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// `predict` (or the model's script) on the whole input; answers a frame, or JSON.
    Predict { predict_type: Option<String> },
    /// Some of a forest's trees; answers a [`HostOutput::ForestPart`].
    Trees(TreeRange),
}

/// A host that is up: the models as R sees them (with inferred schemas), the packages it
/// could not load, and R's version.
pub struct Started {
    pub host: Host,
    pub models: Vec<ModelInfo>,
    pub failed: Vec<LoadFailure>,
    pub r_version: String,
    /// How long each of `models` took to load, in the same order (empty from a host that
    /// does not say).
    pub load_times: Vec<Duration>,
    /// What became of each of `models`' native forest, in the same order (empty from a host
    /// that does not say).
    pub native: Vec<NativeLoad>,
}

/// What one scoring call produced.
pub struct Scored {
    pub result: Result<HostOutput, ErrorBody>,
    pub r_us: u64,
    /// Where R's time went.
    pub phases: Phases,
    /// R's condition class, on an R error.
    pub condition_class: Option<String>,
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().max_frame_length(MAX_MESSAGE_BYTES).new_codec()
}

/// The environment a host gets unless the worker's own environment says otherwise.
/// - One host per core already uses every core: threaded BLAS or OpenMP inside a host
///   would oversubscribe them. R also complains at start when TZ is unset.
/// - glibc's malloc serves blocks over 128 KiB from fresh `mmap` pages and gives freed heap
///   back to the kernel, and `predict` allocates and frees large blocks on every call
///   (randomForest's `.C` copies the whole forest): one call on a 500-tree forest took
///   about 460 page faults. Blocks up to 32 MiB stay on the heap and up to 256 MiB of free
///   heap stays in the host, so a host keeps its peak resident memory and its calls stop
///   faulting (BENCHMARKS.md, "Host memory allocator").
const HOST_ENV_DEFAULTS: [(&str, &str); 5] = [
    ("OMP_NUM_THREADS", "1"),
    ("OPENBLAS_NUM_THREADS", "1"),
    ("TZ", "UTC"),
    ("MALLOC_MMAP_THRESHOLD_", "33554432"),
    ("MALLOC_TRIM_THRESHOLD_", "268435456"),
];

/// The prefix of rfleet's settings in the environment (`RFLEET_BUS__URL`, ...).
const SETTINGS_ENV_PREFIX: &str = "RFLEET_";

impl Host {
    /// Starts a host, loads `models` and waits until it is ready. A package that fails to
    /// load is in [`Started::failed`]; an error means the host cannot serve at all.
    pub async fn start(config: &HostConfig, models: &[ModelSpec]) -> Result<Started, HostError> {
        // Counted as starting until it is ready or has failed.
        let _starting = crate::metrics::host_in(crate::metrics::HostState::Starting);
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()
            .map_err(|source| HostError::Spawn { path: config.rhost_path.clone(), source })?;
        let their_fd = theirs.as_raw_fd();
        let mut command = Command::new(&config.rhost_path);
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        // Whoever tunes malloc with glibc's own GLIBC_TUNABLES keeps it to themselves.
        let malloc_tuned = std::env::var("GLIBC_TUNABLES").is_ok_and(|tunables| tunables.contains("glibc.malloc."));
        for (key, value) in HOST_ENV_DEFAULTS {
            if std::env::var_os(key).is_none() && !(malloc_tuned && key.starts_with("MALLOC_")) {
                command.env(key, value);
            }
        }
        // rfleet's own settings stay with the supervisor: they hold the broker's password
        // and the API keys, which model code in R could otherwise read and print (R's
        // printing becomes log lines). A host is configured over its channel only.
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(|key| key.starts_with(SETTINGS_ENV_PREFIX)) {
                command.env_remove(key);
            }
        }
        // SAFETY: between fork and exec only async-signal-safe calls (dup2, fcntl, prctl).
        unsafe {
            command.pre_exec(move || {
                if their_fd == HOST_FD {
                    // dup2 onto itself keeps close-on-exec set: clear it instead.
                    let flags = libc::fcntl(HOST_FD, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(HOST_FD, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(their_fd, HOST_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // A host must never outlive its supervisor.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child =
            command.spawn().map_err(|source| HostError::Spawn { path: config.rhost_path.clone(), source })?;
        drop(theirs);
        let pid = child.id().unwrap_or_default();
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(forward_output(pid, "stdout", stdout));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(forward_output(pid, "stderr", stderr));
        }
        ours.set_nonblocking(true).map_err(|source| HostError::Spawn { path: config.rhost_path.clone(), source })?;
        let stream = UnixStream::from_std(ours)
            .map_err(|source| HostError::Spawn { path: config.rhost_path.clone(), source })?;
        let mut host = Host { pid, child, channel: Framed::new(stream, codec()), next_id: 0, served: 0 };

        let started = Instant::now();
        let handshake = async {
            host.send(&ToHost::Load { models: models.to_vec() }).await?;
            host.receive().await
        };
        match tokio::time::timeout(config.start_timeout, handshake).await {
            Err(_) => Err(HostError::StartTimeout(config.start_timeout)),
            Ok(Err(e)) => Err(e),
            Ok(Ok(FromHost::Ready { models, r_version, failed, load_us, native, .. })) => {
                tracing::info!(host = pid, r_version = %r_version, failed = failed.len(), elapsed_ms = started.elapsed().as_millis() as u64, "r host ready");
                let load_times = load_us.into_iter().map(Duration::from_micros).collect();
                Ok(Started { host, models, failed, r_version, load_times, native })
            }
            Ok(Ok(FromHost::LoadFailed { message })) => Err(HostError::LoadFailed(message)),
            Ok(Ok(other)) => Err(HostError::Protocol { pid, message: format!("expected ready, got {other:?}") }),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Makes one R call: `predict` on `input`, or a forest part over some of its trees. A
    /// host that dies, hangs past `timeout` or breaks the protocol is killed and the error
    /// says so; the caller replaces it. An R error is an `Ok` with an error result.
    pub async fn call(
        &mut self,
        model: &ModelRef,
        input: Input,
        call: Call,
        timeout: Duration,
    ) -> Result<Scored, HostError> {
        self.next_id += 1;
        let id = self.next_id;
        let model = model.clone();
        let message = match call {
            Call::Predict { predict_type } => ToHost::Score { id, model, input, predict_type },
            Call::Trees(trees) => ToHost::ScoreTrees { id, model, input, trees },
        };
        let exchange = async {
            self.send(&message).await?;
            self.receive().await
        };
        let reply = match tokio::time::timeout(timeout, exchange).await {
            Ok(reply) => reply,
            Err(_) => {
                let _ = self.child.start_kill();
                return Err(HostError::Timeout { pid: self.pid, timeout });
            }
        };
        match reply? {
            FromHost::Scored { id: got, result, r_us, phases, condition_class } if got == id => {
                self.served += 1;
                Ok(Scored { result, r_us, phases, condition_class })
            }
            other => {
                let _ = self.child.start_kill();
                Err(HostError::Protocol { pid: self.pid, message: format!("expected reply {id}, got {other:?}") })
            }
        }
    }

    /// Resident memory in MiB, from `/proc`.
    pub fn rss_mib(&self) -> Option<u64> {
        let statm = std::fs::read_to_string(format!("/proc/{}/statm", self.pid)).ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        // SAFETY: sysconf has no preconditions.
        let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
        Some(pages * page_size / (1024 * 1024))
    }

    /// Stops the host: closing the channel makes it exit; kill it if it does not.
    pub async fn stop(mut self) {
        let _ = SinkExt::<bytes::Bytes>::close(&mut self.channel).await;
        if tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }

    async fn send(&mut self, message: &ToHost) -> Result<(), HostError> {
        let bytes =
            protocol::encode(message).map_err(|e| HostError::Protocol { pid: self.pid, message: e.to_string() })?;
        if self.channel.send(bytes::Bytes::from(bytes)).await.is_err() {
            return Err(self.died().await);
        }
        Ok(())
    }

    async fn receive(&mut self) -> Result<FromHost, HostError> {
        match self.channel.next().await {
            Some(Ok(bytes)) => {
                protocol::decode(&bytes).map_err(|e| HostError::Protocol { pid: self.pid, message: e.to_string() })
            }
            Some(Err(_)) | None => Err(self.died().await),
        }
    }

    /// The channel closed: the host is gone. Reap it and say how it ended.
    async fn died(&mut self) -> HostError {
        let status = match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(Ok(status)) => describe_exit(status),
            Ok(Err(e)) => format!("unknown exit: {e}"),
            Err(_) => {
                let _ = self.child.start_kill();
                "channel closed; killed".to_string()
            }
        };
        HostError::Died { pid: self.pid, status }
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (_, Some(signal)) => format!("killed by signal {signal}"),
        (Some(code), _) => format!("exit code {code}"),
        _ => status.to_string(),
    }
}

/// Turns what R prints into log lines tagged with the host.
async fn forward_output(pid: u32, stream: &'static str, output: impl AsyncRead + Unpin) {
    let mut lines = BufReader::new(output).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(host = pid, stream, "r: {line}");
    }
}
