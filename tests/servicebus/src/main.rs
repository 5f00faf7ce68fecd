//! `servicebus-standin`: serves the stand-in until SIGTERM or ctrl-c, after printing its
//! connection string (with the key: tests need it) once on stdout.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use servicebus_standin::{QueueConfig, Rights, SasRule, StandIn, StandInConfig};
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(about = "A stand-in for Azure Service Bus over AMQP 1.0 (plain TCP), for tests")]
struct Args {
    /// Port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// A queue: NAME, or NAME:session for one that requires sessions.
    #[arg(long = "queue", required = true)]
    queues: Vec<String>,
    /// A SAS rule with all rights: NAME=KEY. The first one's connection string is printed.
    #[arg(long = "key", required = true)]
    keys: Vec<String>,
    /// Peek-lock duration of every queue, in seconds.
    #[arg(long, default_value_t = 30)]
    lock_duration_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(EnvFilter::from_default_env()).init();
    let args = Args::parse();
    let mut queues = Vec::new();
    for spec in &args.queues {
        let (name, session) = match spec.split_once(':') {
            Some((name, "session")) => (name, true),
            Some((_, other)) => bail!("queue `{spec}`: unknown option `{other}` (only `session`)"),
            None => (spec.as_str(), false),
        };
        let lock_duration = Duration::from_secs(args.lock_duration_secs);
        queues.push(QueueConfig { requires_session: session, lock_duration, ..QueueConfig::new(name) });
    }
    let mut rules = Vec::new();
    for spec in &args.keys {
        let (key_name, key) = spec
            .split_once('=')
            .with_context(|| format!("--key `{}…`: expected NAME=KEY", &spec[..spec.len().min(8)]))?;
        rules.push(SasRule { key_name: key_name.into(), key: key.into(), rights: Rights::ALL });
    }
    let first_key = rules[0].key_name.clone();
    let config = StandInConfig { port: args.port, rules, queues, ..StandInConfig::default() };
    // Listen for SIGTERM before announcing readiness, so a stop right after it is graceful.
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let stand_in = StandIn::start(config).await.context("binding the listener")?;
    println!("{}", stand_in.connection_string(&first_key));
    tokio::select! {
        _ = terminate.recv() => {}
        ctrl_c = tokio::signal::ctrl_c() => ctrl_c.context("waiting for ctrl-c")?,
    }
    stand_in.shutdown().await;
    Ok(())
}
