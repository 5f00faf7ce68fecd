//! The pool's queue, and its one decision: which waiting requests start now, together, on
//! which idle hosts, and how (whole or split).
//!
//! This is bookkeeping only, done under the pool's lock: no I/O, no awaiting, no R. The
//! pool calls [`Scheduler::dispatch`] whenever something changes (a request arrives, a
//! host becomes idle or is lost, a batch's wait ends) and carries out what it returns.
//!
//! How a decision is made, oldest request first:
//! 1. Requests whose deadline has passed leave the queue unscored.
//! 2. The oldest request leads a batch: the queued requests it can share an R call with
//!    (same model, predict type and split policy, frames with the same columns, none of
//!    them retried), in queue order, while the rows fit `max_batch_rows`. A request
//!    larger than that goes alone.
//! 3. With `max_batch_wait` set, a batch that is not full waits for companions until its
//!    leader has waited that long, and never longer than half of any member's time from
//!    arrival to deadline. Meanwhile the next group may start.
//! 4. The policy ([`crate::policy::plan`]) says whole or split, and on how many hosts; the
//!    most recently idle hosts take it (a LIFO stack: at low load one warm host serves).
//!    A job that needs more hosts than are idle (`always`) holds the queue until they
//!    are free, so it cannot be starved by the jobs behind it.
//!
//! Hosts may differ: during a reload old hosts hold the old packages and new ones the new
//! ([`Holds`]). A request goes only to a host that holds its exact package, and counts
//! only those hosts as live (an `always` split waits for every live host that holds its
//! model, not for the others); a request none of whose hosts is idle waits, and the
//! requests behind it may take the other hosts. [`Scheduler::retire`] picks an idle host
//! to stop, never the last live host holding a queued request's model.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use protocol::message::SplitPolicy;
use protocol::{Frame, Input};
use tokio::sync::oneshot;

use telemetry::trace::TraceParent;

use crate::forest::ForestOutput;
use crate::metrics::Queued;
use crate::policy::{self, Hosts, JobShape, Plan};
use crate::request::{PoolError, PoolScored, ServedModel};
use crate::rows;

/// What a host holds: whether it can score a model (one package as loaded, by `Arc`).
pub(crate) trait Holds {
    fn holds(&self, model: &Arc<ServedModel>) -> bool;
}

/// Live hosts (idle or busy) that hold a model.
pub(crate) type Live<'a> = &'a dyn Fn(&Arc<ServedModel>) -> usize;

/// One request in the pool, from [`Pool::score`](crate::Pool::score) until its answer.
pub(crate) struct Waiting {
    pub id: u64,
    pub model: Arc<ServedModel>,
    pub input: Input,
    /// The frame's rows (0 for JSON input).
    pub n_rows: usize,
    pub predict_type: Option<String>,
    /// The policy in force: the request's own, else its model's.
    pub split: SplitPolicy,
    /// How a split forest answers this request, if it can be split by trees.
    pub forest: Option<ForestOutput>,
    pub deadline: Option<Instant>,
    pub arrived: Instant,
    /// When its latest R call started.
    pub started: Option<Instant>,
    /// R calls it has been part of.
    pub tries: u32,
    /// Tries that lost their host (a split losing several hosts counts once).
    pub lost: u32,
    /// Set once a batch or split it was part of failed, or its host was lost: from then on
    /// it is scored alone and whole, so whatever goes wrong is its own doing.
    pub solo: bool,
    pub reply_tx: oneshot::Sender<Result<PoolScored, PoolError>>,
    /// Counts it in `rfleet_queue_depth` while it is queued (`None` once in a job).
    pub queued: Option<Queued>,
    /// Its CONSUMER span, the parent of the batch span when it leads a job.
    pub span: tracing::Span,
    /// Its trace context: what a batch span links to, and its metrics' exemplars.
    pub trace: Option<TraceParent>,
}

impl Waiting {
    pub fn reply(self, answer: Result<PoolScored, PoolError>) {
        // The caller may have given up (its deadline passed); nobody else wants the answer.
        let _ = self.reply_tx.send(answer);
    }

    pub fn frame(&self) -> Option<&Frame> {
        match &self.input {
            Input::Frame(frame) => Some(frame),
            Input::Json(_) => None,
        }
    }

    /// The latest moment it may wait for batch companions: half its time to deadline.
    fn latest_hold(&self) -> Option<Instant> {
        self.deadline.map(|deadline| self.arrived + deadline.saturating_duration_since(self.arrived) / 2)
    }

