//! What the fleet serves, as this process knows it: models and live R hosts.
//!
//! In `rfleet serve` the worker fills it directly; the dispatcher reads it for
//! `GET /models`, schema look-ups and readiness.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;

use protocol::ModelInfo;

#[derive(Debug, Default)]
pub struct Catalog {
    models: RwLock<Vec<ModelInfo>>,
    live_hosts: AtomicUsize,
}

impl Catalog {
    pub fn set_models(&self, models: Vec<ModelInfo>) {
        *self.models.write().expect("catalog lock poisoned") = models;
    }

    pub fn models(&self) -> Vec<ModelInfo> {
        self.models.read().expect("catalog lock poisoned").clone()
    }

    /// The model called `name`, at `version` when one is asked for.
    pub fn model(&self, name: &str, version: Option<&str>) -> Option<ModelInfo> {
        self.models
            .read()
            .expect("catalog lock poisoned")
            .iter()
            .find(|m| m.name == name && version.is_none_or(|v| m.version.as_deref() == Some(v)))
            .cloned()
    }

    pub fn set_live_hosts(&self, n: usize) {
        self.live_hosts.store(n, Ordering::Relaxed);
    }

    pub fn live_hosts(&self) -> usize {
        self.live_hosts.load(Ordering::Relaxed)
    }

    /// Ready to score: models are known and at least one R host is up.
    pub fn is_ready(&self) -> bool {
        self.live_hosts() > 0 && !self.models.read().expect("catalog lock poisoned").is_empty()
    }
}
