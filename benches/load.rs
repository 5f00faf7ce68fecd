//! `rfleet-load`: a closed-loop HTTP/1.1 load generator for rfleet's scoring endpoints.
//!
//! `concurrency` tasks each own one keep-alive connection and send requests back to back:
//! a task sends its next request only when the previous reply has been read in full, so
//! the offered load adapts to the service (closed loop) and `concurrency` is the number
//! of requests in flight. Request bodies are the lines of `--body-file`, used in turn.
//!
//! Connections are driven with hyper's connection-level API rather than a pooled client:
//! a pool may open a second connection when the first is not yet marked idle after a
//! reply, which would turn "one connection per task" into connection churn.
//!
//! A warm-up phase (not recorded) runs first on the same connections, then the measured
//! phase, which stops after `--requests` requests or `--duration-s` seconds, whichever
//! comes first. Every latency of the measured phase is kept, so percentiles are exact
//! (nearest rank over the successful replies); nothing is sampled or bucketed.
//!
//! rfleet's successful replies say how long the R host spent on them (`x-rfleet-r-ms`).
//! For each reply that carries it, the harness also keeps the *overhead*: its end-to-end
//! latency minus that R time, i.e. everything that is not R (this client, HTTP, JSON,
//! the bus, waiting for a host, the host channel). Its percentiles are exact too, and
//! left out of the summary when no reply carried the header.
//!
//! Replies may also say how the worker scored them (`x-rfleet-path`: `whole`, `batch:N`
//! for N requests in one R call, `rows:K` / `trees:K` for one request split across K
//! hosts, or a combination such as `batch:5+trees:2`). The harness counts each distinct
//! value and estimates the R calls made: a request contributes K/N calls (K parts, N
//! requests sharing them), so `requests_per_r_call` is what batching achieved.
//!
//! The harness only talks to loopback addresses: it is a benchmark tool, not a way to
//! load somebody else's service.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{header, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How many failures are printed in full; the rest are only counted.
const N_ERRORS_PRINTED: usize = 5;
/// Printed error bodies are cut to this many characters.
const ERROR_BODY_CHARS: usize = 300;
/// The reply header with the R host's time for the request, in ms with 3 decimals.
const R_MS_HEADER: &str = "x-rfleet-r-ms";
/// The reply header saying how the worker scored the request (whole, batched, split).
const PATH_HEADER: &str = "x-rfleet-path";

#[derive(Parser, Debug)]
#[command(name = "rfleet-load", version, about = "Closed-loop HTTP load generator for rfleet (loopback only)")]
struct Args {
    /// The endpoint to POST to, e.g. http://127.0.0.1:8080/score (loopback hosts only).
    #[arg(long)]
    url: String,
    /// A file with one JSON request body per line; requests cycle through the lines.
    #[arg(long)]
    body_file: PathBuf,
    /// Requests in flight: each one is a task with its own keep-alive connection.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Requests in the measured phase.
    #[arg(long, default_value_t = 2000)]
    requests: u64,
    /// Requests sent (on the same connections) before measuring; not recorded.
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// Upper bound on each phase, in seconds: the phase stops early when it is reached.
    #[arg(long, default_value_t = 300)]
    duration_s: u64,
    /// Per-request timeout in seconds; a request that takes longer counts as an error.
    #[arg(long, default_value_t = 30)]
    timeout_s: u64,
    /// Exit with status 1 when more than this many measured requests failed.
    #[arg(long, default_value_t = 0)]
    max_errors: u64,
    /// Runtime threads for the load generator itself (1 = single-threaded runtime, which
    /// leaves the most CPU to the service on a small machine).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run_cli(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("rfleet-load: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_cli(args: Args) -> anyhow::Result<()> {
    let target = loopback_url(&args.url)?;
    ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    ensure!(args.requests >= 1, "--requests must be at least 1");
    ensure!(args.duration_s >= 1, "--duration-s must be at least 1");
    ensure!(args.threads >= 1, "--threads must be at least 1");
    let bodies = read_bodies(&args.body_file)?;

    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()
    }
    .context("cannot start the tokio runtime")?;

    let plan = Plan {
        target,
        bodies: Arc::new(bodies),
        concurrency: args.concurrency,
        timeout: Duration::from_secs(args.timeout_s),
        phase_limit: Duration::from_secs(args.duration_s),
    };
    let summary = runtime.block_on(measure(&plan, args.warmup, args.requests));

    println!("{}", summary.line());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&summary.to_json()).context("cannot encode the summary")?;
        std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))?;
    }
    if summary.errors() > args.max_errors {
        bail!("{} of {} requests failed (allowed: {})", summary.errors(), summary.requests, args.max_errors);
    }
    Ok(())
}

