//! The supervisor: a pool of R hosts, each driven by its own task and fed from one queue.
//!
//! # How work flows
//! [`Pool::score`] queues a request and awaits its answer. Whenever something changes (a
//! request arrives, a host becomes idle or is lost, a batch's wait ends) the scheduler
//! ([`crate::schedule`]) decides which queued requests start, as one job, on which idle
//! hosts: whole on one host (alone, or a batch of requests in one R call), or split by
//! rows or by a forest's trees across several. The pool then builds the job's input
//! (a batch's frames concatenated, a row split's frame cut), hands each part to its
//! host's driver, and a job task awaits the parts, combines them ([`crate::rows`],
//! [`crate::forest`]) and answers every request with its own rows.
//!
//! A host that dies, hangs past `host_timeout` or breaks the channel protocol is killed
//! and replaced in the background. Hosts are also recycled after a number of R calls or
//! above a memory size.
//!
//! # Packages and reloads
//! The hosts load one *generation*: the packages that loaded on the first host (those
//! that failed are reported, [`Pool::failed`], or refused with `strict`). [`Pool::reload`]
//! loads a new package set on a new host in the background while the old hosts serve;
//! once it is up, that host goes live and requests go to the new packages (added models
//! are served, removed ones are unknown at once), then the old hosts are replaced one at a
//! time: retired once idle, a new one started, so there are never fewer live hosts than
//! before and at most one more. A reload that would stop serving a package that is served
//! now (it changed and now fails to load, or its `model.toml` broke) is held back: the
//! failure is reported and the hosts keep what they hold until the package is fixed or
//! removed. With `strict`, a reload with any failure is held back.
//!
//! # What it records
//! Each job is a `batch <model>` span (a child of its first request's CONSUMER span,
//! linked to every member's) and each R call a `predict <model>` span under it; the
//! metrics of [`crate::metrics`]: per job its rows, requests and shards, per R call its
//! phases and busy time, per batch or split the merge, and the hosts' states, restarts,
//! memory and load times as they happen.
//!
//! # Invariants
//! - A request is in exactly one place until answered: the queue, or one running job.
//! - A host runs one R call at a time: its driver is either on the idle stack or running
//!   one part of one job.
//! - A request goes only to a host that holds its exact package; a host is retired only
//!   when idle, and never while it is the last live host holding a queued request's model.
//! - Nothing is scored after its deadline: expired requests leave the queue unscored, and
//!   a waiter whose deadline passes takes its request out of the queue.
//! - Every request gets exactly one answer.
//! - A request whose batch or split failed, or whose host was lost, is retried alone and
//!   whole, so a failure reaches only the request that causes it; a request that loses
//!   two hosts is answered `host_crashed` rather than allowed to take down the pool.
//! - An R error never costs a host.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::Retryable;
use parking_lot::{MappedMutexGuard, Mutex, MutexGuard};
use protocol::host::{HostOutput, ModelSpec};
use protocol::{compare_versions, ErrorBody, ErrorCode, Frame, Input, LoadFailure, ModelInfo, ModelRef, NativeLoad};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::discover::{Discovered, Fingerprint, PackageFailure};
use crate::engine::{self, ModelEngine};
use crate::forest::{self, ForestOutput};
use crate::host::{Call, Host, HostConfig, HostError, Scored, Started};
use crate::metrics::{self, HostState, Phase, Restart, Split};
use crate::policy::{Plan, Throughput};
use crate::request::{describe_failures, PoolError, PoolRequest, PoolScored, ServedModel};
use crate::rows;
use crate::schedule::{Holds, Scheduler, Start, Waiting};
use telemetry::trace::TraceParent;
use tracing::Instrument;

/// The first and the longest wait between tries to start a replacement host (a broken
/// model package or a full disk fails every start: retried, but not in a tight loop).
const HOST_RESTART_FIRST: Duration = Duration::from_millis(500);
const HOST_RESTART_LONGEST: Duration = Duration::from_secs(30);

/// How long shutdown waits for busy hosts to finish before leaving them to die with the
/// worker (they are killed with it).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How many hosts to keep, when to replace them, and how to batch and split.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The engine of models whose `model.toml` names none.
    pub engine: protocol::Engine,
    pub host: HostConfig,
    pub n_hosts: usize,
    /// A host that takes longer for one R call is killed.
    pub host_timeout: Duration,
    /// Recycle after this many R calls (0: never).
    pub max_requests_per_host: u64,
    /// Recycle above this resident size in MiB (0: never).
    pub max_host_rss_mib: u64,
    /// Batching and splitting, for models whose `model.toml` does not say otherwise.
    pub throughput: Throughput,
    /// `models.strict`: a package that fails to load is a start error (and holds back a
    /// reload) rather than reported beside the others.
    pub strict: bool,
}

/// A cheap handle to the pool.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    config: PoolConfig,
    state: Mutex<State>,
    next_id: AtomicU64,
    /// Hosts up, watched by whoever announces them (the worker's announcer).
    live: watch::Sender<usize>,
    /// Bumped whenever the models served or the packages failed change.
    changes: watch::Sender<u64>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// What the pool's lock guards: the scheduler and which hosts hold what.
struct State {
    scheduler: Scheduler<IdleHost>,
    /// What new hosts load and new requests are given to.
    current: Arc<Generation>,
    /// The generation of each live host, one entry per host.
    live: Vec<Arc<Generation>>,
    /// Packages in the directory that cannot be served, as the last load found them.
    failed: Vec<PackageFailure>,
    /// The packages the last load tried, sorted: a reload is tried again only once what
    /// is on disk differs (a broken package is not loaded again every poll).
    tried: Vec<Fingerprint>,
    /// A reload waiting for a host to retire: which, and whom to tell once it is gone.
    retire: Option<(Retire, oneshot::Sender<()>)>,
}

impl State {
    /// Whether a live host holds an older generation than the current one.
    fn old_hosts_left(&self) -> bool {
        self.live.iter().any(|g| !Arc::ptr_eq(g, &self.current))
    }
}

/// Which idle host a reload retires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retire {
    /// One that holds an older generation than the current one.
    Old,
    /// Any (the pool has more hosts than configured after hosts were lost mid-reload).
    Any,
}

/// One set of packages, as the hosts that loaded it hold them.
struct Generation {
    /// What a host of this generation loads.
    specs: Vec<ModelSpec>,
    models: Vec<Arc<ServedModel>>,
    /// Each model's package, in `models` order.
    prints: Vec<Fingerprint>,
    /// R's version in the host that loaded it, for `rfleet_model_info`.
    r_version: String,
}

impl Generation {
    fn holds(&self, model: &Arc<ServedModel>) -> bool {
        self.models.iter().any(|m| Arc::ptr_eq(m, model))
    }

    /// The model `model` names exactly.
    fn find(&self, model: &ModelRef) -> Option<&Arc<ServedModel>> {
        self.models.iter().find(|m| m.info.name == model.name && m.info.version == model.version)
    }
}

