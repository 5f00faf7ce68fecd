//! `rfleet`: the one user-facing binary.
//!
//! - `serve`: dispatcher and worker in one process, over the embedded bus (default) or a
//!   broker (`--bus amqp://...`).
//! - `dispatcher`: the HTTP front alone, over a broker.
//! - `worker`: a worker alone (R host pool), over a broker.
//! - `config`: print the effective settings, secrets redacted.
//! - `package`: model packages to a model image FROM the worker image (`package`).
//! - `score`: a batch job on this machine: a file in, predictions out (`score`).

mod package;
mod score;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bus::{ConnectOptions, Transport};
use clap::{Parser, Subcommand};
use dispatcher::listener::{Handshake, HttpListener, ShutdownAnswers};
use dispatcher::Catalog;
use settings::{Settings, Sources};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use worker::Worker;

#[derive(Parser)]
#[command(name = "rfleet", version, about = "Serve R models as a fast, observable web service")]
struct Cli {
    /// Config file (TOML); default: ./rfleet.toml when present, or $RFLEET_CONFIG.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Dispatcher and a worker in one process (embedded bus unless --bus names a broker).
    Serve(Flags),
    /// The HTTP dispatcher alone; workers run elsewhere (needs a broker).
    Dispatcher(Flags),
    /// A worker alone: R hosts scoring requests from the broker.
    Worker(Flags),
    /// Print the effective settings (defaults < file < environment < flags) as TOML, with
    /// passwords and keys shown as `***`.
    Config(Flags),
    /// Build a model image: the model packages and the R packages they need (from Debian),
    /// FROM the worker image; one image per model version.
    Package(package::PackageArgs),
    /// Score a file (CSV, JSON Lines, Parquet) in chunks with R hosts of this process:
    /// predictions in input order, bad rows set aside, resumable with --resume.
    Score(score::ScoreArgs),
}

/// Flags that override settings; each names the key it sets.
#[derive(clap::Args, Clone)]
struct Flags {
    /// server.listen: address to listen on (port 0 picks one).
    #[arg(long)]
    listen: Option<String>,
    /// models.dir: a directory of model packages, or one package.
    #[arg(long)]
    models: Option<PathBuf>,
    /// models.default: the model `POST /score` uses when several are served.
    #[arg(long)]
    default_model: Option<String>,
    /// workers.n_hosts: R host processes (0 = one per core).
    #[arg(long)]
    hosts: Option<usize>,
    /// bus.kind and bus.url: `embedded`, or a broker such as amqp://guest:guest@127.0.0.1:5672/%2f
    #[arg(long)]
    bus: Option<String>,
    /// log.level: a tracing filter such as `info` or `debug`.
    #[arg(long)]
    log_level: Option<String>,
}

impl Flags {
    fn overrides(&self) -> Vec<(String, String)> {
        let mut overrides = Vec::new();
        let mut set = |key: &str, value: Option<String>| {
            if let Some(value) = value {
                overrides.push((key.to_string(), value));
            }
        };
        set("server.listen", self.listen.clone());
        set("models.dir", self.models.as_ref().map(|p| p.display().to_string()));
        set("models.default", self.default_model.clone());
        set("workers.n_hosts", self.hosts.map(|n| n.to_string()));
        set("log.level", self.log_level.clone());
        match self.bus.as_deref() {
            None => {}
            Some("embedded") => set("bus.kind", Some("embedded".into())),
            Some(url) => {
                set("bus.kind", Some("amqp".into()));
                set("bus.url", Some(url.to_string()));
            }
        }
        overrides
    }
}

fn main() -> anyhow::Result<()> {
    let cli = match Cli::parse() {
        Cli { command: Command::Score(args), config } => return score::run(args, config),
        cli => cli,
    };
    let flags = match &cli.command {
        Command::Serve(flags) | Command::Dispatcher(flags) | Command::Worker(flags) | Command::Config(flags) => flags,
        Command::Package(args) => {
            // Settings for the R host it loads the models in (`workers.rhost_path`,
            // `workers.host_start_timeout_ms`); its own logs only when something is wrong.
            let settings = Settings::load(&Sources::from_process(cli.config.clone(), Vec::new()))?;
            let quiet = settings::LogSettings { level: "warn".into(), ..settings.log.clone() };
            let telemetry = telemetry::init(&quiet, &settings::TraceSettings::default(), "rfleet-package")?;
            let packaged = package::run(args, &settings);
            telemetry.shutdown();
            return packaged;
        }
        Command::Score(_) => unreachable!("handled above"),
    };
    let settings = Settings::load(&Sources::from_process(cli.config.clone(), flags.overrides()))?;
    if let Command::Config(_) = cli.command {
        // Secret settings serialize as their redacted form (`settings::secret`); the
        // comment says so to whoever reads the output, or copies it into a config file.
        println!("# effective settings; secrets are redacted: passwords and keys show as \"***\"");
        print!("{}", toml::to_string_pretty(&settings).context("cannot print settings")?);
        return Ok(());
    }
    let role = match cli.command {
        Command::Serve(_) => "serve",
        Command::Dispatcher(_) => "dispatcher",
        Command::Worker(_) => "worker",
        Command::Config(_) | Command::Package(_) | Command::Score(_) => unreachable!("handled above"),
    };
    let service = if role == "serve" { "rfleet".to_string() } else { format!("rfleet-{role}") };
    // Before the runtime: the trace exporter's HTTP client must be made outside it.
    let telemetry = telemetry::init(&settings.log, &settings.traces, &service).context("cannot set up telemetry")?;
    telemetry::metrics::init_build_info(role);
    if role != "dispatcher" {
        worker::metrics::init();
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let ran = runtime.block_on(async {
        match cli.command {
            Command::Serve(_) => serve(settings).await,
            Command::Dispatcher(_) => dispatcher(settings).await,
            Command::Worker(_) => worker(settings).await,
            Command::Config(_) | Command::Package(_) | Command::Score(_) => unreachable!("handled above"),
        }
    });
    // The spans of the last requests, exported before the process ends.
    telemetry.shutdown();
    ran
}

/// Cancels the token on SIGTERM (Kubernetes' shutdown signal) or Ctrl-C.
fn cancel_on_signal(token: CancellationToken) -> anyhow::Result<()> {
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("sigterm received; draining"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received; draining"),
        }
        token.cancel();
    });
    Ok(())
}