/// Parses `raw` and refuses anything that is not plain HTTP to a loopback host.
fn loopback_url(raw: &str) -> anyhow::Result<Target> {
    let uri: Uri = raw.parse().with_context(|| format!("invalid --url {raw:?}"))?;
    ensure!(uri.scheme_str() == Some("http"), "--url must start with http:// (got {raw:?})");
    let authority = uri.authority().context("--url has no host")?;
    let host = authority.host();
    let is_loopback = host.eq_ignore_ascii_case("localhost")
        || host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    ensure!(is_loopback, "--url must point at a loopback host such as 127.0.0.1 (got {host:?})");
    Ok(Target {
        connect_to: format!("{host}:{}", authority.port_u16().unwrap_or(80)),
        host_header: authority.as_str().to_string(),
        path: uri.path_and_query().map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
    })
}

/// Where requests go: the socket address to connect to and the request line's parts.
#[derive(Clone, Debug)]
struct Target {
    /// `host:port`, resolved at each connect.
    connect_to: String,
    /// The `Host` header.
    host_header: String,
    /// Origin-form request target, e.g. `/score`.
    path: String,
}

/// The non-empty lines of `path`, each one request body.
fn read_bodies(path: &Path) -> anyhow::Result<Vec<Bytes>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bodies: Vec<_> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|line| Bytes::copy_from_slice(line.as_bytes()))
        .collect();
    ensure!(!bodies.is_empty(), "{} has no request bodies (one JSON body per line)", path.display());
    Ok(bodies)
}

/// What to send, and where; shared by both phases.
struct Plan {
    target: Target,
    bodies: Arc<Vec<Bytes>>,
    concurrency: usize,
    timeout: Duration,
    phase_limit: Duration,
}

/// The measured phase's outcome.
#[derive(Debug)]
struct Summary {
    concurrency: usize,
    /// Requests that completed (successfully or not) in the measured phase.
    requests: u64,
    /// Replies with a non-2xx status.
    http_errors: u64,
    /// Requests that got no reply: connect, reset, timeout.
    transport_errors: u64,
    /// Connections opened during the phase (one per task when keep-alive works).
    connections: u64,
    /// Wall time of the measured phase.
    seconds: f64,
    /// Latencies of the successful requests, in nanoseconds, sorted ascending.
    latencies_ns: Vec<u64>,
    /// R time (`x-rfleet-r-ms`) of the successful replies that carried it, in
    /// nanoseconds, sorted ascending.
    r_ns: Vec<u64>,
    /// Latency minus R time of the same replies, in nanoseconds, sorted ascending.
    /// Signed: the two come from different clocks, rounded differently.
    overheads_ns: Vec<i64>,
    /// How many successful replies carried each distinct `x-rfleet-path` value.
    paths: BTreeMap<String, u64>,
}

impl Summary {
    fn errors(&self) -> u64 {
        self.http_errors + self.transport_errors
    }

    /// Successful requests per second of wall time.
    fn rps(&self) -> f64 {
        if self.seconds > 0.0 {
            self.latencies_ns.len() as f64 / self.seconds
        } else {
            0.0
        }
    }

    fn percentile_ms(&self, p: f64) -> Option<f64> {
        percentile(&self.latencies_ns, p).map(|ns| ns as f64 / 1e6)
    }

    fn overhead_percentile_ms(&self, p: f64) -> Option<f64> {
        percentile(&self.overheads_ns, p).map(|ns| ns as f64 / 1e6)
    }

    fn r_percentile_ms(&self, p: f64) -> Option<f64> {
        percentile(&self.r_ns, p).map(|ns| ns as f64 / 1e6)
    }

    fn line(&self) -> String {
        let ms = |p: f64| self.percentile_ms(p).map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
        let mut line = format!(
            "rfleet-load: concurrency={} requests={} errors={} (http={} transport={}) connections={} seconds={:.3} \
             rps={:.1} p50_ms={} p90_ms={} p99_ms={} max_ms={}",
            self.concurrency,
            self.requests,
            self.errors(),
            self.http_errors,
            self.transport_errors,
            self.connections,
            self.seconds,
            self.rps(),
            ms(50.0),
            ms(90.0),
            ms(99.0),
            ms(100.0),
        );
        if !self.overheads_ns.is_empty() {
            // Overheads are well under a millisecond at low load: one more decimal.
            let overhead = |p: f64| self.overhead_percentile_ms(p).map_or_else(String::new, |v| format!("{v:.3}"));
            let r = |p: f64| self.r_percentile_ms(p).map_or_else(String::new, |v| format!("{v:.2}"));
            line += &format!(
                " r_p50_ms={} overhead_p50_ms={} overhead_p90_ms={} overhead_p99_ms={} overhead_max_ms={} \
                 (over {} replies with {R_MS_HEADER})",
                r(50.0),
                overhead(50.0),
                overhead(90.0),
                overhead(99.0),
                overhead(100.0),
                self.overheads_ns.len(),
            );
        }
        if !self.paths.is_empty() {
            let counts: Vec<String> = self.paths.iter().map(|(path, n)| format!("{path}={n}")).collect();
            line += &format!(" paths[{}]", counts.join(","));
            if let Some((_, per_call)) = r_calls(&self.paths) {
                line += &format!(" requests_per_r_call={per_call:.2}");
            }
        }
        line
    }