/// An idle host's driver, on the idle stack, waiting for its next part.
struct IdleHost {
    work_tx: oneshot::Sender<Work>,
    generation: Arc<Generation>,
}

impl Holds for IdleHost {
    fn holds(&self, model: &Arc<ServedModel>) -> bool {
        self.generation.holds(model)
    }
}

/// What an idle host's driver is given.
enum Work {
    Part(Part),
    /// Stop the host (a reload replaces it), then say so.
    Retire(oneshot::Sender<()>),
}

/// One R call of a job, for one host.
struct Part {
    model: ModelRef,
    /// The model as served: its metric series.
    served: Arc<ServedModel>,
    input: Input,
    call: Call,
    /// The R call's span (`predict <model>`), a child of the job's batch span.
    span: tracing::Span,
    /// The job lead's trace, for the exemplars of the call's phases.
    trace: Option<TraceParent>,
    done_tx: oneshot::Sender<PartDone>,
}

struct PartDone {
    result: Result<Scored, HostError>,
    host_pid: u32,
}

/// The packages a host failed to load, as failures of their directories.
fn failures_of(started_failed: &[LoadFailure], specs: &[ModelSpec]) -> Vec<PackageFailure> {
    started_failed
        .iter()
        .map(|failure| PackageFailure {
            dir: specs
                .iter()
                .find(|s| s.name == failure.name && s.version == failure.version)
                .map(|s| s.dir.clone())
                .unwrap_or_default(),
            failure: failure.clone(),
        })
        .collect()
}

