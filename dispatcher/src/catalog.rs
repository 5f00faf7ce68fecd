//! What the fleet serves, as this dispatcher knows it: models and live R hosts.
//!
//! Workers announce themselves over the bus, whichever transport it is (the embedded one
//! in `rfleet serve` too), and [`crate::announcements`] records each announcement here
//! ([`Catalog::record`]); a worker not heard from for three intervals is forgotten. The
//! dispatcher reads it for `GET /models`, schema checks and readiness. Nothing else writes
//! it: the worker only announces.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use protocol::{Announcement, ModelInfo};
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
    /// Woken by every announcement recorded.
    recorded: Notify,
}

#[derive(Debug)]
struct Announced {
    models: Vec<ModelInfo>,
    live_hosts: usize,
    draining: bool,
    expires: Instant,
}

impl Catalog {
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
                models: announcement.models,
                live_hosts: announcement.live_hosts as usize,
                draining: announcement.draining,
                expires,
            },
        );
        self.recorded.notify_waiters();
    }

    /// Every model served by a worker heard from recently; one entry per (name, version).
    ///
    /// A draining worker's models still count until it is forgotten: its schemas are still
    /// right, and other workers may consume the same queues without having been heard from
    /// yet (a dispatcher learns of a worker only at its next announcement), so requests go
    /// on being published rather than refused. Its hosts no longer count
    /// ([`Catalog::live_hosts`]), so readiness follows the workers that take new work.
    pub fn models(&self) -> Vec<ModelInfo> {
        let mut models: Vec<ModelInfo> = Vec::new();
        let now = Instant::now();
        let mut workers = self.workers.lock();
        workers.retain(|_, r| r.expires > now);
        let mut announced: Vec<&ModelInfo> = workers.values().flat_map(|r| r.models.iter()).collect();
        // A stable order, whatever the hash map's and the workers' timing.
        announced.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        for model in announced {
            if !models.iter().any(|m| m.name == model.name && m.version == model.version) {
                models.push(model.clone());
            }
        }
        models
    }

    /// The model called `name`, at `version` when one is asked for.
    pub fn model(&self, name: &str, version: Option<&str>) -> Option<ModelInfo> {
        self.models().into_iter().find(|m| m.name == name && version.is_none_or(|v| m.version.as_deref() == Some(v)))
    }

    /// R hosts up in the workers heard from recently.
    pub fn live_hosts(&self) -> usize {
        let now = Instant::now();
        self.workers
            .lock()
            .values()
            .filter(|r| r.expires > now && !r.draining)
            .fold(0usize, |sum, r| sum.saturating_add(r.live_hosts))
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

    /// Ready to score: models are known and at least one R host is up.
    pub fn is_ready(&self) -> bool {
        self.live_hosts() > 0 && !self.models().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str) -> ModelInfo {
        ModelInfo {
            name: name.into(),
            version: None,
            kind: protocol::ModelKind::Predict,
            r_class: vec![],
            schema: None,
            predict_type: None,
            forest: None,
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