    fn to_json(&self) -> serde_json::Value {
        let round = |v: f64| (v * 1000.0).round() / 1000.0;
        let ms = |p: f64| self.percentile_ms(p).map(round);
        let mut json = serde_json::json!({
            "concurrency": self.concurrency,
            "requests": self.requests,
            "errors": self.errors(),
            "http_errors": self.http_errors,
            "transport_errors": self.transport_errors,
            "connections": self.connections,
            "seconds": round(self.seconds),
            "rps": round(self.rps()),
            "min_ms": ms(0.0),
            "p50_ms": ms(50.0),
            "p90_ms": ms(90.0),
            "p99_ms": ms(99.0),
            "max_ms": ms(100.0),
        });
        if !self.overheads_ns.is_empty() {
            let overhead = |p: f64| self.overhead_percentile_ms(p).map(round);
            let r = |p: f64| self.r_percentile_ms(p).map(round);
            let fields = serde_json::json!({
                "overhead_samples": self.overheads_ns.len(),
                "overhead_p50_ms": overhead(50.0),
                "overhead_p90_ms": overhead(90.0),
                "overhead_p99_ms": overhead(99.0),
                "overhead_max_ms": overhead(100.0),
                "r_p50_ms": r(50.0),
                "r_p99_ms": r(99.0),
            });
            if let (Some(all), serde_json::Value::Object(more)) = (json.as_object_mut(), fields) {
                all.extend(more);
            }
        }
        if !self.paths.is_empty() {
            if let Some(all) = json.as_object_mut() {
                all.insert("paths".into(), serde_json::json!(self.paths));
                if let Some((calls, per_call)) = r_calls(&self.paths) {
                    all.insert("r_calls".into(), serde_json::json!(round(calls)));
                    all.insert("requests_per_r_call".into(), serde_json::json!(round(per_call)));
                }
            }
        }
        json
    }
}

/// The R calls one request accounts for, from its `x-rfleet-path`: K parts shared by N
/// requests make K/N (`whole` 1, `batch:4` 1/4, `trees:2` 2, `batch:4+rows:2` 1/2).
/// `None` for a value this harness does not know.
fn r_calls_of_path(path: &str) -> Option<f64> {
    let mut calls = 1.0;
    for part in path.trim().split('+') {
        match part.split_once(':') {
            None if part == "whole" => {}
            Some(("batch", n)) => calls /= n.parse::<u32>().ok().filter(|&n| n >= 1)? as f64,
            Some(("rows" | "trees", k)) => calls *= k.parse::<u32>().ok().filter(|&k| k >= 1)? as f64,
            _ => return None,
        }
    }
    Some(calls)
}

/// Estimated R calls over the replies counted in `paths`, and requests per R call;
/// `None` when any value is unknown (the estimate would be wrong) or there are none.
fn r_calls(paths: &BTreeMap<String, u64>) -> Option<(f64, f64)> {
    let mut calls = 0.0;
    let mut requests = 0u64;
    for (path, &n) in paths {
        calls += r_calls_of_path(path)? * n as f64;
        requests += n;
    }
    (calls > 0.0).then(|| (calls, requests as f64 / calls))
}

/// The R time a reply reports in `x-rfleet-r-ms` (milliseconds, e.g. `4.991`), in
/// nanoseconds; `None` when the value is not a finite, non-negative number.
fn parse_r_ms(value: &[u8]) -> Option<u64> {
    let ms: f64 = std::str::from_utf8(value).ok()?.trim().parse().ok()?;
    (ms.is_finite() && ms >= 0.0).then(|| (ms * 1e6).round() as u64)
}

/// End-to-end latency minus R time, both in nanoseconds; negative only if the R host's
/// clock ran ahead of the client's (rounding), which the percentiles keep rather than hide.
fn overhead_ns(latency_ns: u64, r_ns: u64) -> i64 {
    i64::try_from(latency_ns).unwrap_or(i64::MAX).saturating_sub(i64::try_from(r_ns).unwrap_or(i64::MAX))
}