impl Pool {
    /// Starts the first host (so a package that fails to load is known here: reported, or
    /// with `strict` an error), then the others in the background with the packages that
    /// loaded.
    pub async fn start(config: PoolConfig, discovered: Discovered) -> Result<Pool, PoolError> {
        let discovered = discovered.engine_default(config.engine);
        if config.strict && !discovered.failed.is_empty() {
            return Err(PoolError::Load(discovered.failed.into_iter().map(|f| f.failure).collect()));
        }
        let specs: Vec<ModelSpec> = discovered.packages.iter().map(|p| p.spec.clone()).collect();
        metrics::hosts_configured(config.n_hosts.max(1));
        let Started { host: first, models: infos, failed, r_version, load_times, native } =
            Host::start(&config.host, &specs).await?;
        let mut failures = discovered.failed.clone();
        failures.extend(failures_of(&failed, &specs));
        failures.sort_by(|a, b| a.dir.cmp(&b.dir));
        if config.strict && !failures.is_empty() {
            first.stop().await;
            return Err(PoolError::Load(failures.into_iter().map(|f| f.failure).collect()));
        }
        log_failures(&failures, &[]);
        let engines = load_engines(&discovered, &infos, &native);
        let generation = Arc::new(generation_of(&config, &discovered, infos.clone(), engines, None, r_version));
        record_loads(&generation, &infos, &load_times);
        model_info(None, &generation);
        let pool = Pool {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    scheduler: Scheduler::new(),
                    current: generation.clone(),
                    live: Vec::new(),
                    failed: failures,
                    tried: discovered.fingerprints(),
                    retire: None,
                }),
                config,
                next_id: AtomicU64::new(0),
                live: watch::Sender::new(0),
                changes: watch::Sender::new(0),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        };
        pool.run_host(first, generation.clone());
        for _ in 1..pool.inner.config.n_hosts.max(1) {
            pool.replace();
        }
        pool.check_engines(&generation);
        Ok(pool)
    }

    /// The models served now, as the hosts loaded them (with inferred schemas), and how
    /// each is scored now (R or native).
    pub fn models(&self) -> Vec<ModelInfo> {
        self.state().current.models.iter().map(|m| m.info_now()).collect()
    }

    /// Starts the self-check of each model of `generation` whose native forest has not
    /// been checked yet (a model a reload kept has been), in the background.
    fn check_engines(&self, generation: &Generation) {
        for model in generation.models.iter().filter(|m| m.engine.begin_check()) {
            let (pool, model) = (self.clone(), model.clone());
            self.inner.tasks.spawn(async move { engine::self_check(&pool, model).await });
        }
    }

    /// A model's engine changed (its self-check ended): the worker announces it.
    pub(crate) fn engines_changed(&self) {
        self.changed();
    }

    /// The packages in the models directory that cannot be served, with their errors.
    pub fn failed(&self) -> Vec<LoadFailure> {
        self.state().failed.iter().map(|f| f.failure.clone()).collect()
    }

    /// The model called `name` at `version`, or (no version asked for) the highest
    /// version of it served ([`compare_versions`]). This runs for every request: it hands
    /// out the served `Arc`, copying nothing.
    pub fn model(&self, name: &str, version: Option<&str>) -> Option<Arc<ServedModel>> {
        choose(&self.state().current.models, name, version).cloned()
    }

    /// Hosts alive now (idle or busy).
    pub fn live_hosts(&self) -> usize {
        *self.inner.live.borrow()
    }

    /// Follows the live host count: changes whenever a host comes up or goes.
    pub fn live_hosts_changes(&self) -> watch::Receiver<usize> {
        self.inner.live.subscribe()
    }

    /// Follows what the pool serves: changes whenever the models served or the packages
    /// failed change (a reload).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    pub fn n_hosts(&self) -> usize {
        self.inner.config.n_hosts
    }

    /// Scores one request: queued, maybe batched with others or split across hosts, and
    /// retried alone if its batch fails or its host is lost.
    pub async fn score(&self, request: PoolRequest) -> Result<PoolScored, PoolError> {
        let (n_rows, forest) = match &request.input {
            Input::Frame(frame) => {
                (frame.n_rows, ForestOutput::of(&request.model.info, request.predict_type.as_deref()))
            }
            Input::Json(_) => (0, None),
        };
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, mut reply_rx) = oneshot::channel();
        let mut waiting = Waiting {
            id,
            split: request.split.unwrap_or(request.model.throughput.split),
            model: request.model,
            input: request.input,
            n_rows,
            predict_type: request.predict_type,
            forest,
            deadline: request.deadline,
            arrived: Instant::now(),
            started: None,
            tries: 0,
            lost: 0,
            solo: false,
            reply_tx,
            queued: None,
            span: request.span,
            trace: request.trace,
        };
        {
            let mut state = self.state();
            // A package replaced by a reload since the caller looked it up: the new one
            // scores it if its schema is the same (the input was conformed to the old).
            if !state.current.holds(&waiting.model) && !state.live.iter().any(|g| g.holds(&waiting.model)) {
                let wanted = waiting.model.info.model_ref();
                match state.current.find(&wanted) {
                    Some(now) if now.info.schema == waiting.model.info.schema => waiting.model = now.clone(),
                    Some(_) => return Err(PoolError::Replaced(wanted)),
                    None => return Err(PoolError::UnknownModel(wanted)),
                }
            }
            waiting.queued = Some(waiting.model.metrics.queued());
            if state.scheduler.push_back(waiting).is_err() {
                return Err(PoolError::ShuttingDown);
            }
        }
        self.dispatch();
        let answer = match request.deadline {
            None => reply_rx.await,
            Some(deadline) => tokio::select! {
                answer = &mut reply_rx => answer,
                _ = tokio::time::sleep_until(deadline.into()) => {
                    // Still queued: it never started, and now never will.
                    if self.scheduler().remove(id).is_some() {
                        return Err(PoolError::DeadlineExceeded);
                    }
                    // Already on a host: its answer comes (bounded by the host timeout).
                    reply_rx.await
                }
            },
        };
        // The pool dropped the request unanswered: only at shutdown.
        answer.unwrap_or(Err(PoolError::ShuttingDown))
    }

    /// Loads the packages `discovered` found, if they differ from those last loaded: on a
    /// new host first (the old ones serve meanwhile), then host by host (see the module
    /// docs). Returns once the hosts are replaced, the reload was held back, or shutdown.
    pub async fn reload(&self, discovered: Discovered) {
        let discovered = discovered.engine_default(self.inner.config.engine);
        let prints = discovered.fingerprints();
        let unchanged = {
            let mut state = self.state();
            (prints == state.tried).then(|| {
                // The same packages: only the directory's own failures may have changed.
                let mut failures = discovered.failed.clone();
                failures.extend(state.failed.iter().filter(|f| prints.iter().any(|p| p.dir == f.dir)).cloned());
                failures.sort_by(|a, b| a.dir.cmp(&b.dir));
                let changed = failures != state.failed;
                if changed {
                    log_failures(&failures, &state.failed);
                    state.failed = failures;
                }
                (changed, state.old_hosts_left())
            })
        };
        if let Some((changed, old_left)) = unchanged {
            if changed {
                self.changed();
            }
            // A roll that could not finish (a new host would not start) goes on.
            if old_left {
                self.roll().await;
            }
            return;
        }
        let specs: Vec<ModelSpec> = discovered.packages.iter().map(|p| p.spec.clone()).collect();
        tracing::info!(packages = specs.len(), "model packages changed; loading them on a new r host");
        let started = tokio::select! {
            _ = self.inner.shutdown.cancelled() => return,
            started = Host::start(&self.inner.config.host, &specs) => started,
        };
        let Started { host, models: infos, failed, r_version, load_times, native } = match started {
            Ok(started) => started,
            // Not a package's fault (R did not start): tried again at the next poll.
            Err(error) => return tracing::error!(error = %error, "cannot start an r host with the new packages"),
        };
        // The host read whatever the directories held while it loaded; unless that is
        // still what was discovered, it may hold other packages than the fingerprints say
        // (and a forest split over it and an older host would mix two forests). The next
        // poll sees the change and loads again.
        if !discovered.packages.iter().all(|p| p.fingerprint.still_on_disk()) {
            tracing::info!("model packages changed while an r host loaded them; loading again at the next poll");
            host.stop().await;
            return;
        }
        let mut failures = discovered.failed.clone();
        failures.extend(failures_of(&failed, &specs));
        failures.sort_by(|a, b| a.dir.cmp(&b.dir));
        // Read and compiled before the pool's lock is taken (a large forest takes a while).
        let engines = load_engines(&discovered, &infos, &native);
        let generation = {
            let mut state = self.state();
            log_failures(&failures, &state.failed);
            let serving = |dir: &std::path::Path| state.current.prints.iter().any(|p| p.dir == dir);
            let held_back = failures.iter().find(|f| self.inner.config.strict || serving(&f.dir)).cloned();
            state.failed = failures;
            state.tried = prints;
            let generation = (held_back.is_none())
                .then(|| {
                    let previous = Some(&*state.current);
                    Arc::new(generation_of(
                        &self.inner.config,
                        &discovered,
                        infos.clone(),
                        engines,
                        previous,
                        r_version,
                    ))
                })
                .filter(|generation| generation.prints != state.current.prints);
            if let Some(failure) = held_back {
                tracing::warn!(
                    dir = %failure.dir.display(),
                    error = %failure.failure.message,
                    strict = self.inner.config.strict,
                    "a package failed to load; the hosts keep the packages they hold until it is fixed or removed"
                );
            }
            if let Some(generation) = &generation {
                let names =
                    |g: &Generation| g.models.iter().map(|m| m.info.model_ref().to_string()).collect::<Vec<_>>();
                tracing::info!(before = ?names(&state.current), after = ?names(generation), "serving the new packages");
                record_loads(generation, &infos, &load_times);
                model_info(Some(&state.current), generation);
                state.current = generation.clone();
            }
            generation
        };
        self.changed();
        let Some(generation) = generation else {
            host.stop().await;
            return;
        };
        // Live at once, under the lock that made its packages current: a request for a
        // package it brings finds a host that holds it.
        self.run_host(host, generation.clone());
        self.check_engines(&generation);
        self.roll().await;
    }

    /// Replaces the hosts of older generations one at a time: retire one once it is idle,
    /// start a new one, until none is left; then trims any host beyond `n_hosts`. Gives up
    /// when a new host does not start (the next reload goes on).
    async fn roll(&self) {
        loop {
            if !self.state().old_hosts_left() {
                break;
            }
            if !self.retire(Retire::Old).await {
                return;
            }
            if !self.state().old_hosts_left() {
                break;
            }
            // One try: a package of this generation may be gone from disk already. The
            // next poll's reload then rolls on (to the packages on disk by then).
            let started = tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                started = self.start_current() => started,
            };
            match started {
                Ok((host, generation)) => self.run_host(host, generation),
                Err(error) => {
                    return tracing::warn!(error = %error, "cannot start a new r host yet; the next poll goes on replacing hosts")
                }
            }
        }
        while self.live_hosts() > self.inner.config.n_hosts.max(1) {
            if !self.retire(Retire::Any).await {
                return;
            }
        }
        tracing::info!(live_hosts = self.live_hosts(), "r hosts replaced");
    }

    /// Retires one idle host `which` allows (the pool's dispatch picks it); false at
    /// shutdown.
    async fn retire(&self, which: Retire) -> bool {
        let (retired_tx, retired_rx) = oneshot::channel();
        self.state().retire = Some((which, retired_tx));
        self.dispatch();
        tokio::select! {
            _ = self.inner.shutdown.cancelled() => false,
            // Sent once the host is gone, or dropped when no such host is left.
            _ = retired_rx => true,
        }
    }

    /// Stops taking requests, answers the queued ones `ShuttingDown`, stops the idle hosts
    /// and waits (bounded) for busy ones to finish their R call.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        let (queued, idle) = self.scheduler().close();
        for waiting in queued {
            waiting.reply(Err(PoolError::ShuttingDown));
        }
        // Their drivers see the stack let go of them and stop their hosts.
        drop(idle);
        self.inner.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.inner.tasks.wait()).await.is_err() {
            tracing::warn!(busy = self.live_hosts(), "r hosts still busy at shutdown; they are killed with the worker");
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock()
    }

    fn scheduler(&self) -> MappedMutexGuard<'_, Scheduler<IdleHost>> {
        MutexGuard::map(self.state(), |state| &mut state.scheduler)
    }

    fn changed(&self) {
        self.inner.changes.send_modify(|n| *n += 1);
    }

    /// Asks the scheduler what starts now (and which host a reload retires), and starts it.
    fn dispatch(&self) {
        let (decisions, retired) = {
            let mut state = self.state();
            let State { scheduler, current, live, retire, .. } = &mut *state;
            let live_holding = |model: &Arc<ServedModel>| live.iter().filter(|g| g.holds(model)).count();
            // Before any job, so that a busy pool cannot keep an old host busy forever.
            let mut retired = None;
            if let Some((which, _)) = retire {
                let which = *which;
                let retirable = |host: &IdleHost| which == Retire::Any || !Arc::ptr_eq(&host.generation, current);
                if let Some(host) = scheduler.retire(retirable, &live_holding) {
                    retired = retire.take().map(|(_, retired_tx)| (host, retired_tx));
                }
            }
            (scheduler.dispatch(Instant::now(), &live_holding), retired)
        };
        if let Some((host, retired_tx)) = retired {
            // A driver that is gone already counts as retired: the send fails, and
            // `retired_tx` dropped with it tells the reload.
            let _ = host.work_tx.send(Work::Retire(retired_tx));
        }
        for waiting in decisions.expired {
            waiting.reply(Err(PoolError::DeadlineExceeded));
        }
        if let Some(at) = decisions.wake_at {
            self.wake_at(at);
        }
        for start in decisions.starts {
            self.start_job(start);
        }
    }

    /// Dispatches again at `at`, when a batch held for companions must start.
    fn wake_at(&self, at: Instant) {
        {
            let mut scheduler = self.scheduler();
            if scheduler.timer.is_some_and(|armed| armed <= at) {
                return;
            }
            scheduler.timer = Some(at);
        }
        let pool = self.clone();
        self.inner.tasks.spawn(async move {
            tokio::select! {
                _ = pool.inner.shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(at.into()) => {}
            }
            {
                let mut scheduler = pool.scheduler();
                if scheduler.timer == Some(at) {
                    scheduler.timer = None;
                }
            }
            pool.dispatch();
        });
    }

    /// Builds a job's parts, hands them to its hosts, and leaves a task to finish it.
    fn start_job(&self, Start { mut members, plan, hosts }: Start<IdleHost>) {
        let now = Instant::now();
        for member in &mut members {
            member.tries += 1;
            member.started = Some(now);
            member.queued = None;
        }
        let lead = &members[0];
        let n_rows: usize = members.iter().map(|m| m.n_rows).sum();
        let split = match plan {
            Plan::Whole => None,
            Plan::Rows(k) => Some((Split::Rows, k)),
            Plan::Trees(k) => Some((Split::Trees, k)),
        };
        lead.model.metrics.job(n_rows, members.len(), split);
        let batch = batch_span(&members, n_rows, &path(members.len(), plan));
        let input = if members.len() == 1 {
            // Kept in the request too, for a retry.
            lead.input.clone()
        } else {
            let frames: Vec<&Frame> = members.iter().filter_map(Waiting::frame).collect();
            let frame = rows::concat(&frames).expect("the scheduler batches only frames with the same columns");
            Input::Frame(frame)
        };
        let predict = || Call::Predict { predict_type: lead.predict_type.clone() };
        // Each call with its shard, as `rfleet.shard` names it.
        let calls: Vec<(Input, Call, String)> = match (plan, &input) {
            (Plan::Rows(k), Input::Frame(frame)) => rows::even_ranges(frame.n_rows, k)
                .into_iter()
                .map(|range| {
                    let shard = format!("rows {}..{}", range.start, range.end);
                    (Input::Frame(rows::slice(frame, range)), predict(), shard)
                })
                .collect(),
            (Plan::Trees(k), Input::Frame(_)) => {
                let n_trees = lead.model.info.forest.as_ref().map_or(1, |f| f.n_trees);
                forest::tree_ranges(n_trees, k)
                    .into_iter()
                    .map(|trees| (input.clone(), Call::Trees(trees), format!("trees {}..{}", trees.start, trees.end)))
                    .collect()
            }
            _ => vec![(input, predict(), "whole".to_string())],
        };
        let model = lead.model.info.model_ref();
        let mut hosts = hosts.into_iter();
        let mut done = Vec::with_capacity(calls.len());
        for (input, call, shard) in calls {
            let host = hosts.next().expect("the scheduler gives a split one host per part");
            let (done_tx, done_rx) = oneshot::channel();
            let rows = match &input {
                Input::Frame(frame) => frame.n_rows,
                Input::Json(_) => 0,
            };
            let span = predict_span(&batch, &model, &shard, rows);
            let part = Part {
                model: model.clone(),
                served: lead.model.clone(),
                input,
                call,
                span,
                trace: lead.trace,
                done_tx,
            };
            // A failed send drops `done_tx`, which the job task counts as a lost host.
            let _ = host.work_tx.send(Work::Part(part));
            done.push(done_rx);
        }
        for spare in hosts {
            self.park(spare);
        }
        let pool = self.clone();
        self.inner.tasks.spawn(
            async move {
                let done = futures::future::join_all(done).await;
                pool.finish_job(members, plan, done);
            }
            // The batch span lasts until the job is finished.
            .instrument(batch),
        );
    }

    /// Decides what a finished job means for its requests ([`conclude`]), then answers
    /// them or queues them again to be retried alone.
    fn finish_job(&self, members: Vec<Waiting>, plan: Plan, done: Vec<Result<PartDone, oneshot::error::RecvError>>) {
        let path = path(members.len(), plan);
        let merging = Instant::now();
        let Some((members, Concluded { verdict, r_us, host_pid })) =
            guard_job(members, |members| conclude(members, plan, done))
        else {
            return;
        };
        // Only a batch or a split has parts or slices to put together.
        if (members.len() > 1 || plan != Plan::Whole) && matches!(verdict, Verdict::Rows(_)) {
            let lead = &members[0];
            lead.model.metrics.phase(Phase::Merge, merging.elapsed(), lead.trace.as_ref());
        }
        let answer = |member: Waiting, result: Result<HostOutput, ErrorBody>| {
            let wait =
                member.started.map_or(Duration::ZERO, |started| started.saturating_duration_since(member.arrived));
            let attempts = member.tries;
            member.reply(Ok(PoolScored { result, r_us, host_pid, attempts, wait, path: path.clone() }));
        };
        match verdict {
            Verdict::Lost(loss) => {
                tracing::warn!(path, requests = members.len(), error = %loss, "r host lost; retrying its requests alone");
                let mut retry = Vec::new();
                for mut member in members {
                    member.lost += 1;
                    if member.lost >= 2 {
                        let attempts = member.lost;
                        member.reply(Err(PoolError::Crashed { attempts, last: loss.clone() }));
                    } else {
                        member.solo = true;
                        retry.push(member);
                    }
                }
                self.requeue(retry);
            }
            Verdict::Alone(result) => {
                if let Some(member) = members.into_iter().next() {
                    answer(member, result);
                }
            }
            Verdict::Rows(frames) => {
                tracing::debug!(path, requests = members.len(), r_us, "job scored");
                for (member, frame) in members.into_iter().zip(frames) {
                    answer(member, Ok(HostOutput::Frame(frame)));
                }
            }
            Verdict::RetryAlone(why) => {
                tracing::info!(path, requests = members.len(), error = %why, "batch or split failed; retrying its requests alone");
                let retry = members.into_iter().map(|member| Waiting { solo: true, ..member }).collect();
                self.requeue(retry);
            }
        }
    }

    /// Queues retried requests ahead of all others.
    fn requeue(&self, mut retry: Vec<Waiting>) {
        for waiting in &mut retry {
            waiting.queued = Some(waiting.model.metrics.queued());
        }
        if let Err(refused) = self.scheduler().push_front(retry) {
            for waiting in refused {
                waiting.reply(Err(PoolError::ShuttingDown));
            }
        }
        self.dispatch();
    }

    /// Runs a started host: its driver takes one part at a time until the host is lost,
    /// recycled, retired or the pool shuts down.
    fn run_host(&self, host: Host, generation: Arc<Generation>) {
        self.state().live.push(generation.clone());
        self.inner.live.send_modify(|live| *live += 1);
        let pool = self.clone();
        self.inner.tasks.spawn(async move { pool.drive(host, generation).await });
    }

    async fn drive(self, mut host: Host, generation: Arc<Generation>) {
        let pid = host.pid();
        // Its memory is read at each scrape while it lives.
        let _live = metrics::live_host(pid);
        // The last part's answer, sent once the host is idle again: a caller answered now
        // then finds its hosts free (and a lone request can be split again).
        let mut finished: Option<(oneshot::Sender<PartDone>, PartDone)> = None;
        loop {
            let (work_tx, work_rx) = oneshot::channel();
            let idle = metrics::host_in(HostState::Idle);
            let parked = self.park(IdleHost { work_tx, generation: generation.clone() });
            if let Some((done_tx, done)) = finished.take() {
                let _ = done_tx.send(done);
            }
            if !parked {
                break;
            }
            // The sender goes away unused only when shutdown empties the idle stack.
            let work = work_rx.await;
            drop(idle);
            let Part { model, served, input, call, span, trace, done_tx } = match work {
                Ok(Work::Part(part)) => part,
                Ok(Work::Retire(retired_tx)) => {
                    let _retiring = metrics::host_in(HostState::Retiring);
                    metrics::host_restarted(Restart::Reload);
                    tracing::info!(host = pid, "retiring r host: a reload replaces it");
                    self.host_gone(&generation);
                    host.stop().await;
                    let _ = retired_tx.send(());
                    return;
                }
                Err(_) => break,
            };
            span.record("rfleet.host_pid", pid);
            let busy = metrics::host_in(HostState::Busy);
            let calling = Instant::now();
            let result = host.call(&model, input, call, self.inner.config.host_timeout).instrument(span.clone()).await;
            metrics::host_busy(calling.elapsed());
            drop(busy);
            match &result {
                Ok(scored) => {
                    served.metrics.r_call(scored.phases, trace.as_ref());
                    if let Err(error) = &scored.result {
                        let kind = scored.condition_class.as_deref().unwrap_or(error.code.as_str());
                        failed_span(&span, kind, &error.message);
                    }
                }
                Err(error) => failed_span(&span, "host_lost", &error.to_string()),
            }
            drop(span);
            if let Err(error) = &result {
                tracing::warn!(host = pid, model = %model, error = %error, "r host lost; replacing it");
                metrics::host_restarted(Restart::of(error));
                // Counted out before the job hears of it, so a retry never waits for it.
                self.host_gone(&generation);
                let _ = done_tx.send(PartDone { result, host_pid: pid });
                // Dropping kills the child (kill_on_drop) and tokio reaps it.
                drop(host);
                self.replace();
                return;
            }
            if let Some(reason) = self.worn_out(&host) {
                tracing::info!(host = pid, served = host.served, reason = reason.as_str(), "recycling r host");
                metrics::host_restarted(reason);
                self.host_gone(&generation);
                let _ = done_tx.send(PartDone { result, host_pid: pid });
                self.replace();
                host.stop().await;
                return;
            }
            finished = Some((done_tx, PartDone { result, host_pid: pid }));
        }
        self.host_gone(&generation);
        host.stop().await;
    }

    /// Puts an idle host on the stack and lets the scheduler use it; false once the pool
    /// is shutting down.
    fn park(&self, host: IdleHost) -> bool {
        if self.scheduler().park(host).is_err() {
            return false;
        }
        self.dispatch();
        true
    }

    /// Why `host` should be recycled, if it should.
    fn worn_out(&self, host: &Host) -> Option<Restart> {
        let config = &self.inner.config;
        if config.max_requests_per_host > 0 && host.served >= config.max_requests_per_host {
            return Some(Restart::MaxRequests);
        }
        let fat = config.max_host_rss_mib > 0 && host.rss_mib().is_some_and(|rss| rss > config.max_host_rss_mib);
        fat.then_some(Restart::MaxRss)
    }

    /// A host of `generation` stopped counting as live: a job waiting for every live host
    /// may now start, a reload waiting to retire an old host that is no more goes on, and
    /// queued requests for a package no host holds any more (its last old host lost during
    /// a reload) are answered.
    fn host_gone(&self, generation: &Arc<Generation>) {
        let stranded = {
            let mut state = self.state();
            if let Some(index) = state.live.iter().position(|g| Arc::ptr_eq(g, generation)) {
                state.live.swap_remove(index);
            }
            if matches!(state.retire, Some((Retire::Old, _))) && !state.old_hosts_left() {
                state.retire = None;
            }
            let State { scheduler, current, live, .. } = &mut *state;
            scheduler.remove_where(|w| !current.holds(&w.model) && !live.iter().any(|g| g.holds(&w.model)))
        };
        self.inner.live.send_modify(|live| *live -= 1);
        for waiting in stranded {
            let model = waiting.model.info.model_ref();
            waiting.reply(Err(PoolError::Replaced(model)));
        }
        self.dispatch();
    }

    /// Starts a host in the background, retrying with backoff until it is up or the pool
    /// shuts down.
    fn replace(&self) {
        if self.inner.shutdown.is_cancelled() {
            return;
        }
        let pool = self.clone();
        self.inner.tasks.spawn(async move {
            if let Some((host, generation)) = pool.start_host().await {
                pool.run_host(host, generation);
            }
        });
    }

    /// Starts a host with the current packages, retrying with backoff; `None` at shutdown.
    async fn start_host(&self) -> Option<(Host, Arc<Generation>)> {
        let start = || self.start_current();
        let started = start.retry(crate::backoff(HOST_RESTART_FIRST, HOST_RESTART_LONGEST)).notify(|error, delay| {
            metrics::host_restarted(Restart::StartFailed);
            tracing::error!(error = %error, retry_in_ms = delay.as_millis() as u64, "cannot start r host");
        });
        tokio::select! {
            _ = self.inner.shutdown.cancelled() => None,
            started = started => started.ok(),
        }
    }

    /// Starts a host with the current packages, once. A host that fails a package that
    /// loaded before is not one of them: stopped, and an error. One that comes up after a
    /// reload made other packages current is stopped and started again with those.
    async fn start_current(&self) -> Result<(Host, Arc<Generation>), HostError> {
        loop {
            let generation = self.state().current.clone();
            let started = Host::start(&self.inner.config.host, &generation.specs).await?;
            if !started.failed.is_empty() {
                started.host.stop().await;
                return Err(HostError::LoadFailed(describe_failures(&started.failed)));
            }
            // Its self-check is that of the generation's first host, on the same rows and
            // cache file; a host that released a model the generation sends to R (its files
            // changed meanwhile) could not answer those requests.
            if let Some(model) = released_apart(&generation, &started.models, &started.native) {
                started.host.stop().await;
                return Err(HostError::LoadFailed(format!(
                    "{model}: the r host released the model (r_fallback = false) that this worker serves from R"
                )));
            }
            // A package replaced in place since its generation was made: this host read the
            // new files, so it is not of that generation (the next poll makes the new one
            // current, and the retry starts a host of it).
            if !generation.prints.iter().all(Fingerprint::still_on_disk) {
                started.host.stop().await;
                return Err(HostError::LoadFailed(
                    "a model package changed on disk while the host loaded it; starting another".into(),
                ));
            }
            if self.inner.shutdown.is_cancelled() {
                started.host.stop().await;
                return Err(HostError::LoadFailed("the pool is shutting down".into()));
            }
            if Arc::ptr_eq(&generation, &self.state().current) {
                record_loads(&generation, &started.models, &started.load_times);
                return Ok((started.host, generation));
            }
            started.host.stop().await;
        }
    }
}

