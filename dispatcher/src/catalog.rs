//! What the fleet serves, as this dispatcher knows it: per model version, its description,
//! the live R hosts of the workers announcing it, and the packages that failed to load.
//!
//! Workers announce themselves over the bus, whichever transport it is (the embedded one
//! in `rfleet serve` too), and [`crate::announcements`] records each announcement here
//! ([`Catalog::record`]); a worker not heard from for three intervals is forgotten. The
//! dispatcher reads it ([`Catalog::snapshot`]: one consistent view) for routing, `GET
//! /models`, schema checks and readiness. Nothing else writes it: the worker only announces.
//!
//! A worker's live hosts count for every model it announces (each of its R hosts holds all
//! of them), and for the default routing rule only for the highest version of each model
//! it holds ([`Served::newest_hosts`]). A draining worker's models stay known until it is forgotten, its hosts no
//! longer count; a package reported `failed` is listed as such only while no worker serves
//! that version.
//!
//! With a retention ([`Catalog::keeping_idle`], `models.keep_idle_ms`), the versions a
//! forgotten worker served stay known for that long with no live host ([`Served::idle`]):
//! a fleet KEDA scaled to zero then still gets its requests, which wait in their version's
//! queue for a worker to start, where without it they would be refused as unknown. A
//! version a live worker stops announcing (its package removed) is not kept.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use protocol::{compare_versions, Announcement, LoadFailure, ModelInfo};
use tokio::sync::Notify;

/// The announcement intervals a worker is taken at its word for. An interval comes off the
/// bus, so it is clamped: below the floor a worker would be forgotten between two of its
/// own announcements under ordinary scheduling jitter; above the ceiling a dead worker
/// would be served to for a day, and `interval * 3` could overflow.
pub const ANNOUNCE_INTERVAL_MS: std::ops::RangeInclusive<u64> = 100..=3_600_000;

#[derive(Debug, Default)]
pub struct Catalog {
    /// By worker id.
    workers: Mutex<HashMap<String, Announced>>,
    /// The versions forgotten workers served, by (name, version), until when they are kept;
    /// locked after `workers`.
    idle: Mutex<HashMap<(String, Option<String>), Kept>>,
    /// How long a forgotten worker's versions are kept (zero: not at all).
    keep_idle: Duration,
    /// Woken by every announcement recorded.
    recorded: Notify,
}

#[derive(Debug)]
struct Kept {
    info: Arc<ModelInfo>,
    until: Instant,
}

#[derive(Debug)]
struct Announced {
    /// Shared with every snapshot taken, which copies only the pointers: one is taken per
    /// request.
    models: Vec<Arc<ModelInfo>>,
    failed: Vec<LoadFailure>,
    live_hosts: usize,
    draining: bool,
    expires: Instant,
}

/// One version of a model (or an unversioned model) as the fleet serves it.
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    pub info: Arc<ModelInfo>,
    /// R hosts of the workers announcing it that take new work (not draining).
    pub live_hosts: usize,
    /// Those of [`Served::live_hosts`] whose worker holds no higher version of the model:
    /// what the default routing rule weighs, as a worker scores an unpinned request with
    /// the highest version it holds.
    pub newest_hosts: usize,
    /// Known only because it is kept after its workers were forgotten (scaled to zero):
    /// no worker announces it now.
    pub idle: bool,
}

/// What the fleet serves at one moment, read once so that a request's routing, schema
/// check and error messages agree.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// One entry per (name, version), by name, then version (`compare_versions`).
    pub served: Vec<Served>,
    /// Packages that failed to load and that no worker serves, in the same order.
    pub failed: Vec<LoadFailure>,
    /// R hosts up in the workers that take new work.
    pub live_hosts: usize,
}