/// Nearest-rank percentile of ascending `sorted`: the smallest sample with at least
/// `p` percent of the samples at or below it (R's `quantile(type = 1)`).
fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Runs the warm-up phase, then the measured phase, on the same connections.
async fn measure(plan: &Plan, n_warmup: u64, n_requests: u64) -> Summary {
    let mut connections: Vec<Option<Connection>> = (0..plan.concurrency).map(|_| None).collect();
    if n_warmup > 0 {
        let warmup;
        (warmup, connections) = run_phase(plan, connections, 0, n_warmup).await;
        eprintln!(
            "rfleet-load: warm-up: {} requests, {} errors, {} connections, {:.3} s",
            warmup.requests,
            warmup.errors(),
            warmup.connections,
            warmup.seconds
        );
    }
    // The measured phase continues through the bodies where the warm-up stopped.
    let (summary, _connections) = run_phase(plan, connections, n_warmup, n_requests).await;
    summary
}

/// What one task saw.
#[derive(Default)]
struct TaskTally {
    latencies_ns: Vec<u64>,
    r_ns: Vec<u64>,
    overheads_ns: Vec<i64>,
    paths: BTreeMap<String, u64>,
    http_errors: u64,
    transport_errors: u64,
    connections: u64,
}

/// Sends `n_requests` requests (or fewer when the phase's time is up) with one task per
/// connection slot, starting at body `first_body`; hands the connections back so the
/// next phase reuses them.
async fn run_phase(
    plan: &Plan,
    connections: Vec<Option<Connection>>,
    first_body: u64,
    n_requests: u64,
) -> (Summary, Vec<Option<Connection>>) {
    let next_request = Arc::new(AtomicU64::new(0));
    let n_errors_seen = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let stop_at = started + plan.phase_limit;

    let mut tasks = tokio::task::JoinSet::new();
    for mut connection in connections {
        let target = plan.target.clone();
        let timeout = plan.timeout;
        let bodies = Arc::clone(&plan.bodies);
        let next_request = Arc::clone(&next_request);
        let n_errors_seen = Arc::clone(&n_errors_seen);
        tasks.spawn(async move {
            let mut tally = TaskTally::default();
            loop {
                let index = next_request.fetch_add(1, Ordering::Relaxed);
                if index >= n_requests || Instant::now() >= stop_at {
                    break;
                }
                let body = &bodies[((first_body + index) % bodies.len() as u64) as usize];
                let sent_at = Instant::now();
                let outcome =
                    match tokio::time::timeout(timeout, send(&target, &mut connection, &mut tally, body)).await {
                        Ok(outcome) => outcome,
                        Err(_) => Err(Failure::Timeout(timeout)),
                    };
                let latency_ns = sent_at.elapsed().as_nanos() as u64;
                let failure = match outcome {
                    Ok((r_ns, path)) => {
                        tally.latencies_ns.push(latency_ns);
                        if let Some(path) = path {
                            *tally.paths.entry(path).or_default() += 1;
                        }
                        if let Some(r_ns) = r_ns {
                            tally.r_ns.push(r_ns);
                            tally.overheads_ns.push(overhead_ns(latency_ns, r_ns));
                        }
                        continue;
                    }
                    Err(failure) => failure,
                };
                if let Failure::Status(..) = failure {
                    tally.http_errors += 1;
                } else {
                    tally.transport_errors += 1;
                    // The connection's state is unknown after a transport failure: start over.
                    connection = None;
                }
                let seen = n_errors_seen.fetch_add(1, Ordering::Relaxed) + 1;
                if seen <= N_ERRORS_PRINTED as u64 {
                    eprintln!("rfleet-load: error {seen} (request {index}): {failure}");
                }
            }
            (tally, connection)
        });
    }

    let mut summary = Summary {
        concurrency: plan.concurrency,
        requests: 0,
        http_errors: 0,
        transport_errors: 0,
        connections: 0,
        seconds: 0.0,
        latencies_ns: Vec::with_capacity(n_requests.min(10_000_000) as usize),
        r_ns: Vec::new(),
        overheads_ns: Vec::new(),
        paths: BTreeMap::new(),
    };
    let mut connections = Vec::with_capacity(plan.concurrency);
    while let Some(joined) = tasks.join_next().await {
        // A task only ends by returning its tally; a panic there is a bug in this file.
        let (tally, connection) = joined.expect("load task panicked");
        summary.http_errors += tally.http_errors;
        summary.transport_errors += tally.transport_errors;
        summary.connections += tally.connections;
        summary.latencies_ns.extend(tally.latencies_ns);
        summary.r_ns.extend(tally.r_ns);
        summary.overheads_ns.extend(tally.overheads_ns);
        for (path, n) in tally.paths {
            *summary.paths.entry(path).or_default() += n;
        }
        connections.push(connection);
    }
    summary.seconds = started.elapsed().as_secs_f64();
    summary.requests = summary.latencies_ns.len() as u64 + summary.errors();
    summary.latencies_ns.sort_unstable();
    summary.r_ns.sort_unstable();
    summary.overheads_ns.sort_unstable();
    (summary, connections)
}