/// The generation of the packages that loaded: `infos` as the host reported them, each
/// with its package's throughput settings. A package `previous` already serves (the same
/// fingerprint) keeps its `Arc`, so its requests may go to old and new hosts alike.
fn generation_of(
    config: &PoolConfig,
    discovered: &Discovered,
    infos: Vec<ModelInfo>,
    engines: Vec<ModelEngine>,
    previous: Option<&Generation>,
    r_version: String,
) -> Generation {
    let mut generation = Generation { specs: Vec::new(), models: Vec::new(), prints: Vec::new(), r_version };
    for (info, engine) in infos.into_iter().zip(engines) {
        let Some(package) =
            discovered.packages.iter().find(|p| p.spec.name == info.name && p.spec.version == info.version)
        else {
            tracing::warn!(model = %info.model_ref(), "an r host reported a model it was not asked to load");
            continue;
        };
        let kept = previous.and_then(|previous| {
            let index = previous.prints.iter().position(|p| *p == package.fingerprint)?;
            Some(previous.models[index].clone())
        });
        let model = kept.unwrap_or_else(|| {
            let buckets = package.manifest.metrics.prediction_buckets.as_deref();
            Arc::new(
                ServedModel::new(info, config.throughput.for_model(&package.manifest), buckets).with_engine(engine),
            )
        });
        generation.specs.push(package.spec.clone());
        generation.models.push(model);
        generation.prints.push(package.fingerprint.clone());
    }
    generation
}