/// How long `serve` waits for its own worker's first announcement before it listens, so
/// that its first answers already know the models.
const OWN_WORKER_WAIT: Duration = Duration::from_secs(10);

/// The bus `settings.bus` names (a broker is connected to in the background and waited for
/// a little, so that a fleet started together is ready together), open until `connection`.
async fn transport(
    settings: &Settings,
    role: &str,
    connection: &CancellationToken,
) -> anyhow::Result<Arc<dyn Transport>> {
    // Enough unacknowledged deliveries to keep every host busy and to fill a batch, but
    // bounded, so one worker does not hoard what other workers (or KEDA's new pods) could
    // take, and a draining worker has little to hand back.
    let prefetch = match settings.bus.prefetch {
        0 => {
            let n_hosts = worker::pool_config(&settings.workers).n_hosts;
            (n_hosts + settings.workers.max_batch_rows).clamp(2 * n_hosts, 256) as u16
        }
        n => n,
    };
    let name = format!("rfleet-{role}-{}", worker::worker_id(settings.workers.id.as_deref()));
    Ok(bus::connect(&settings.bus, ConnectOptions { name, prefetch }, connection.clone()).await?)
}

/// A catalog fed by every worker's announcements on `transport`, from now on.
fn follow_announcements(transport: &dyn Transport, settings: &Settings) -> Arc<Catalog> {
    let catalog = Arc::new(Catalog::keeping_idle(Duration::from_millis(settings.models.keep_idle_ms)));
    tokio::spawn(dispatcher::announcements::follow(transport.announcements(), catalog.clone()));
    catalog
}

/// Binds the listener and serves HTTP, or HTTPS when `[tls]` names a certificate, until
/// `shutdown`, then drains for at most `server.drain_timeout_ms`.
async fn http(
    settings: &Settings,
    requester: Arc<dyn bus::Requester>,
    catalog: Arc<Catalog>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Before binding: a certificate that does not load must not leave a port open meanwhile.
    let tls = dispatcher::tls::Tls::from_settings(&settings.tls).await.context("cannot set up tls")?;
    let listener = tokio::net::TcpListener::bind(&settings.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.server.listen))?;
    let address = listener.local_addr()?;
    // Every family at zero from the first scrape, before the first request.
    dispatcher::metrics::init();
    let state = dispatcher::AppState::new(requester, catalog, settings.server.clone(), settings.models.default.clone())
        .with_metrics(&settings.metrics)
        .with_traffic_file(settings.models.traffic_file.as_deref())
        .context("cannot read the traffic file")?
        .with_auth(&settings.auth)
        .await
        .context("cannot set up authentication")?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%address, scheme, "rfleet serving");
    // The one line on stdout: scripts and tests wait for it.
    println!("rfleet listening on {scheme}://{address}");
    let drain = Duration::from_millis(settings.server.drain_timeout_ms);
    let stopped = shutdown.clone().cancelled_owned();
    // HTTPS only when TLS is on: a plain-HTTP port beside it would be a way around it.
    // Either way, the connections the listener still holds when it closes are answered 503;
    // those answers are part of the drain.
    let (shutdown_answers, mut server) = match tls {
        Some(tls) => serve_on(tls.listener(listener), state, stopped),
        None => serve_on(HttpListener::plain(listener), state, stopped),
    };
    let drain_started = tokio::select! {
        result = &mut server => {
            result.context("http server task failed")?.context("http server failed")?;
            tokio::time::Instant::now()
        }
        _ = shutdown.cancelled() => {
            let drain_started = tokio::time::Instant::now();
            match tokio::time::timeout(drain, &mut server).await {
                Ok(result) => result.context("http server task failed")?.context("http server failed")?,
                Err(_) => tracing::warn!(drain_ms = drain.as_millis() as u64, "http drain timed out"),
            }
            drain_started
        }
    };
    let left = drain.saturating_sub(drain_started.elapsed());
    if tokio::time::timeout(left, shutdown_answers.finished()).await.is_err() {
        tracing::warn!("connections held at shutdown were not all answered within the drain");
    }
    Ok(())
}