    fn groups_with_others(&self) -> bool {
        !self.solo && self.model.throughput.batches() && self.frame().is_some()
    }
}

/// Whether `a` and `b` can share one R call.
fn batchable(a: &Waiting, b: &Waiting) -> bool {
    a.groups_with_others()
        && b.groups_with_others()
        && Arc::ptr_eq(&a.model, &b.model)
        && a.predict_type == b.predict_type
        && a.split == b.split
        && matches!((a.frame(), b.frame()), (Some(x), Some(y)) if rows::same_columns(x, y))
}

/// A job to start: its requests (in queue order), how, and the hosts (one per part, the
/// most recently idle first).
pub(crate) struct Start<D> {
    pub members: Vec<Waiting>,
    pub plan: Plan,
    pub hosts: Vec<D>,
}

/// What [`Scheduler::dispatch`] decided.
pub(crate) struct Decisions<D> {
    pub starts: Vec<Start<D>>,
    /// Requests whose deadline passed while queued: answer them, never score them.
    pub expired: Vec<Waiting>,
    /// When a batch held for companions must be looked at again.
    pub wake_at: Option<Instant>,
}

/// The scheduler no longer takes requests: the pool is shutting down.
#[derive(Debug)]
pub(crate) struct Closed;

/// The queue of waiting requests and the stack of idle hosts (`D`, an idle host's driver).
pub(crate) struct Scheduler<D> {
    queue: VecDeque<Waiting>,
    /// Most recently idle last.
    idle: Vec<D>,
    closed: bool,
    /// When the batch-wait timer next fires, if one is armed (kept here for the pool).
    pub timer: Option<Instant>,
}

impl<D: Holds> Scheduler<D> {
    pub fn new() -> Self {
        Scheduler { queue: VecDeque::new(), idle: Vec::new(), closed: false, timer: None }
    }

    /// Queues a new request behind the others; refused (and dropped) once closed.
    pub fn push_back(&mut self, waiting: Waiting) -> Result<(), Closed> {
        if self.closed {
            return Err(Closed);
        }
        self.queue.push_back(waiting);
        Ok(())
    }

    /// Queues retried requests ahead of every other, in their order; refused once closed.
    pub fn push_front(&mut self, retried: Vec<Waiting>) -> Result<(), Vec<Waiting>> {
        if self.closed {
            return Err(retried);
        }
        for waiting in retried.into_iter().rev() {
            self.queue.push_front(waiting);
        }
        Ok(())
    }

    /// Puts an idle host on top of the stack; refused once closed.
    pub fn park(&mut self, host: D) -> Result<(), D> {
        if self.closed {
            return Err(host);
        }
        self.idle.push(host);
        Ok(())
    }

    /// Takes a request out of the queue, if it is still there (not started).
    pub fn remove(&mut self, id: u64) -> Option<Waiting> {
        let index = self.queue.iter().position(|w| w.id == id)?;
        self.queue.remove(index)
    }

    /// Stops taking requests and hosts; hands back those queued and idle.
    pub fn close(&mut self) -> (Vec<Waiting>, Vec<D>) {
        self.closed = true;
        (self.queue.drain(..).collect(), std::mem::take(&mut self.idle))
    }

    /// Takes out the queued requests `stranded` says no host will ever take.
    pub fn remove_where(&mut self, stranded: impl Fn(&Waiting) -> bool) -> Vec<Waiting> {
        if !self.queue.iter().any(&stranded) {
            return Vec::new();
        }
        let (gone, waiting): (Vec<Waiting>, Vec<Waiting>) = self.queue.drain(..).partition(stranded);
        self.queue = waiting.into();
        gone
    }

    /// Takes an idle host that `retirable` allows off the stack, the longest idle first,
    /// unless it is the last live host holding the model of a queued request.
    pub fn retire(&mut self, retirable: impl Fn(&D) -> bool, live: Live<'_>) -> Option<D> {
        let needed = |host: &D| self.queue.iter().any(|w| host.holds(&w.model) && live(&w.model) <= 1);
        let index = self.idle.iter().position(|host| retirable(host) && !needed(host))?;
        Some(self.idle.remove(index))
    }