/// A model that a host (its `models`, and their `native` loads in the same order) released
/// and that `generation` does not serve natively alone.
fn released_apart(generation: &Generation, models: &[ModelInfo], native: &[NativeLoad]) -> Option<ModelRef> {
    models.iter().zip(native).find_map(|(info, load)| {
        let model = info.model_ref();
        let released = matches!(load, NativeLoad::Ready { released: true, .. });
        (released && generation.find(&model).is_some_and(|m| !m.engine.released())).then_some(model)
    })
}

/// The engines of the models a host reported (`infos`, and `native` in the same order):
/// each native forest read from its cache file and compiled, with its package's `engine`
/// and `r_fallback`.
fn load_engines(discovered: &Discovered, infos: &[ModelInfo], native: &[NativeLoad]) -> Vec<ModelEngine> {
    infos
        .iter()
        .enumerate()
        .map(|(i, info)| {
            let (configured, r_fallback) = discovered
                .packages
                .iter()
                .find(|p| p.spec.name == info.name && p.spec.version == info.version)
                .map_or((protocol::Engine::default(), true), |p| (p.spec.engine, p.spec.r_fallback));
            ModelEngine::load(&info.model_ref().to_string(), configured, r_fallback, native.get(i))
        })
        .collect()
}

/// The span of one job (`batch <model>`, INTERNAL): a child of its first request's
/// CONSUMER span, linked to every request's, since one batch serves many traces.
fn batch_span(members: &[Waiting], n_rows: usize, path: &str) -> tracing::Span {
    let lead = &members[0];
    let span = tracing::info_span!(
        parent: &lead.span,
        "batch",
        "otel.name" = format!("batch {}", lead.model.info.name),
        "otel.kind" = "internal",
        "rfleet.batch.requests" = members.len(),
        "rfleet.batch.rows" = n_rows,
        "rfleet.path" = path,
    );
    for member in members {
        if let Some(trace) = &member.trace {
            telemetry::trace::link(&span, trace);
        }
    }
    span
}

