//! `rfleet`: the one user-facing binary. `serve` runs dispatcher, embedded bus and worker
//! pool in one process; `config` prints the effective settings.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use settings::{Settings, Sources};
use tokio_util::sync::CancellationToken;

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
    /// Dispatcher, embedded bus and a worker pool in one process.
    Serve(ServeFlags),
    /// Print the effective settings (defaults < file < environment < flags) as TOML.
    Config(ServeFlags),
}

/// Flags that override settings; each names the key it sets.
#[derive(clap::Args, Clone)]
struct ServeFlags {
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
    /// log.level: a tracing filter such as `info` or `debug`.
    #[arg(long)]
    log_level: Option<String>,
}

impl ServeFlags {
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
        overrides
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let flags = match &cli.command {
        Command::Serve(flags) | Command::Config(flags) => flags.clone(),
    };
    let settings = Settings::load(&Sources::from_process(cli.config.clone(), flags.overrides()))?;
    match cli.command {
        Command::Config(_) => {
            print!("{}", toml::to_string_pretty(&settings).context("cannot print settings")?);
            Ok(())
        }
        Command::Serve(_) => {
            telemetry::init(&settings.log);
            let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(serve(settings))
        }
    }
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

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let models = worker::discover(&settings.models.dir)
        .with_context(|| format!("cannot find models in {}", settings.models.dir.display()))?;
    tracing::info!(models = ?models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), "model packages found");

    let catalog = Arc::new(bus::Catalog::default());
    let bus = bus::EmbeddedBus::new(settings.bus.capacity, settings.bus.request_queue.clone());
    let pool_config = worker::pool_config(&settings.workers);
    let n_hosts = pool_config.n_hosts;
    let pool = worker::Pool::start(pool_config, models, catalog.clone())
        .await
        .context("cannot start the first R host")?;

    // Two stages: on a signal the HTTP side stops taking requests and drains; only then
    // does the worker stop, so requests already published still get their answers.
    let http_shutdown = CancellationToken::new();
    let worker_shutdown = CancellationToken::new();
    cancel_on_signal(http_shutdown.clone())?;

    let consumer = bus.consumer(&settings.bus.request_queue);
    let consume_config = worker::ConsumeConfig {
        worker_id: worker::worker_id(settings.workers.id.as_deref()),
        max_in_flight: n_hosts + settings.workers.queue_capacity,
        drain_timeout: Duration::from_millis(settings.workers.drain_timeout_ms),
    };
    let worker_task = tokio::spawn(worker::run(consumer, pool.clone(), consume_config, worker_shutdown.clone()));

    let listener = tokio::net::TcpListener::bind(&settings.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.server.listen))?;
    let address = listener.local_addr()?;
    let state = dispatcher::AppState::new(
        Arc::new(bus.clone()),
        catalog.clone(),
        settings.server.clone(),
        settings.models.default.clone(),
    );
    tracing::info!(%address, n_hosts, "rfleet serving");
    // The one line on stdout: scripts and tests wait for it.
    println!("rfleet listening on http://{address}");

    let drain = Duration::from_millis(settings.server.drain_timeout_ms);
    let http = dispatcher::serve(listener, state, http_shutdown.clone().cancelled_owned());
    let mut http = tokio::spawn(http);
    tokio::select! {
        result = &mut http => result.context("http server task failed")?.context("http server failed")?,
        _ = http_shutdown.cancelled() => {
            match tokio::time::timeout(drain, &mut http).await {
                Ok(result) => result.context("http server task failed")?.context("http server failed")?,
                Err(_) => tracing::warn!(drain_ms = drain.as_millis() as u64, "http drain timed out"),
            }
        }
    }
    worker_shutdown.cancel();
    worker_task.await.context("worker task failed")?;
    pool.shutdown().await;
    tracing::info!("rfleet stopped");
    Ok(())
}