/// One task's HTTP/1.1 connection; hyper drives it on a task of its own, which ends when
/// the connection closes or this handle is dropped.
struct Connection {
    sender: SendRequest<Full<Bytes>>,
}

impl Connection {
    async fn open(target: &Target) -> Result<Self, Failure> {
        let stream = TcpStream::connect(&target.connect_to).await.map_err(Failure::Connect)?;
        // Requests are small and latency-bound: do not let Nagle hold them back.
        stream.set_nodelay(true).map_err(Failure::Connect)?;
        let (sender, driver) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(Failure::Http)?;
        tokio::spawn(async move {
            // Its end (close or error) shows up at the next `ready()` of the sender.
            let _ = driver.await;
        });
        Ok(Connection { sender })
    }
}

/// Why a request did not succeed.
#[derive(Debug)]
enum Failure {
    /// A reply with a non-2xx status, and the start of its body.
    Status(hyper::StatusCode, String),
    /// The connection could not be opened.
    Connect(std::io::Error),
    /// The connection failed while sending or receiving.
    Http(hyper::Error),
    /// No complete reply within the per-request timeout.
    Timeout(Duration),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status(status, body) => write!(f, "HTTP {status}: {body}"),
            Failure::Connect(error) => write!(f, "cannot connect: {error}"),
            Failure::Http(error) => write!(f, "connection failed: {error}"),
            Failure::Timeout(timeout) => write!(f, "no reply within {timeout:?}"),
        }
    }
}