/// The span of one R call (`predict <model>`, INTERNAL), a child of its job's.
fn predict_span(batch: &tracing::Span, model: &ModelRef, shard: &str, rows: usize) -> tracing::Span {
    tracing::info_span!(
        parent: batch,
        "predict",
        "otel.name" = format!("predict {}", model.name),
        "otel.kind" = "internal",
        "rfleet.model" = %model.name,
        "rfleet.model_version" = model.version.as_deref().unwrap_or(""),
        "rfleet.host_pid" = tracing::field::Empty,
        "rfleet.shard" = shard,
        "rfleet.rows" = rows,
        "otel.status_code" = tracing::field::Empty,
    )
}

/// Marks an R call's span failed, with an `exception` event: R's condition class (or what
/// went wrong) and the message.
fn failed_span(span: &tracing::Span, kind: &str, message: &str) {
    telemetry::trace::exception(span, kind, message);
    span.record("otel.status_code", "error");
}

/// Observes how long each model of `generation` took to load on a host that reported
/// `infos` and `load_times` (in the same order).
fn record_loads(generation: &Generation, infos: &[ModelInfo], load_times: &[Duration]) {
    for (info, time) in infos.iter().zip(load_times) {
        if let Some(model) = generation.find(&info.model_ref()) {
            model.metrics.loaded(*time);
        }
    }
}

/// `rfleet_model_info` follows the served models: `previous`'s go, `current`'s come.
fn model_info(previous: Option<&Generation>, current: &Generation) {
    for model in previous.iter().flat_map(|g| &g.models) {
        model.metrics.forget_info(&model.info.r_class, previous.map_or("", |g| g.r_version.as_str()));
    }
    for model in &current.models {
        model.metrics.info(&model.info.r_class, &current.r_version);
    }
}