impl Snapshot {
    /// The served versions of the model called `name`, lowest first.
    pub fn versions<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Served> + 'a {
        self.served.iter().filter(move |s| s.info.name == name)
    }

    /// `name` at `version`; without a version, its highest served version.
    pub fn find(&self, name: &str, version: Option<&str>) -> Option<&Served> {
        let mut versions = self.served.iter().filter(|s| s.info.name == name);
        match version {
            Some(version) => versions.find(|s| s.info.version.as_deref() == Some(version)),
            None => versions.next_back(),
        }
    }

    /// Why `name` (at `version`, or at any version) failed to load, when no worker serves it.
    pub fn failure(&self, name: &str, version: Option<&str>) -> Option<&LoadFailure> {
        self.failed.iter().find(|f| f.name == name && version.is_none_or(|v| f.version.as_deref() == Some(v)))
    }

    pub fn models(&self) -> impl Iterator<Item = &ModelInfo> {
        self.served.iter().map(|s| &*s.info)
    }
}

impl Catalog {
    /// A catalog that keeps the versions a forgotten worker served for `keep_idle` after it
    /// was forgotten (the module's doc says why).
    pub fn keeping_idle(keep_idle: Duration) -> Self {
        Catalog { keep_idle, ..Catalog::default() }
    }

    /// Records a worker's announcement, valid for three of its intervals (clamped to
    /// [`ANNOUNCE_INTERVAL_MS`]).
    pub fn record(&self, announcement: Announcement, now: Instant) {
        let interval_ms = announcement.interval_ms.clamp(*ANNOUNCE_INTERVAL_MS.start(), *ANNOUNCE_INTERVAL_MS.end());
        let ttl = Duration::from_millis(interval_ms.saturating_mul(3));
        // An `Instant` that cannot be represented is far enough away to be "for now".
        let expires = now.checked_add(ttl).unwrap_or(now);
        self.workers.lock().insert(
            announcement.worker,
            Announced {
                models: announcement.models.into_iter().map(Arc::new).collect(),
                failed: announcement.failed,
                live_hosts: announcement.live_hosts as usize,
                draining: announcement.draining,
                expires,
            },
        );
        self.recorded.notify_waiters();
    }