/// One request on the task's connection, opening it first when there is none or when the
/// server closed it. The reply body is read in full so the connection can be reused and
/// the latency covers the whole answer. A success returns the reply's R time in
/// nanoseconds, when it has a valid `x-rfleet-r-ms`, and its `x-rfleet-path`.
async fn send(
    target: &Target,
    connection: &mut Option<Connection>,
    tally: &mut TaskTally,
    body: &Bytes,
) -> Result<(Option<u64>, Option<String>), Failure> {
    // A kept-alive connection may have been closed by the server since the last reply
    // (idle timeout, `connection: close`); that is not a failed request, so reconnect.
    if let Some(open) = connection {
        if open.sender.ready().await.is_err() {
            *connection = None;
        }
    }
    let open = match connection {
        Some(open) => open,
        None => {
            tally.connections += 1;
            connection.insert(Connection::open(target).await?)
        }
    };
    let request = Request::post(target.path.as_str())
        .header(header::HOST, target.host_header.as_str())
        .header(header::CONTENT_TYPE, "application/json")
        // A `Bytes` clone shares the buffer: no copy per request.
        .body(Full::new(body.clone()))
        .expect("a request built from a validated URL is valid");
    let response = open.sender.send_request(request).await.map_err(Failure::Http)?;
    let status = response.status();
    let r_ns = response.headers().get(R_MS_HEADER).and_then(|value| parse_r_ms(value.as_bytes()));
    let path = response.headers().get(PATH_HEADER).and_then(|value| value.to_str().ok()).map(str::to_string);
    let reply = response.into_body().collect().await.map_err(Failure::Http)?.to_bytes();
    if status.is_success() {
        Ok((r_ns, path))
    } else {
        let text: String = String::from_utf8_lossy(&reply).chars().take(ERROR_BODY_CHARS).collect();
        Err(Failure::Status(status, text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    fn check_percentile(samples: &[u64], p: f64, expected: Option<u64>) {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        assert_eq!(percentile(&sorted, p), expected, "p{p} of {samples:?}");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        check_percentile(&[], 50.0, None);
        check_percentile(&[7], 0.0, Some(7));
        check_percentile(&[7], 99.0, Some(7));
        check_percentile(&[1, 2, 3, 4], 50.0, Some(2));
        check_percentile(&[1, 2, 3, 4], 51.0, Some(3));
        check_percentile(&[4, 3, 2, 1], 100.0, Some(4));
        let hundred: Vec<u64> = (1..=100).collect();
        check_percentile(&hundred, 50.0, Some(50));
        check_percentile(&hundred, 90.0, Some(90));
        check_percentile(&hundred, 99.0, Some(99));
        check_percentile(&hundred, 99.5, Some(100));
    }

    fn check_url(raw: &str, accepted: bool) {
        assert_eq!(loopback_url(raw).is_ok(), accepted, "{raw}");
    }

    #[test]
    fn only_loopback_urls_are_accepted() {
        check_url("http://127.0.0.1:8080/score", true);
        check_url("http://127.0.0.2/score", true);
        check_url("http://localhost:1/score", true);
        check_url("http://[::1]:9/score", true);
        check_url("http://10.0.0.1/score", false);
        check_url("http://example.com/score", false);
        check_url("https://127.0.0.1/score", false);
        check_url("not a url", false);
        assert_eq!(loopback_url("http://localhost/v2/models/m/infer?x=1").unwrap().connect_to, "localhost:80");
        assert_eq!(loopback_url("http://localhost/v2/models/m/infer?x=1").unwrap().path, "/v2/models/m/infer?x=1");
        assert_eq!(loopback_url("http://[::1]:9").unwrap().path, "/");
    }

    /// A minimal HTTP/1.1 keep-alive server: answers 200 with the request body echoed, or
    /// 500 when the body contains "bad". A body that is a JSON array whose first element
    /// has `"r_ms": "<text>"` gets that text back as `x-rfleet-r-ms` (`"path"` as
    /// `x-rfleet-path`), and one with
    /// `"sleep_ms": <n>` is answered after n ms. Returns its address and a count of
    /// connections.
    async fn echo_server() -> (std::net::SocketAddr, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let n_connections = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&n_connections);
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    loop {
                        let mut content_length = 0usize;
                        let mut line = String::new();
                        loop {
                            line.clear();
                            if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                            if let Some((name, value)) = line.split_once(':') {
                                if name.eq_ignore_ascii_case("content-length") {
                                    content_length = value.trim().parse().unwrap();
                                }
                            }
                        }
                        let mut body = vec![0; content_length];
                        stream.read_exact(&mut body).await.unwrap();
                        let status = if body.windows(3).any(|w| w == b"bad") { "500 Oops" } else { "200 OK" };
                        let first = serde_json::from_slice::<serde_json::Value>(&body)
                            .ok()
                            .and_then(|json| json.get(0).cloned())
                            .unwrap_or_default();
                        if let Some(sleep_ms) = first["sleep_ms"].as_u64() {
                            tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
                        }
                        let r_ms = first["r_ms"]
                            .as_str()
                            .map_or_else(String::new, |text| format!("{R_MS_HEADER}: {text}\r\n"));
                        let path = first["path"]
                            .as_str()
                            .map_or_else(String::new, |text| format!("{PATH_HEADER}: {text}\r\n"));
                        let reply = format!(
                            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{r_ms}{path}content-length: {}\r\n\r\n",
                            body.len()
                        );
                        // One write: two small ones would meet Nagle and delayed ACKs.
                        let mut reply = reply.into_bytes();
                        reply.extend_from_slice(&body);
                        stream.get_mut().write_all(&reply).await.unwrap();
                    }
                });
            }
        });
        (addr, n_connections)
    }

    fn plan(url: &str, lines: &[&str], concurrency: usize) -> Plan {
        Plan {
            target: loopback_url(url).unwrap(),
            bodies: Arc::new(lines.iter().map(|l| Bytes::copy_from_slice(l.as_bytes())).collect()),
            concurrency,
            timeout: Duration::from_secs(5),
            phase_limit: Duration::from_secs(30),
        }
    }

    #[tokio::test]
    async fn counts_requests_errors_and_keeps_one_connection_per_task() {
        let (addr, n_connections) = echo_server().await;
        let lines = [r#"[{"x":1}]"#, r#"[{"x":"bad"}]"#, r#"[{"x":2}]"#];
        let plan = plan(&format!("http://{addr}/score"), &lines, 3);
        let summary = measure(&plan, 6, 30).await;
        assert_eq!(summary.requests, 30);
        // Bodies cycle through the three lines, so exactly one request in three fails.
        assert_eq!(summary.http_errors, 10);
        assert_eq!(summary.transport_errors, 0);
        assert_eq!(summary.latencies_ns.len(), 20);
        assert!(summary.latencies_ns.windows(2).all(|w| w[0] <= w[1]));
        // Warm-up and measured phase share the connections: one per task, never more.
        assert_eq!(n_connections.load(Ordering::SeqCst), 3);
        assert_eq!(summary.connections, 0, "the measured phase reuses the warm-up's connections");
        let json = summary.to_json();
        assert_eq!(json["errors"], 10);
        assert_eq!(json["concurrency"], 3);
        // No reply carried x-rfleet-r-ms: no overhead, in the line or the JSON.
        assert!(summary.overheads_ns.is_empty());
        assert!(!summary.line().contains("overhead"), "{}", summary.line());
        let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
        assert!(keys.iter().all(|k| !k.starts_with("overhead") && !k.starts_with("r_")), "{keys:?}");
    }

    #[test]
    fn r_ms_header_values_become_nanoseconds() {
        assert_eq!(parse_r_ms(b"4.991"), Some(4_991_000));
        assert_eq!(parse_r_ms(b"0.001"), Some(1_000));
        assert_eq!(parse_r_ms(b" 12 "), Some(12_000_000));
        assert_eq!(parse_r_ms(b"0.000"), Some(0));
        assert_eq!(parse_r_ms(b"123456.789"), Some(123_456_789_000));
        for bad in [&b""[..], b"-1.000", b"NaN", b"inf", b"4,991", b"ms", b"\xff"] {
            assert_eq!(parse_r_ms(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn overhead_is_latency_minus_r_time() {
        assert_eq!(overhead_ns(5_520_000, 4_991_000), 529_000);
        assert_eq!(overhead_ns(4_991_000, 4_991_000), 0);
        // A host clock a hair ahead shows up as a negative overhead, not as a wrap-around.
        assert_eq!(overhead_ns(4_990_999, 4_991_000), -1);
        assert_eq!(overhead_ns(0, u64::MAX), -i64::MAX);
    }

    /// A summary of the given successful (latency, R time) pairs, in nanoseconds, sorted
    /// as `run_phase` leaves it.
    fn summary_of(samples: &[(u64, Option<u64>)]) -> Summary {
        let mut summary = Summary {
            concurrency: 1,
            requests: samples.len() as u64,
            http_errors: 0,
            transport_errors: 0,
            connections: 0,
            seconds: 1.0,
            latencies_ns: samples.iter().map(|&(latency, _)| latency).collect(),
            r_ns: samples.iter().filter_map(|&(_, r)| r).collect(),
            overheads_ns: samples.iter().filter_map(|&(latency, r)| r.map(|r| overhead_ns(latency, r))).collect(),
            paths: BTreeMap::new(),
        };
        summary.latencies_ns.sort_unstable();
        summary.r_ns.sort_unstable();
        summary.overheads_ns.sort_unstable();
        summary
    }

    #[test]
    fn overhead_percentiles_are_exact_and_per_request() {
        // 100 requests: R takes 5 ms each except request 100 (50 ms, a GC pause); the
        // overhead of request i is i * 10 us. The largest latency is the GC pause, the
        // largest overhead is not: overhead is taken per request, before sorting.
        let samples: Vec<(u64, Option<u64>)> = (1..=100u64)
            .map(|i| {
                let r = if i == 100 { 50_000_000 } else { 5_000_000 };
                (r + i * 10_000, Some(r))
            })
            .collect();
        let summary = summary_of(&samples);
        let json = summary.to_json();
        assert_eq!(json["overhead_samples"], 100);
        assert_eq!(json["overhead_p50_ms"], 0.5);
        assert_eq!(json["overhead_p90_ms"], 0.9);
        assert_eq!(json["overhead_p99_ms"], 0.99);
        assert_eq!(json["overhead_max_ms"], 1.0);
        assert_eq!(json["r_p50_ms"], 5.0);
        assert_eq!(json["r_p99_ms"], 5.0);
        assert_eq!(json["max_ms"], 51.0);
        assert_eq!(json["min_ms"], 5.01);
        let line = summary.line();
        assert!(
            line.contains("overhead_p50_ms=0.500 overhead_p90_ms=0.900 overhead_p99_ms=0.990 overhead_max_ms=1.000"),
            "{line}"
        );
        assert!(line.contains("r_p50_ms=5.00"), "{line}");
    }

    #[test]
    fn overhead_counts_only_replies_with_the_header() {
        let summary = summary_of(&[(3_000_000, Some(1_000_000)), (9_000_000, None), (4_000_000, Some(1_500_000))]);
        let json = summary.to_json();
        assert_eq!(json["p50_ms"], 4.0);
        assert_eq!(json["overhead_samples"], 2);
        assert_eq!(json["overhead_p50_ms"], 2.0);
        assert_eq!(json["overhead_max_ms"], 2.5);
        assert!(summary.line().contains("(over 2 replies with x-rfleet-r-ms)"), "{}", summary.line());
    }

    #[tokio::test]
    async fn records_the_r_time_of_each_successful_reply() {
        let (addr, _) = echo_server().await;
        // Every reply with the header claims 2 ms of R and takes at least 20 ms; failures and replies
        // without the header or with a malformed one have no overhead.
        let lines = [
            r#"[{"x":1,"r_ms":"2.000","sleep_ms":20}]"#,
            r#"[{"x":"bad","r_ms":"2.000"}]"#,
            r#"[{"x":2}]"#,
            r#"[{"x":3,"r_ms":"n/a"}]"#,
            r#"[{"x":4,"r_ms":"2.000","sleep_ms":20}]"#,
        ];
        let plan = plan(&format!("http://{addr}/score"), &lines, 2);
        let summary = measure(&plan, 0, 50).await;
        assert_eq!(summary.http_errors, 10);
        assert_eq!(summary.latencies_ns.len(), 40);
        assert_eq!(summary.r_ns, vec![2_000_000; 20]);
        assert_eq!(summary.overheads_ns.len(), 20);
        assert!(summary.overheads_ns.windows(2).all(|w| w[0] <= w[1]));
        assert!(summary.overheads_ns[0] >= 18_000_000, "slept 20 ms, R claimed 2 ms: {:?}", summary.overheads_ns);
        let json = summary.to_json();
        assert_eq!(json["overhead_samples"], 20);
        assert_eq!(json["r_p50_ms"], 2.0);
        assert!(json["overhead_p50_ms"].as_f64().unwrap() >= 18.0);
        // With one R time for all, each overhead is the latency of one of the successful
        // replies minus 2 ms, exactly, and no latency is used twice.
        let mut latencies = summary.latencies_ns.clone();
        for overhead in &summary.overheads_ns {
            let latency = (overhead + 2_000_000) as u64;
            let at = latencies.iter().position(|&ns| ns == latency);
            assert!(at.is_some(), "overhead {overhead} ns is no latency minus 2 ms");
            latencies.swap_remove(at.unwrap());
        }
    }

    #[test]
    fn paths_give_r_calls() {
        assert_eq!(r_calls_of_path("whole"), Some(1.0));
        assert_eq!(r_calls_of_path("batch:4"), Some(0.25));
        assert_eq!(r_calls_of_path("trees:2"), Some(2.0));
        assert_eq!(r_calls_of_path("rows:3"), Some(3.0));
        assert_eq!(r_calls_of_path("batch:5+trees:2"), Some(0.4));
        for bad in ["", "batch:0", "batch:x", "rows", "split:2", "whole+"] {
            assert_eq!(r_calls_of_path(bad), None, "{bad:?}");
        }
        // 8 requests in batches of 4 and 2 alone: 4 calls, 2.5 requests per call.
        let paths: BTreeMap<String, u64> = [("batch:4".to_string(), 8), ("whole".to_string(), 2)].into();
        assert_eq!(r_calls(&paths), Some((4.0, 2.5)));
        assert_eq!(r_calls(&BTreeMap::new()), None);
        let unknown: BTreeMap<String, u64> = [("whole".to_string(), 1), ("mystery".to_string(), 1)].into();
        assert_eq!(r_calls(&unknown), None);
    }

    #[tokio::test]
    async fn counts_the_path_of_each_successful_reply() {
        let (addr, _) = echo_server().await;
        let lines = [
            r#"[{"x":1,"path":"batch:4"}]"#,
            r#"[{"x":2,"path":"whole"}]"#,
            r#"[{"x":"bad","path":"whole"}]"#,
            r#"[{"x":3}]"#,
        ];
        let plan = plan(&format!("http://{addr}/score"), &lines, 2);
        let summary = measure(&plan, 0, 40).await;
        assert_eq!(summary.paths, [("batch:4".to_string(), 10), ("whole".to_string(), 10)].into());
        let json = summary.to_json();
        assert_eq!(json["paths"]["batch:4"], 10);
        assert_eq!(json["r_calls"], 12.5);
        assert_eq!(json["requests_per_r_call"], 1.6);
        assert!(summary.line().contains("paths[batch:4=10,whole=10] requests_per_r_call=1.60"), "{}", summary.line());
        // Without the header, no path fields at all.
        let plain = summary_of(&[(1_000_000, None)]).to_json();
        assert!(plain.get("paths").is_none() && plain.get("r_calls").is_none(), "{plain}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_transport_error() {
        // Bind then drop, so the port is (very likely) closed.
        let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let plan = plan(&format!("http://{addr}/score"), &["[]"], 2);
        let summary = measure(&plan, 0, 4).await;
        assert_eq!(summary.requests, 4);
        assert_eq!(summary.transport_errors, 4);
        assert!(summary.percentile_ms(50.0).is_none());
    }
}