/// The model called `name` at `version`, or the highest version of it by
/// [`compare_versions`] when none is asked for.
fn choose<'a>(models: &'a [Arc<ServedModel>], name: &str, version: Option<&str>) -> Option<&'a Arc<ServedModel>> {
    let named = models.iter().filter(|m| m.info.matches(name, version));
    named.max_by(|a, b| compare_versions(a.info.version.as_deref(), b.info.version.as_deref()))
}

/// Logs each failure in `failures` that `known` does not already hold, once, at error
/// level.
fn log_failures(failures: &[PackageFailure], known: &[PackageFailure]) {
    for failure in failures.iter().filter(|f| !known.contains(f)) {
        let model = ModelRef::new(failure.failure.name.clone(), failure.failure.version.clone());
        tracing::error!(model = %model, dir = %failure.dir.display(), error = %failure.failure.message, "model package failed to load; the others serve");
    }
}

/// What a finished job means for its requests. Decided before any request is answered, so
/// that a panic while deciding (combining parts, cutting rows) leaves every request in hand
/// to be answered as the bug it is.
enum Verdict {
    /// A host was lost: each request is retried alone, or answered `Crashed` after two losses.
    Lost(String),
    /// One request, whole: whatever R said is its answer.
    Alone(Result<HostOutput, ErrorBody>),
    /// Each request's own rows of the job's answer, in member order.
    Rows(Vec<Frame>),
    /// The batch or split failed: each request is retried alone.
    RetryAlone(String),
}

struct Concluded {
    verdict: Verdict,
    /// Time inside R: the longest part's.
    r_us: u64,
    /// The first part's host.
    host_pid: u32,
}

/// Combines a job's part answers into one [`Verdict`] for its `members`.
fn conclude(members: &[Waiting], plan: Plan, done: Vec<Result<PartDone, oneshot::error::RecvError>>) -> Concluded {
    let host_pid = done.iter().find_map(|d| d.as_ref().ok().map(|d| d.host_pid)).unwrap_or_default();
    let mut r_us = 0;
    let mut outputs = Vec::with_capacity(done.len());
    let mut lost = None;
    for part in done {
        match part {
            Ok(PartDone { result: Ok(scored), .. }) => {
                r_us = r_us.max(scored.r_us);
                outputs.push(scored.result);
            }
            Ok(PartDone { result: Err(error), .. }) => {
                lost.get_or_insert(error.to_string());
            }
            Err(_) => {
                lost.get_or_insert("its host's driver stopped".to_string());
            }
        }
    }
    let concluded = |verdict| Concluded { verdict, r_us, host_pid };
    if let Some(loss) = lost {
        return concluded(Verdict::Lost(loss));
    }
    let n_rows: usize = members.iter().map(|m| m.n_rows).sum();
    let lead = &members[0];
    let combined = combine(plan, outputs, lead.model.info.forest.as_ref(), lead.forest, n_rows);
    if members.len() == 1 && plan == Plan::Whole {
        return concluded(Verdict::Alone(combined));
    }
    match combined {
        Ok(HostOutput::Frame(frame)) if frame.n_rows == n_rows => {
            if members.len() == 1 {
                return concluded(Verdict::Rows(vec![frame]));
            }
            let ranges = rows::offsets(members.iter().map(|m| m.n_rows));
            concluded(Verdict::Rows(ranges.into_iter().map(|range| rows::slice(&frame, range)).collect()))
        }
        Err(error) => concluded(Verdict::RetryAlone(error.message)),
        Ok(output) => {
            concluded(Verdict::RetryAlone(format!("the job answered {} for {n_rows} rows", describe(&output))))
        }
    }
}

/// Runs `conclude` over a job's members. A panic in it is a bug, not a lost host nor
/// shutdown: every member is answered [`PoolError::Panicked`] with the panic's message
/// (logged at error level), rather than dropped unanswered (which its waiter would take for
/// shutdown). `None` when that happened.
fn guard_job<T>(members: Vec<Waiting>, conclude: impl FnOnce(&[Waiting]) -> T) -> Option<(Vec<Waiting>, T)> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| conclude(&members))) {
        Ok(concluded) => Some((members, concluded)),
        Err(panic) => {
            let message = crate::panic_message(&*panic);
            tracing::error!(requests = members.len(), panic = %message, "a pool job panicked; answering its requests internal");
            for member in members {
                member.reply(Err(PoolError::Panicked(message.clone())));
            }
            None
        }
    }
}

/// How a job was scored, as `Timings::path` says it.
fn path(n_requests: usize, plan: Plan) -> String {
    let split = match plan {
        Plan::Whole => None,
        Plan::Rows(k) => Some(format!("rows:{k}")),
        Plan::Trees(k) => Some(format!("trees:{k}")),
    };
    match (n_requests, split) {
        (1, None) => "whole".to_string(),
        (1, Some(split)) => split,
        (n, None) => format!("batch:{n}"),
        (n, Some(split)) => format!("batch:{n}+{split}"),
    }
}

/// One answer from a job's part answers: the only one (whole), the frames concatenated
/// (rows), or the forest parts combined (trees). The first R error wins.
fn combine(
    plan: Plan,
    outputs: Vec<Result<HostOutput, ErrorBody>>,
    forest: Option<&protocol::ForestInfo>,
    forest_output: Option<ForestOutput>,
    n_rows: usize,
) -> Result<HostOutput, ErrorBody> {
    let internal = |message: String| ErrorBody::new(ErrorCode::Internal, message);
    match plan {
        Plan::Whole => outputs.into_iter().next().unwrap_or_else(|| Err(internal("a job answered nothing".into()))),
        Plan::Rows(_) => {
            let mut frames = Vec::with_capacity(outputs.len());
            for output in outputs {
                match output? {
                    HostOutput::Frame(frame) => frames.push(frame),
                    other => return Err(internal(format!("a row part answered {}", describe(&other)))),
                }
            }
            let refs: Vec<&Frame> = frames.iter().collect();
            rows::concat(&refs).map(HostOutput::Frame).map_err(|e| internal(format!("row parts: {e}")))
        }
        Plan::Trees(_) => {
            let (Some(forest), Some(forest_output)) = (forest, forest_output) else {
                return Err(internal("a tree split of a model that is no splittable forest".into()));
            };
            let mut parts = Vec::with_capacity(outputs.len());
            for output in outputs {
                match output? {
                    HostOutput::ForestPart(part) => parts.push(part),
                    other => return Err(internal(format!("a tree part answered {}", describe(&other)))),
                }
            }
            forest::combine(&parts, forest, forest_output, n_rows)
                .map(HostOutput::Frame)
                .map_err(|e| internal(e.to_string()))
        }
    }
}

