//! The throughput policy: how large batches get, how long they wait, and when one job
//! (a request, or a batch of them) is split across hosts.
//!
//! R's `predict` has a large fixed cost per call, so under load the best use of a host is
//! one call for many queued requests (a batch), and every host busy with its own job.
//! Splitting one job across hosts shortens it but spends that fixed cost once per host,
//! so it only pays while hosts would otherwise sit idle:
//! - `auto` splits into as many parts as there are idle hosts, only when at least two are
//!   idle and no other request is waiting;
//! - `always` splits across every live host, and waits until they are all free;
//! - `never` scores every job on one host.
//!
//! A job is split by rows when it has at least `split_min_rows` rows (any model but Azure
//! ML scripts, whose input is opaque JSON), else by trees when the model is a random
//! forest that can be split for the predict type; otherwise it goes whole.

use std::time::Duration;

use protocol::message::SplitPolicy;
use settings::{Manifest, WorkerSettings};

/// One model's batching and splitting settings: `[workers]`, overridden by its
/// `model.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Throughput {
    /// Rows in one R call at most; below 2, requests are never batched.
    pub max_batch_rows: usize,
    /// How long a batch may wait for companions (zero: batch only what is queued).
    pub max_batch_wait: Duration,
    pub split: SplitPolicy,
    /// Fewest rows a job must have to be split by rows.
    pub split_min_rows: usize,
}

impl Throughput {
    pub fn from_settings(settings: &WorkerSettings) -> Throughput {
        Throughput {
            max_batch_rows: settings.max_batch_rows,
            max_batch_wait: Duration::from_millis(settings.max_batch_wait_ms),
            split: settings.split,
            split_min_rows: settings.split_min_rows,
        }
    }

    /// These settings with a model package's own overrides applied.
    pub fn for_model(&self, manifest: &Manifest) -> Throughput {
        Throughput {
            max_batch_rows: manifest.max_batch_rows.unwrap_or(self.max_batch_rows),
            max_batch_wait: manifest.max_batch_wait_ms.map_or(self.max_batch_wait, Duration::from_millis),
            split: manifest.split.unwrap_or(self.split),
            split_min_rows: manifest.split_min_rows.unwrap_or(self.split_min_rows),
        }
    }

    pub fn batches(&self) -> bool {
        self.max_batch_rows >= 2
    }
}

impl Default for Throughput {
    fn default() -> Self {
        Throughput::from_settings(&WorkerSettings::default())
    }
}

/// How one job is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// On one host.
    Whole,
    /// By rows, on this many hosts.
    Rows(usize),
    /// By trees, on this many hosts.
    Trees(usize),
}

impl Plan {
    /// Hosts the job occupies.
    pub fn hosts(self) -> usize {
        match self {
            Plan::Whole => 1,
            Plan::Rows(k) | Plan::Trees(k) => k,
        }
    }
}

/// What the policy needs to know about a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobShape {
    pub n_rows: usize,
    /// False for Azure ML scripts' JSON input, which only the script can read.
    pub rows_splittable: bool,
    /// The forest's tree count when it can be split for this job's predict type.
    pub n_trees: Option<u32>,
}

/// The hosts at the moment of the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hosts {
    pub idle: usize,
    pub live: usize,
    /// Whether other requests are queued besides this job's.
    pub others_waiting: bool,
}

/// How to score `job` now. The plan may need more hosts than are idle (`always` waits for
/// every host): the caller then holds the job until they are free.
pub fn plan(split: SplitPolicy, split_min_rows: usize, job: JobShape, hosts: Hosts) -> Plan {
    let k = match split {
        SplitPolicy::Never => return Plan::Whole,
        SplitPolicy::Auto if hosts.idle >= 2 && !hosts.others_waiting => hosts.idle.min(hosts.live),
        SplitPolicy::Auto => return Plan::Whole,
        SplitPolicy::Always => hosts.live,
    };
    if k < 2 {
        return Plan::Whole;
    }
    if job.rows_splittable && job.n_rows >= split_min_rows.max(2) {
        Plan::Rows(k.min(job.n_rows))
    } else if let Some(n_trees) = job.n_trees.filter(|&n| n >= 2) {
        Plan::Trees(k.min(n_trees as usize))
    } else {
        Plan::Whole
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROWS: JobShape = JobShape { n_rows: 5000, rows_splittable: true, n_trees: None };
    const FOREST_ROW: JobShape = JobShape { n_rows: 1, rows_splittable: true, n_trees: Some(500) };
    const JSON: JobShape = JobShape { n_rows: 5000, rows_splittable: false, n_trees: None };

    fn hosts(idle: usize, live: usize, others_waiting: bool) -> Hosts {
        Hosts { idle, live, others_waiting }
    }

    fn check(split: SplitPolicy, job: JobShape, hosts: Hosts, expected: Plan) {
        assert_eq!(plan(split, 1000, job, hosts), expected, "{split:?} {job:?} {hosts:?}");
    }

    #[test]
    fn split_only_pays_on_idle_hosts() {
        use SplitPolicy::*;
        // auto: every idle host when nothing else waits; whole under load.
        check(Auto, ROWS, hosts(3, 4, false), Plan::Rows(3));
        check(Auto, FOREST_ROW, hosts(2, 4, false), Plan::Trees(2));
        check(Auto, FOREST_ROW, hosts(4, 4, true), Plan::Whole);
        check(Auto, ROWS, hosts(1, 4, false), Plan::Whole);
        // rows below split_min_rows, and JSON input, are never cut by rows.
        check(Auto, JobShape { n_rows: 999, ..ROWS }, hosts(4, 4, false), Plan::Whole);
        check(Auto, JobShape { n_rows: 999, ..FOREST_ROW }, hosts(4, 4, false), Plan::Trees(4));
        check(Auto, JSON, hosts(4, 4, false), Plan::Whole);
        // always: every live host, however many are idle (the caller waits for them).
        check(Always, ROWS, hosts(1, 4, true), Plan::Rows(4));
        check(Always, FOREST_ROW, hosts(0, 2, true), Plan::Trees(2));
        check(Always, FOREST_ROW, hosts(1, 1, false), Plan::Whole);
        check(Always, JobShape { n_rows: 1001, ..ROWS }, hosts(4, 2000, false), Plan::Rows(1001));
        check(Always, JobShape { n_rows: 1, ..ROWS }, hosts(4, 4, false), Plan::Whole);
        check(Always, JobShape { n_trees: Some(3), ..FOREST_ROW }, hosts(4, 4, false), Plan::Trees(3));
        // never.
        check(Never, ROWS, hosts(4, 4, false), Plan::Whole);
        check(Never, FOREST_ROW, hosts(4, 4, false), Plan::Whole);
    }

    #[test]
    fn model_overrides() {
        let workers = Throughput::default();
        assert_eq!(workers.for_model(&Manifest::default()), workers);
        let manifest = Manifest { split: Some(SplitPolicy::Never), max_batch_rows: Some(64), ..Manifest::default() };
        assert_eq!(
            workers.for_model(&manifest),
            Throughput { split: SplitPolicy::Never, max_batch_rows: 64, ..workers.clone() }
        );
    }
}