    /// Decides what starts now. `live` counts the hosts up (idle or busy) holding a model.
    pub fn dispatch(&mut self, now: Instant, live: Live<'_>) -> Decisions<D> {
        let mut decisions = Decisions { starts: Vec::new(), expired: Vec::new(), wake_at: None };
        if self.closed {
            return decisions;
        }
        let expired = |w: &Waiting| w.deadline.is_some_and(|deadline| deadline <= now);
        if self.queue.iter().any(expired) {
            let (gone, waiting): (Vec<Waiting>, Vec<Waiting>) = self.queue.drain(..).partition(expired);
            self.queue = waiting.into();
            decisions.expired = gone;
        }

        'start: while !self.idle.is_empty() {
            // Leaders already looked at in this pass; a request batchable with one of them
            // was considered with it.
            let mut leaders: Vec<usize> = Vec::new();
            for leader in 0..self.queue.len() {
                if leaders.iter().any(|&l| batchable(&self.queue[l], &self.queue[leader])) {
                    continue;
                }
                leaders.push(leader);
                let (members, n_rows) = self.group(leader);
                if let Some(hold) = self.hold_until(&members, n_rows).filter(|&hold| now < hold) {
                    decisions.wake_at = Some(decisions.wake_at.map_or(hold, |at| at.min(hold)));
                    continue;
                }
                let lead = &self.queue[leader];
                // The idle hosts that hold its package, the most recently idle first.
                let eligible: Vec<usize> =
                    (0..self.idle.len()).rev().filter(|&i| self.idle[i].holds(&lead.model)).collect();
                if eligible.is_empty() {
                    // It waits for one of its hosts; the requests behind it may take others.
                    continue;
                }
                let plan = if lead.solo {
                    Plan::Whole
                } else {
                    let job = JobShape {
                        n_rows,
                        rows_splittable: lead.frame().is_some(),
                        n_trees: lead.forest.and(lead.model.info.forest.as_ref().map(|f| f.n_trees)),
                    };
                    let others_waiting = self.queue.len() > members.len();
                    let hosts = Hosts { idle: eligible.len(), live: live(&lead.model), others_waiting };
                    policy::plan(lead.split, lead.model.throughput.split_min_rows, job, hosts)
                };
                if plan.hosts() > eligible.len() {
                    // Only `always` asks for hosts that are busy: keep the idle ones for it.
                    break 'start;
                }
                let mut taken: Vec<Waiting> =
                    members.iter().rev().map(|&i| self.queue.remove(i).expect("member index in queue")).collect();
                taken.reverse();
                // Descending indices: each removal leaves the ones still to come in place.
                let hosts = eligible[..plan.hosts()].iter().map(|&i| self.idle.remove(i)).collect();
                decisions.starts.push(Start { members: taken, plan, hosts });
                continue 'start;
            }
            break;
        }
        decisions
    }

    /// The request at `leader` and the queued requests that can join its R call, as queue
    /// indices in order, with their total rows.
    fn group(&self, leader: usize) -> (Vec<usize>, usize) {
        let lead = &self.queue[leader];
        let mut members = vec![leader];
        let mut n_rows = lead.n_rows;
        let max_rows = lead.model.throughput.max_batch_rows;
        for (i, other) in self.queue.iter().enumerate().skip(leader + 1) {
            if n_rows >= max_rows {
                break;
            }
            if n_rows + other.n_rows <= max_rows && batchable(lead, other) {
                members.push(i);
                n_rows += other.n_rows;
            }
        }
        (members, n_rows)
    }

    /// Until when a batch that could still grow waits for companions; `None` when it
    /// starts as soon as a host is free.
    fn hold_until(&self, members: &[usize], n_rows: usize) -> Option<Instant> {
        let lead = &self.queue[members[0]];
        let throughput = &lead.model.throughput;
        if throughput.max_batch_wait.is_zero() || !lead.groups_with_others() || n_rows >= throughput.max_batch_rows {
            return None;
        }
        members
            .iter()
            .filter_map(|&i| self.queue[i].latest_hold())
            .chain([lead.arrived + throughput.max_batch_wait])
            .min()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use protocol::{Column, ColumnData, ForestInfo, ModelInfo, ModelKind};

    use super::*;
    use crate::policy::Throughput;

    /// A test host named by a string holds every model.
    impl Holds for &'static str {
        fn holds(&self, _: &Arc<ServedModel>) -> bool {
            true
        }
    }

    pub(crate) fn model(name: &str, throughput: Throughput, n_trees: Option<u32>) -> Arc<ServedModel> {
        let info = ModelInfo {
            name: name.into(),
            version: None,
            kind: ModelKind::Predict,
            r_class: vec!["randomForest".into()],
            schema: None,
            predict_type: None,
            forest: n_trees.map(|n_trees| ForestInfo { n_trees, classes: None }),
            engine: None,
        };
        Arc::new(ServedModel::new(info, throughput, None))
    }

    pub(crate) fn batching(max_batch_rows: usize, wait_ms: u64, split: SplitPolicy) -> Throughput {
        Throughput { max_batch_rows, max_batch_wait: Duration::from_millis(wait_ms), split, split_min_rows: 1000 }
    }

    /// A request of `n_rows` rows for `model`, arrived at `arrived`.
    pub(crate) fn request(
        id: u64,
        model: &Arc<ServedModel>,
        n_rows: usize,
        arrived: Instant,
        deadline: Option<Instant>,
    ) -> Waiting {
        let frame = Frame::new(vec![Column::new("x", ColumnData::F64 { values: vec![Some(1.0); n_rows] })]).unwrap();
        Waiting {
            id,
            model: model.clone(),
            input: Input::Frame(frame),
            n_rows,
            predict_type: None,
            split: model.throughput.split,
            forest: model.info.forest.as_ref().map(|_| ForestOutput::Mean),
            deadline,
            arrived,
            started: None,
            tries: 0,
            lost: 0,
            solo: false,
            reply_tx: oneshot::channel().0,
            queued: None,
            span: tracing::Span::none(),
            trace: None,
        }
    }

    /// A job as the tests see it: request ids, plan, hosts.
    type Seen = (Vec<u64>, Plan, Vec<&'static str>);

    fn seen(decisions: &Decisions<&'static str>) -> Vec<Seen> {
        decisions.starts.iter().map(|s| (s.members.iter().map(|w| w.id).collect(), s.plan, s.hosts.clone())).collect()
    }

    /// Queues `requests` with `idle` hosts (bottom of the stack first) and `live` hosts up,
    /// dispatches at `now`, and checks the jobs started and the requests expired.
    fn check(
        idle: &[&'static str],
        live: usize,
        requests: Vec<Waiting>,
        now: Instant,
        starts: &[Seen],
        expired: &[u64],
    ) -> Scheduler<&'static str> {
        let mut scheduler = Scheduler::new();
        for request in requests {
            assert!(scheduler.push_back(request).is_ok());
        }
        for host in idle {
            assert!(scheduler.park(*host).is_ok());
        }
        let decisions = scheduler.dispatch(now, &|_| live);
        assert_eq!(seen(&decisions), starts);
        assert_eq!(decisions.expired.iter().map(|w| w.id).collect::<Vec<_>>(), expired);
        scheduler
    }

    #[test]
    fn queued_requests_share_calls() {
        let now = Instant::now();
        let a = model("a", batching(10, 0, SplitPolicy::Never), None);
        let b = model("b", batching(10, 0, SplitPolicy::Never), None);
        // The warmest host (top of the stack) takes the oldest group; other models' and
        // too-large requests form their own.
        check(
            &["h1", "h2", "h3"],
            3,
            vec![
                request(1, &a, 4, now, None),
                request(2, &b, 1, now, None),
                request(3, &a, 5, now, None),
                request(4, &a, 2, now, None),
                request(5, &a, 1, now, None),
            ],
            now,
            &[
                (vec![1, 3, 5], Plan::Whole, vec!["h3"]),
                (vec![2], Plan::Whole, vec!["h2"]),
                (vec![4], Plan::Whole, vec!["h1"]),
            ],
            &[],
        );
        // Batching off, retried (solo) requests, and one host for everything.
        let single = model("single", batching(1, 0, SplitPolicy::Never), None);
        let mut retried = request(2, &a, 1, now, None);
        retried.solo = true;
        let scheduler = check(
            &["h1"],
            2,
            vec![
                request(1, &single, 1, now, None),
                request(3, &single, 1, now, None),
                retried,
                request(4, &a, 1, now, None),
            ],
            now,
            &[(vec![1], Plan::Whole, vec!["h1"])],
            &[],
        );
        assert_eq!(scheduler.queue.iter().map(|w| w.id).collect::<Vec<_>>(), [3, 2, 4]);
    }

    #[test]
    fn deadlines_and_batch_waits() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let waits = model("w", batching(10, 20, SplitPolicy::Never), None);
        // Expired requests leave unscored.
        check(
            &["h1"],
            1,
            vec![request(1, &waits, 1, now - ms(50), Some(now)), request(2, &waits, 10, now, None)],
            now,
            &[(vec![2], Plan::Whole, vec!["h1"])],
            &[1],
        );
        // A batch that is not full waits until its leader has waited 20 ms...
        let mut scheduler = check(
            &["h1"],
            1,
            vec![request(1, &waits, 1, now, None), request(2, &waits, 1, now + ms(5), None)],
            now + ms(10),
            &[],
            &[],
        );
        assert_eq!(scheduler.dispatch(now + ms(10), &|_| 1).wake_at, Some(now + ms(20)));
        assert_eq!(seen(&scheduler.dispatch(now + ms(20), &|_| 1)), [(vec![1, 2], Plan::Whole, vec!["h1"])]);
        // ...or half of a member's time to its deadline, whichever comes first.
        let mut scheduler = check(
            &["h1"],
            1,
            vec![request(1, &waits, 1, now, None), request(2, &waits, 1, now, Some(now + ms(16)))],
            now,
            &[],
            &[],
        );
        assert_eq!(scheduler.dispatch(now, &|_| 1).wake_at, Some(now + ms(8)));
        // A full batch starts at once.
        check(
            &["h1"],
            1,
            vec![request(1, &waits, 4, now, None), request(2, &waits, 6, now, None)],
            now,
            &[(vec![1, 2], Plan::Whole, vec!["h1"])],
            &[],
        );
    }

    #[test]
    fn splits_follow_the_policy() {
        let now = Instant::now();
        let auto = model("auto", batching(10, 0, SplitPolicy::Auto), Some(100));
        let always = model("always", batching(10, 0, SplitPolicy::Always), Some(100));
        let whole = model("whole", batching(10, 0, SplitPolicy::Never), None);
        // auto: idle hosts and nothing else waiting: split by trees on every idle host.
        check(
            &["h1", "h2", "h3"],
            4,
            vec![request(1, &auto, 1, now, None)],
            now,
            &[(vec![1], Plan::Trees(3), vec!["h3", "h2", "h1"])],
            &[],
        );
        // auto: others waiting, so whole (the second request then finds only one host idle).
        check(
            &["h1", "h2"],
            2,
            vec![request(1, &auto, 1, now, None), request(2, &whole, 1, now, None)],
            now,
            &[(vec![1], Plan::Whole, vec!["h2"]), (vec![2], Plan::Whole, vec!["h1"])],
            &[],
        );
        // always: waits for every live host, holding the idle ones (the request behind it
        // does not take them)...
        let mut scheduler =
            check(&["h1"], 2, vec![request(1, &always, 2, now, None), request(2, &whole, 1, now, None)], now, &[], &[]);
        assert!(scheduler.park("h2").is_ok());
        assert_eq!(seen(&scheduler.dispatch(now, &|_| 2)), [(vec![1], Plan::Trees(2), vec!["h2", "h1"])]);
        // ...and a retried request goes whole whatever the policy.
        let mut retried = request(1, &always, 1, now, None);
        retried.solo = true;
        check(&["h1"], 2, vec![retried], now, &[(vec![1], Plan::Whole, vec!["h1"])], &[]);
    }

    #[test]
    fn removed_and_closed() {
        let now = Instant::now();
        let a = model("a", batching(10, 0, SplitPolicy::Never), None);
        let mut scheduler =
            check(&[], 1, vec![request(1, &a, 1, now, None), request(2, &a, 1, now, None)], now, &[], &[]);
        assert_eq!(scheduler.remove(1).map(|w| w.id), Some(1));
        assert!(scheduler.remove(1).is_none());
        assert!(scheduler.park("h1").is_ok());
        let (queued, idle) = scheduler.close();
        assert_eq!((queued.iter().map(|w| w.id).collect::<Vec<_>>(), idle), (vec![2], vec!["h1"]));
        assert!(scheduler.park("h2").is_err());
        assert!(scheduler.push_back(request(3, &a, 1, now, None)).is_err());
        assert!(scheduler.dispatch(now, &|_| 1).starts.is_empty());
    }

    /// A host that holds some models only (by name), as old and new hosts do during a reload.
    struct Picky(&'static str, &'static [&'static str]);

    impl Holds for Picky {
        fn holds(&self, model: &Arc<ServedModel>) -> bool {
            self.1.contains(&model.info.name.as_str())
        }
    }

    /// Queues `requests` with `idle` hosts (bottom of the stack first), dispatches, and
    /// checks which requests started on which hosts and which wait.
    fn check_picky(
        idle: Vec<Picky>,
        live: &dyn Fn(&Arc<ServedModel>) -> usize,
        requests: Vec<Waiting>,
        starts: &[(Vec<u64>, Plan, Vec<&str>)],
        waiting: &[u64],
    ) -> Scheduler<Picky> {
        let now = Instant::now();
        let mut scheduler = Scheduler::new();
        for request in requests {
            assert!(scheduler.push_back(request).is_ok());
        }
        for host in idle {
            assert!(scheduler.park(host).is_ok());
        }
        let decisions = scheduler.dispatch(now, live);
        let started: Vec<(Vec<u64>, Plan, Vec<&str>)> = decisions
            .starts
            .iter()
            .map(|s| (s.members.iter().map(|w| w.id).collect(), s.plan, s.hosts.iter().map(|h| h.0).collect()))
            .collect();
        assert_eq!(started, starts);
        assert_eq!(scheduler.queue.iter().map(|w| w.id).collect::<Vec<_>>(), waiting);
        scheduler
    }

    /// During a reload hosts differ: a request goes only to a host holding its package,
    /// waits (without holding up the others) while none is idle, and an `always` split
    /// waits for the live hosts holding its model only.
    #[test]
    fn hosts_that_differ_take_only_their_models() {
        let now = Instant::now();
        let never = || batching(1, 0, SplitPolicy::Never);
        let (a, b, c) = (model("a", never(), None), model("b", never(), None), model("c", never(), None));
        let old = || Picky("old", &["a", "b", "s"]);
        let new = || Picky("new", &["a", "c", "s"]);
        let everywhere = |_: &Arc<ServedModel>| 2;
        // The warmest host is new, but the oldest request is for b, which only old holds.
        check_picky(
            vec![old(), new()],
            &everywhere,
            vec![request(1, &b, 1, now, None), request(2, &c, 1, now, None), request(3, &a, 1, now, None)],
            &[(vec![1], Plan::Whole, vec!["old"]), (vec![2], Plan::Whole, vec!["new"])],
            &[3],
        );
        // Only new idle: b waits for old, and a (behind it) takes new.
        check_picky(
            vec![new()],
            &everywhere,
            vec![request(1, &b, 1, now, None), request(2, &a, 1, now, None)],
            &[(vec![2], Plan::Whole, vec!["new"])],
            &[1],
        );
        // always: split across the idle hosts that hold it, once every live one that holds
        // it is idle; a host without it does not count.
        let always = model("s", batching(10, 0, SplitPolicy::Always), Some(100));
        let live_s = |m: &Arc<ServedModel>| if m.info.name == "s" { 2 } else { 3 };
        check_picky(
            vec![Picky("other", &["a"]), old(), new()],
            &live_s,
            vec![request(1, &always, 2, now, None)],
            &[(vec![1], Plan::Trees(2), vec!["new", "old"])],
            &[],
        );
        check_picky(
            vec![Picky("other", &["a", "s"]), new()],
            &|_| 3,
            vec![request(1, &always, 2, now, None)],
            &[],
            &[1],
        );
    }

    /// A reload retires an idle old host, the longest idle first, but never the last live
    /// host holding a queued request's model.
    #[test]
    fn retiring_keeps_the_last_host_a_queued_request_needs() {
        let now = Instant::now();
        let b = model("b", batching(1, 0, SplitPolicy::Never), None);
        let old = |name| Picky(name, &["a", "b"]);
        let is_old = |host: &Picky| host.0.starts_with("old");
        let check = |idle: Vec<Picky>, live_b: usize, queued: bool, expected: Option<&str>| {
            let mut scheduler: Scheduler<Picky> = Scheduler::new();
            if queued {
                assert!(scheduler.push_back(request(1, &b, 1, now, None)).is_ok());
            }
            for host in idle {
                assert!(scheduler.park(host).is_ok());
            }
            assert_eq!(scheduler.retire(is_old, &|_| live_b).map(|h| h.0), expected);
        };
        check(vec![old("old1"), old("old2"), Picky("new", &["a"])], 2, false, Some("old1"));
        check(vec![Picky("new", &["a", "b"])], 1, false, None);
        // b is queued and old1 is the only live host holding it.
        check(vec![old("old1"), Picky("new", &["a"])], 1, true, None);
        // Another live host (busy) holds b too.
        check(vec![old("old1"), Picky("new", &["a"])], 2, true, Some("old1"));
    }
}