fn describe(output: &HostOutput) -> String {
    match output {
        HostOutput::Frame(frame) => format!("a frame of {} rows", frame.n_rows),
        HostOutput::Json(_) => "JSON".to_string(),
        HostOutput::ForestPart(_) => "a forest part".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use protocol::host::ForestPart;
    use protocol::message::SplitPolicy;
    use protocol::{Column, ColumnData, ForestInfo};

    use super::*;

    fn pred(values: &[f64]) -> HostOutput {
        HostOutput::Frame(
            Frame::new(vec![Column::new(
                ".pred",
                ColumnData::F64 { values: values.iter().map(|v| Some(*v)).collect() },
            )])
            .unwrap(),
        )
    }

    fn r_error(message: &str) -> ErrorBody {
        ErrorBody::new(ErrorCode::RError, message)
    }

    fn check(
        plan: Plan,
        outputs: Vec<Result<HostOutput, ErrorBody>>,
        n_rows: usize,
        expected: Result<HostOutput, &str>,
    ) {
        let forest = ForestInfo { n_trees: 4, classes: None };
        match (combine(plan, outputs, Some(&forest), Some(ForestOutput::Mean), n_rows), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want),
            (Err(got), Err(want)) => assert!(got.message.contains(want), "{} does not mention {want}", got.message),
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn parts_combine_into_one_answer() {
        check(Plan::Whole, vec![Ok(pred(&[1.0, 2.0]))], 2, Ok(pred(&[1.0, 2.0])));
        check(Plan::Whole, vec![Err(r_error("x is negative"))], 1, Err("x is negative"));
        check(Plan::Rows(2), vec![Ok(pred(&[1.0, 2.0])), Ok(pred(&[3.0]))], 3, Ok(pred(&[1.0, 2.0, 3.0])));
        check(Plan::Rows(2), vec![Ok(pred(&[1.0])), Err(r_error("x is negative"))], 2, Err("x is negative"));
        check(
            Plan::Rows(2),
            vec![Ok(pred(&[1.0])), Ok(HostOutput::Json("[]".into()))],
            2,
            Err("a row part answered JSON"),
        );
        let part =
            |n_trees, mean: f64| Ok(HostOutput::ForestPart(ForestPart::Regression { n_trees, mean: vec![Some(mean)] }));
        check(Plan::Trees(2), vec![part(3, 2.0), part(1, 6.0)], 1, Ok(pred(&[3.0])));
        check(Plan::Trees(2), vec![part(3, 2.0), Ok(pred(&[1.0]))], 1, Err("a tree part answered a frame"));
        check(Plan::Trees(2), vec![part(3, 2.0), part(3, 2.0)], 1, Err("cover 6 trees"));
    }

    /// A panic while finishing a job answers each of its requests `Panicked` with the panic's
    /// message (500 `internal`), where it used to drop them (503 `shutting down`).
    #[test]
    fn a_panicking_job_answers_its_requests_internal() {
        use crate::schedule::tests::{batching, model, request};
        let model = model("m", batching(1, 0, SplitPolicy::Never), None);
        let waiting = |id| {
            let (reply_tx, reply_rx) = oneshot::channel();
            (Waiting { reply_tx, ..request(id, &model, 1, Instant::now(), None) }, reply_rx)
        };
        let (members, waiters): (Vec<Waiting>, Vec<_>) = (0..2).map(waiting).unzip();
        let concluded = guard_job(members, |members| -> () { panic!("row {} out of range", members.len()) });
        assert!(concluded.is_none());
        for mut waiter in waiters {
            match waiter.try_recv() {
                Ok(Err(PoolError::Panicked(message))) => assert_eq!(message, "row 2 out of range"),
                other => panic!("expected a panic answer, got {other:?}"),
            }
        }
        // No panic: the members come back with the verdict, not yet answered.
        let (member, mut waiter) = waiting(7);
        let (members, verdict) = guard_job(vec![member], |members| members.len()).expect("no panic");
        assert_eq!((members.len(), verdict), (1, 1));
        assert!(matches!(waiter.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
    }

    /// A pinned request gets its version or nothing; an unpinned one the highest version
    /// held, numbers compared as numbers.
    #[test]
    fn versions_are_chosen() {
        use crate::schedule::tests::{batching, model};
        let versioned = |name: &str, version: Option<&str>| {
            let plain = model(name, batching(1, 0, SplitPolicy::Never), None);
            let info = ModelInfo { version: version.map(str::to_string), ..plain.info.clone() };
            Arc::new(ServedModel::new(info, plain.throughput.clone(), None))
        };
        let models = [
            versioned("reg", Some("2")),
            versioned("reg", Some("10")),
            versioned("reg", Some("9")),
            versioned("solo", None),
            versioned("mixed", None),
            versioned("mixed", Some("1")),
        ];
        let check = |name: &str, version: Option<&str>, expected: Option<Option<&str>>| {
            let chosen = choose(&models, name, version).map(|m| m.info.version.as_deref());
            assert_eq!(chosen, expected, "{name} {version:?}");
        };
        check("reg", None, Some(Some("10")));
        check("reg", Some("9"), Some(Some("9")));
        check("reg", Some("3"), None);
        check("solo", None, Some(None));
        check("solo", Some("1"), None);
        check("mixed", None, Some(Some("1")));
        check("nothing", None, None);
    }

    /// A host that released a model its generation serves from R could not answer those
    /// requests: it is not of that generation. The opposite (a host keeping a model the
    /// generation serves natively alone) costs memory only.
    #[test]
    fn a_host_releasing_what_its_generation_sends_to_r_is_not_of_it() {
        use crate::schedule::tests::{batching, model};
        let ready = |released: bool| NativeLoad::Ready {
            path: "/nonexistent/forest.msgpack".into(),
            extracted: false,
            check: None,
            released,
        };
        let served = |name: &str, released: bool| {
            let plain = model(name, batching(1, 0, SplitPolicy::Never), None);
            let engine = ModelEngine::load(name, protocol::Engine::Auto, !released, Some(&ready(released)));
            Arc::new(ServedModel::new(plain.info.clone(), plain.throughput.clone(), None).with_engine(engine))
        };
        let generation = Generation {
            specs: Vec::new(),
            models: vec![served("held", false), served("gone", true)],
            prints: Vec::new(),
            r_version: String::new(),
        };
        let infos: Vec<ModelInfo> = generation.models.iter().map(|m| m.info.clone()).collect();
        assert_eq!(released_apart(&generation, &infos, &[ready(false), ready(true)]), None, "as its generation");
        assert_eq!(released_apart(&generation, &infos, &[ready(false), ready(false)]), None, "memory only");
        assert_eq!(released_apart(&generation, &infos, &[ready(true), ready(true)]), Some(infos[0].model_ref()));
    }

    #[test]
    fn paths_name_batches_and_splits() {
        for (n, plan, expected) in [
            (1, Plan::Whole, "whole"),
            (5, Plan::Whole, "batch:5"),
            (1, Plan::Rows(2), "rows:2"),
            (1, Plan::Trees(4), "trees:4"),
            (3, Plan::Trees(2), "batch:3+trees:2"),
        ] {
            assert_eq!(path(n, plan), expected);
        }
    }
}