    /// What the workers heard from recently serve now.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot_at(Instant::now())
    }

    /// What the workers heard from before `now` (and not forgotten by then) serve.
    ///
    /// A draining worker's models still count until it is forgotten: its schemas are still
    /// right, and other workers may consume the same queues without having been heard from
    /// yet (a dispatcher learns of a worker only at its next announcement), so requests go
    /// on being published rather than refused. Its hosts no longer count, so readiness and
    /// routing follow the workers that take new work.
    pub fn snapshot_at(&self, now: Instant) -> Snapshot {
        let mut workers = self.workers.lock();
        let mut idle = self.idle.lock();
        workers.retain(|_, worker| {
            if worker.expires > now {
                return true;
            }
            if !self.keep_idle.is_zero() {
                let until = worker.expires.checked_add(self.keep_idle).unwrap_or(worker.expires);
                for info in &worker.models {
                    let kept = idle
                        .entry((info.name.clone(), info.version.clone()))
                        .or_insert_with(|| Kept { info: info.clone(), until });
                    if kept.until <= until {
                        *kept = Kept { info: info.clone(), until };
                    }
                }
            }
            false
        });
        idle.retain(|_, kept| kept.until > now);
        let mut snapshot = Snapshot::default();
        for worker in workers.values() {
            let live_hosts = if worker.draining { 0 } else { worker.live_hosts };
            snapshot.live_hosts = snapshot.live_hosts.saturating_add(live_hosts);
            for model in &worker.models {
                let newest = !worker.models.iter().any(|other| {
                    other.name == model.name
                        && compare_versions(other.version.as_deref(), model.version.as_deref()).is_gt()
                });
                let newest_hosts = if newest { live_hosts } else { 0 };
                match snapshot.served.iter_mut().find(|s| s.info.name == model.name && s.info.version == model.version)
                {
                    Some(served) => {
                        served.live_hosts = served.live_hosts.saturating_add(live_hosts);
                        served.newest_hosts = served.newest_hosts.saturating_add(newest_hosts);
                    }
                    None => snapshot.served.push(Served { info: model.clone(), live_hosts, newest_hosts, idle: false }),
                }
            }
        }
        for kept in idle.values() {
            let announced =
                snapshot.served.iter().any(|s| s.info.name == kept.info.name && s.info.version == kept.info.version);
            if !announced {
                snapshot.served.push(Served { info: kept.info.clone(), live_hosts: 0, newest_hosts: 0, idle: true });
            }
        }
        drop(idle);
        // Several workers may describe one version; the first of a stable order wins,
        // whatever the hash map's and the workers' timing.
        let mut failed: Vec<LoadFailure> = workers.values().flat_map(|w| w.failed.iter().cloned()).collect();
        drop(workers);
        let order = |a: (&str, Option<&str>), b: (&str, Option<&str>)| a.0.cmp(b.0).then(compare_versions(a.1, b.1));
        snapshot.served.sort_by(|a, b| {
            order((&a.info.name, a.info.version.as_deref()), (&b.info.name, b.info.version.as_deref()))
        });
        failed.sort_by(|a, b| {
            order((&a.name, a.version.as_deref()), (&b.name, b.version.as_deref())).then(a.message.cmp(&b.message))
        });
        failed.dedup_by(|a, b| a.name == b.name && a.version == b.version);
        snapshot.failed = failed
            .into_iter()
            .filter(|f| !snapshot.served.iter().any(|s| s.info.name == f.name && s.info.version == f.version))
            .collect();
        snapshot
    }

    /// Every model served by a worker heard from recently; one entry per (name, version).
    pub fn models(&self) -> Vec<ModelInfo> {
        self.snapshot().served.into_iter().map(|s| Arc::unwrap_or_clone(s.info)).collect()
    }

    /// The model called `name`, at `version` when one is asked for (else its highest).
    pub fn model(&self, name: &str, version: Option<&str>) -> Option<ModelInfo> {
        self.snapshot().find(name, version).map(|s| (*s.info).clone())
    }

    /// R hosts up in the workers heard from recently that take new work.
    pub fn live_hosts(&self) -> usize {
        self.snapshot().live_hosts
    }

    /// Returns once the catalog [`is_ready`](Catalog::is_ready).
    pub async fn ready(&self) {
        loop {
            // Registered before the check, so an announcement in between is not missed.
            let recorded = self.recorded.notified();
            if self.is_ready() {
                return;
            }
            recorded.await;
        }
    }

    /// Ready to score: models are known and at least one R host is up, or a version is
    /// kept while its fleet is scaled to zero (its requests wake it: a dispatcher that
    /// said it was not ready would get none).
    pub fn is_ready(&self) -> bool {
        let snapshot = self.snapshot();
        (snapshot.live_hosts > 0 && !snapshot.served.is_empty()) || snapshot.served.iter().any(|s| s.idle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str) -> ModelInfo {
        // `name@version` for a versioned model.
        let (name, version) = match name.split_once('@') {
            Some((name, version)) => (name, Some(version.to_string())),
            None => (name, None),
        };
        ModelInfo {
            name: name.into(),
            version,
            kind: protocol::ModelKind::Predict,
            r_class: vec![],
            schema: None,
            predict_type: None,
            forest: None,
            engine: None,
        }
    }

    fn announce(worker: &str, models: &[&str], live_hosts: u32, draining: bool) -> Announcement {
        Announcement {
            version: protocol::PROTOCOL_VERSION,
            worker: worker.into(),
            models: models.iter().map(|m| model(m)).collect(),
            live_hosts,
            n_hosts: 2,
            interval_ms: 100,
            draining,
            failed: Vec::new(),
        }
    }

    fn failure(model: &str, message: &str) -> LoadFailure {
        let info = super::tests::model(model);
        LoadFailure { name: info.name, version: info.version, message: message.into() }
    }

    /// The snapshot as `name@version live_hosts` and the failures as `name@version: message`.
    fn check(catalog: &Catalog, now: Instant, served: &[&str], failed: &[&str]) {
        let at = |name: &str, version: &Option<String>| match version {
            Some(v) => format!("{name}@{v}"),
            None => name.to_string(),
        };
        let snapshot = catalog.snapshot_at(now);
        let got: Vec<String> =
            snapshot.served.iter().map(|s| format!("{} {}", at(&s.info.name, &s.info.version), s.live_hosts)).collect();
        assert_eq!(got, served, "served");
        let got: Vec<String> =
            snapshot.failed.iter().map(|f| format!("{}: {}", at(&f.name, &f.version), f.message)).collect();
        assert_eq!(got, failed, "failed");
    }

    #[test]
    fn versions_hosts_and_failures() {
        let catalog = Catalog::default();
        let now = Instant::now();
        check(&catalog, now, &[], &[]);
        // Failed packages no worker serves, by name then version.
        let failures = ["bad: invalid model.toml", "rf@11: cannot read model.rds"];
        // A rolling update half-way: hosts per version, versions in numeric order.
        catalog.record(announce("w1", &["rf@10", "echo"], 2, false), now);
        catalog.record(announce("w2", &["rf@9", "echo"], 3, false), now);
        catalog.record(
            Announcement {
                failed: vec![failure("rf@11", "cannot read model.rds"), failure("bad", "invalid model.toml")],
                ..announce("w3", &["rf@9"], 1, false)
            },
            now,
        );
        check(&catalog, now, &["echo 5", "rf@9 4", "rf@10 2"], &failures);
        let snapshot = catalog.snapshot_at(now);
        assert_eq!(snapshot.live_hosts, 6);
        assert_eq!(snapshot.find("rf", None).unwrap().info.version.as_deref(), Some("10"));
        assert_eq!(snapshot.find("rf", Some("9")).unwrap().live_hosts, 4);
        assert!(snapshot.find("rf", Some("11")).is_none());
        assert_eq!(snapshot.failure("rf", Some("11")).unwrap().message, "cannot read model.rds");
        assert_eq!(snapshot.failure("bad", None).unwrap().message, "invalid model.toml");
        // A version served by one worker and failed on another is served.
        catalog.record(
            Announcement { failed: vec![failure("rf@10", "out of memory")], ..announce("w4", &[], 1, false) },
            now,
        );
        check(&catalog, now, &["echo 5", "rf@9 4", "rf@10 2"], &failures);
        // A draining worker's versions stay known with its hosts no longer counting.
        catalog.record(announce("w1", &["rf@10", "echo"], 2, true), now);
        check(&catalog, now, &["echo 3", "rf@9 4", "rf@10 0"], &failures);
        // Forgotten after three intervals: its versions and failures go.
        check(&catalog, now + Duration::from_millis(400), &[], &[]);
    }

    #[test]
    fn workers_merge_and_expire() {
        let catalog = Catalog::default();
        assert!(!catalog.is_ready());
        let now = Instant::now();
        catalog.record(announce("w1", &["a", "b"], 2, false), now);
        catalog.record(announce("w2", &["b", "c"], 1, false), now);
        let names = |c: &Catalog| c.models().into_iter().map(|m| m.name).collect::<Vec<_>>();
        assert_eq!(names(&catalog), ["a", "b", "c"]);
        assert_eq!(catalog.live_hosts(), 3);
        assert!(catalog.is_ready());
        // A draining worker takes no new work: its hosts no longer count, its models still
        // do until it is forgotten (regression: a dispatcher that had not heard yet from
        // the worker taking over refused requests the moment the other one drained).
        catalog.record(announce("w2", &["b", "c"], 1, true), now);
        assert_eq!(names(&catalog), ["a", "b", "c"]);
        assert_eq!(catalog.live_hosts(), 2);
        catalog.record(announce("w1", &["a", "b"], 2, true), now);
        assert_eq!(names(&catalog), ["a", "b", "c"]);
        assert_eq!(catalog.live_hosts(), 0);
        assert!(!catalog.is_ready());
        // Silence for three intervals: forgotten.
        catalog.record(announce("w1", &["a", "b"], 2, false), now - Duration::from_millis(400));
        assert_eq!(names(&catalog), ["b", "c"]);
        catalog.record(announce("w2", &["b", "c"], 1, true), now - Duration::from_millis(400));
        assert_eq!(catalog.live_hosts(), 0);
        assert!(catalog.models().is_empty());
        assert!(!catalog.is_ready());
    }

    #[test]
    fn forgotten_workers_versions_are_kept_idle_for_the_retention() {
        let catalog = Catalog::keeping_idle(Duration::from_millis(1000));
        let now = Instant::now();
        catalog.record(announce("w1", &["rf@1", "rf@2"], 2, false), now);
        catalog.record(announce("w2", &["rf@2", "echo"], 1, false), now);
        // w1 stops announcing rf@1 (its package removed): not kept.
        catalog.record(announce("w1", &["rf@2"], 2, false), now);
        // Both drain and go silent (scaled to zero): forgotten after 300 ms, their versions
        // kept with no live host until 1000 ms after that.
        catalog.record(announce("w1", &["rf@2"], 2, true), now);
        catalog.record(announce("w2", &["rf@2", "echo"], 1, true), now);
        check(&catalog, now + Duration::from_millis(400), &["echo 0", "rf@2 0"], &[]);
        let snapshot = catalog.snapshot_at(now + Duration::from_millis(400));
        assert!(snapshot.served.iter().all(|s| s.idle && s.newest_hosts == 0), "{snapshot:?}");
        assert_eq!(snapshot.find("rf", None).unwrap().info.version.as_deref(), Some("2"));
        // A worker starting again serves it live, the kept entry beside it unlisted.
        catalog.record(announce("w3", &["rf@2"], 1, false), now + Duration::from_millis(500));
        check(&catalog, now + Duration::from_millis(600), &["echo 0", "rf@2 1"], &[]);
        assert!(!catalog.snapshot_at(now + Duration::from_millis(600)).find("rf", None).unwrap().idle);
        // Past the retention only what is announced is left; w3 forgotten at 800 ms keeps
        // rf@2 until 1800 ms.
        check(&catalog, now + Duration::from_millis(1400), &["rf@2 0"], &[]);
        check(&catalog, now + Duration::from_millis(1900), &[], &[]);
        // Without a retention nothing is kept (the default).
        let catalog = Catalog::default();
        catalog.record(announce("w1", &["rf@2"], 2, false), now);
        check(&catalog, now + Duration::from_millis(400), &[], &[]);
    }

    #[test]
    fn a_version_kept_idle_makes_the_catalog_ready() {
        let catalog = Catalog::keeping_idle(Duration::from_secs(3600));
        catalog.record(announce("w1", &["rf@1"], 1, false), Instant::now() - Duration::from_millis(400));
        assert!(catalog.is_ready(), "a fleet scaled to zero must still get the requests that wake it");
        assert_eq!(catalog.live_hosts(), 0);
    }

    /// Intervals and host counts off the wire at their extremes: clamped, never overflowing.
    #[test]
    fn extreme_announcements_are_bounded() {
        let check = |interval_ms: u64, live_hosts: u32, heard_ms_ago: u64, expected_hosts: usize| {
            let catalog = Catalog::default();
            let now = Instant::now();
            let heard = now.checked_sub(Duration::from_millis(heard_ms_ago)).unwrap_or(now);
            catalog.record(Announcement { interval_ms, live_hosts, ..announce("w", &["a"], 0, false) }, heard);
            catalog.record(Announcement { interval_ms, live_hosts, ..announce("v", &["a"], 0, false) }, heard);
            assert_eq!(catalog.live_hosts(), expected_hosts, "interval {interval_ms} ms, heard {heard_ms_ago} ms ago");
        };
        let hour = *ANNOUNCE_INTERVAL_MS.end();
        check(u64::MAX, 1, 0, 2);
        check(u64::MAX, u32::MAX, 0, 2 * u32::MAX as usize);
        // Clamped to an hour: forgotten after three hours, as the longest allowed interval.
        check(u64::MAX, 1, 3 * hour - 60_000, 2);
        check(u64::MAX, 1, 3 * hour + 60_000, 0);
        // Clamped up to 100 ms: gone after 300 ms, not at once.
        check(0, 1, 0, 2);
        check(0, 1, 400, 0);
    }
}