/// Serves `listener` in a task of its own until `stopped`; with what awaits its answers at
/// shutdown.
fn serve_on<H: Handshake>(
    listener: HttpListener<H>,
    state: dispatcher::AppState,
    stopped: WaitForCancellationFutureOwned,
) -> (ShutdownAnswers, tokio::task::JoinHandle<std::io::Result<()>>) {
    (listener.shutdown_answers(), tokio::spawn(dispatcher::serve(listener, state, stopped)))
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    // Two stages: on a signal the HTTP side stops taking requests and drains; only then
    // does the worker stop, so requests already published still get their answers.
    let http_shutdown = CancellationToken::new();
    let worker_shutdown = CancellationToken::new();
    cancel_on_signal(http_shutdown.clone())?;
    // The bus outlives both stages: draining workers still reply over it.
    let connection = CancellationToken::new();
    let transport = transport(&settings, "serve", &connection).await?;
    // Subscribed before the worker starts, so its first announcement is heard.
    let catalog = follow_announcements(&*transport, &settings);
    let worker = Worker::start(&settings, transport.clone()).await?;
    // The dispatcher's /metrics holds the worker's too; a listener of its own only when asked.
    let listener = worker_listener(&settings, &worker, http_shutdown.clone()).await?;
    let worker_task = tokio::spawn(worker.run(worker_shutdown.clone()));
    if tokio::time::timeout(OWN_WORKER_WAIT, catalog.ready()).await.is_err() {
        tracing::warn!("this process's worker has not announced itself yet; serving anyway");
    }
    http(&settings, transport.requester(), catalog, http_shutdown).await?;
    worker_shutdown.cancel();
    worker_task.await.context("worker task failed")??;
    listener.stop().await;
    connection.cancel();
    tracing::info!("rfleet stopped");
    Ok(())
}

/// The bus of a `dispatcher` or `worker` process, which must be a broker.
async fn broker_process(
    settings: &Settings,
    role: &str,
) -> anyhow::Result<(Arc<dyn Transport>, CancellationToken, CancellationToken)> {
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone())?;
    // Closed only at the very end: a draining process still talks to the broker.
    let connection = CancellationToken::new();
    let transport = transport(settings, role, &connection).await?;
    anyhow::ensure!(
        !transport.in_process(),
        "`rfleet {role}` needs a broker: pass --bus amqp://... or set bus.kind = \"amqp\""
    );
    Ok((transport, shutdown, connection))
}

async fn dispatcher(settings: Settings) -> anyhow::Result<()> {
    let (transport, shutdown, connection) = broker_process(&settings, "dispatcher").await?;
    let catalog = follow_announcements(&*transport, &settings);
    http(&settings, transport.requester(), catalog, shutdown).await?;
    connection.cancel();
    tracing::info!("rfleet dispatcher stopped");
    Ok(())
}

async fn worker(settings: Settings) -> anyhow::Result<()> {
    let (transport, shutdown, connection) = broker_process(&settings, "worker").await?;
    let worker = Worker::start(&settings, transport).await?;
    // Bound before the ready line: whoever waits for it may scrape at once.
    let listener = worker_listener(&settings, &worker, shutdown.clone()).await?;
    println!("rfleet worker ready with {} R hosts", worker.pool().live_hosts());
    worker.run(shutdown).await?;
    listener.stop().await;
    connection.cancel();
    Ok(())
}

/// The worker's own listener (`metrics.listen`: `/metrics`, `/live`, `/ready`), if one is
/// configured; `/ready` turns 503 once `draining` fires, and it serves until stopped.
async fn worker_listener(
    settings: &Settings,
    worker: &Worker,
    draining: CancellationToken,
) -> anyhow::Result<WorkerListener> {
    let Some(listen) = &settings.metrics.listen else { return Ok(WorkerListener(None)) };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on metrics.listen {listen}"))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, "worker metrics and health listening");
    // On stdout like the other ready lines, for whoever picked port 0.
    println!("rfleet worker metrics on http://{address}");
    let health = worker::listen::Health::new(worker.pool().clone(), draining, settings.metrics.enabled);
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker::listen::serve(listener, health, stop.clone().cancelled_owned()));
    Ok(WorkerListener(Some((stop, task))))
}

/// A running worker listener, stopped once the worker has stopped.
struct WorkerListener(Option<(CancellationToken, tokio::task::JoinHandle<std::io::Result<()>>)>);

impl WorkerListener {
    async fn stop(self) {
        if let Some((stop, task)) = self.0 {
            stop.cancel();
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "the worker listener failed"),
                Err(error) => tracing::warn!(%error, "the worker listener task failed"),
            }
        }
    }
}
