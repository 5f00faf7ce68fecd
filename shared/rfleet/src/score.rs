//! `rfleet score`: a batch job on this machine. The embedded bus and a worker with its R
//! hosts run in this process (as `serve` runs them, without the HTTP front), the job runs
//! through the bus (`batch::run`), then the worker stops.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use settings::{Settings, Sources};
use tokio_util::sync::CancellationToken;
use worker::Worker;

/// How long the job waits for its own worker's first announcement (its R hosts loading
/// the models).
const OWN_WORKER_WAIT: Duration = Duration::from_secs(120);

#[derive(clap::Args)]
pub struct ScoreArgs {
    /// models.dir: the model packages, scored by R hosts of this process.
    #[arg(long)]
    models: PathBuf,
    /// The model to score with, as `GET /models` names it.
    #[arg(long)]
    model: String,
    /// The input file: CSV (with a header), JSON Lines or Parquet.
    #[arg(long)]
    input: PathBuf,
    /// The output file; its errors go to <output>.errors.csv, the job's state to
    /// <output>.rfleet-job/ until it is done.
    #[arg(long)]
    output: PathBuf,
    /// The input's format (csv, jsonl, parquet) when its extension does not say.
    #[arg(long)]
    format: Option<String>,
    /// The output's format; by default its extension's, else the input's.
    #[arg(long)]
    output_format: Option<String>,
    /// Input columns copied to the output before the predictions (ids, keys).
    #[arg(long, value_delimiter = ',')]
    keep: Vec<String>,
    /// Rows per chunk: one request, one R call unless R refuses a row in it.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    chunk_rows: u64,
    /// Chunks being scored at once (default: twice the R hosts).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    in_flight: Option<u64>,
    /// Stop once more rows than this are bad.
    #[arg(long, conflicts_with = "max_error_fraction")]
    max_errors: Option<u64>,
    /// Stop once more than this fraction of the rows read are bad (checked after each chunk).
    #[arg(long)]
    max_error_fraction: Option<f64>,
    /// Continue the job whose state is beside the output (after a crash, a kill or a stop).
    #[arg(long)]
    resume: bool,
    /// workers.n_hosts: R host processes (0 = one per core).
    #[arg(long)]
    hosts: Option<usize>,
    /// The `type` passed to R's `predict` (`response`, `prob`, ...).
    #[arg(long = "type")]
    predict_type: Option<String>,
    /// How long one chunk may take to be scored, in seconds.
    #[arg(long, default_value_t = 600)]
    chunk_timeout_s: u64,
    /// log.level: a tracing filter (default `warn`: the progress is what shows).
    #[arg(long)]
    log_level: Option<String>,
}

fn format(
    named: Option<&str>,
    path: &std::path::Path,
    fallback: Option<batch::Format>,
) -> anyhow::Result<batch::Format> {
    match named {
        Some(name) => {
            batch::Format::named(name).with_context(|| format!("unknown format '{name}': csv, jsonl or parquet"))
        }
        None => batch::Format::of_path(path)
            .or(fallback)
            .ok_or_else(|| batch::BatchError::Format { path: path.display().to_string() }.into()),
    }
}

/// Runs the job; its summary goes to stdout as one JSON line.
pub fn run(args: ScoreArgs, config: Option<PathBuf>) -> anyhow::Result<()> {
    let mut overrides = vec![
        ("models.dir".to_string(), args.models.display().to_string()),
        ("bus.kind".to_string(), "embedded".to_string()),
        ("log.level".to_string(), args.log_level.clone().unwrap_or_else(|| "warn".into())),
    ];
    if let Some(hosts) = args.hosts {
        overrides.push(("workers.n_hosts".to_string(), hosts.to_string()));
    }
    let settings = Settings::load(&Sources::from_process(config, overrides))?;
    let input_format = format(args.format.as_deref(), &args.input, None)?;
    let output_format = format(args.output_format.as_deref(), &args.output, Some(input_format))?;
    let limit = match (args.max_errors, args.max_error_fraction) {
        (Some(count), _) => batch::ErrorLimit::Count(count),
        (None, Some(fraction)) => {
            anyhow::ensure!((0.0..=1.0).contains(&fraction), "--max-error-fraction {fraction} is not between 0 and 1");
            batch::ErrorLimit::Fraction(fraction)
        }
        (None, None) => batch::ErrorLimit::Unlimited,
    };
    let telemetry =
        telemetry::init(&settings.log, &settings.traces, "rfleet-score").context("cannot set up telemetry")?;
    worker::metrics::init();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let job = batch::Job {
        model: args.model.clone(),
        input: args.input.clone(),
        input_format,
        output: args.output.clone(),
        output_format,
        keep: args.keep.clone(),
        chunk_rows: args.chunk_rows as usize,
        in_flight: 0,
        limit,
        resume: args.resume,
        options: protocol::Options { predict_type: args.predict_type.clone(), ..Default::default() },
        chunk_timeout: Duration::from_secs(args.chunk_timeout_s),
    };
    let ran = runtime.block_on(score(&settings, job, args.in_flight));
    telemetry.shutdown();
    let summary = ran?;
    println!("{}", serde_json::to_string(&summary).context("cannot print the summary")?);
    Ok(())
}

async fn score(settings: &Settings, mut job: batch::Job, in_flight: Option<u64>) -> anyhow::Result<batch::Summary> {
    let connection = CancellationToken::new();
    let transport = crate::transport(settings, "score", &connection).await?;
    let catalog = crate::follow_announcements(&*transport, settings);
    let worker = Worker::start(settings, transport.clone()).await?;
    let worker_shutdown = CancellationToken::new();
    let worker_task = tokio::spawn(worker.run(worker_shutdown.clone()));
    let ran = async {
        tokio::time::timeout(OWN_WORKER_WAIT, catalog.ready())
            .await
            .context("the worker did not announce its models in time")?;
        let Some(model) = catalog.model(&job.model, None) else {
            let served: Vec<String> = catalog.models().into_iter().map(|m| m.name).collect();
            let failed = catalog.snapshot().failed.iter().find(|f| f.name == job.model).map(|f| f.message.clone());
            match failed {
                Some(message) => anyhow::bail!("model '{}' did not load: {message}", job.model),
                None => anyhow::bail!(
                    "no model '{}' in {} (models: {})",
                    job.model,
                    settings.models.dir.display(),
                    served.join(", ")
                ),
            }
        };
        job.in_flight = in_flight.map_or(2 * catalog.live_hosts().max(1), |n| n as usize);
        let progress = batch::Progress::on_stderr();
        let job_run = batch::run(&job, transport.requester(), model.schema, progress);
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot listen for SIGTERM")?;
        // The job's state is whole at any instant: stopping on a signal loses only the
        // chunks in flight, which a resume scores again.
        let interrupted = "interrupted; the chunks done are kept: rerun with --resume";
        tokio::select! {
            summary = job_run => Ok(summary?),
            _ = tokio::signal::ctrl_c() => anyhow::bail!(interrupted),
            _ = sigterm.recv() => anyhow::bail!(interrupted),
        }
    }
    .await;
    worker_shutdown.cancel();
    worker_task.await.context("worker task failed")??;
    connection.cancel();
    ran
}
