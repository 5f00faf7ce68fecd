//! The traffic splits a dispatcher routes by (`models.traffic_file`, see
//! `settings::traffic`), kept current: the file is read at start and re-read when its
//! contents change ([`crate::reload`]); an invalid file keeps the last good splits.

use std::path::Path;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use settings::traffic::{Traffic, TrafficError};

/// The splits now in force; empty (every model by the default rule) without a file.
#[derive(Debug, Default)]
pub struct TrafficSplits {
    current: RwLock<Arc<Traffic>>,
    /// Why the file's latest contents were refused, while they are (the splits in force
    /// are then the last good ones).
    refused: Mutex<Option<String>>,
}

impl TrafficSplits {
    pub fn current(&self) -> Arc<Traffic> {
        self.current.read().clone()
    }

    pub fn set(&self, traffic: Traffic) {
        *self.current.write() = Arc::new(traffic);
    }

    /// Why the traffic file's latest contents were refused, if they were.
    pub fn refused(&self) -> Option<String> {
        self.refused.lock().clone()
    }

    /// Reads the traffic file (an error stops start-up: a split that is not what the file
    /// says must not serve), then follows it for as long as `self` lives. Needs a tokio
    /// runtime.
    pub fn follow_file(self: &Arc<Self>, path: &Path) -> Result<(), TrafficError> {
        let shown = path.display().to_string();
        let text = std::fs::read(path).map_err(|source| TrafficError::Read { path: shown.clone(), source })?;
        self.set(Traffic::parse(&String::from_utf8_lossy(&text), &shown)?);
        tracing::info!(traffic_file = %shown, models = ?self.current().models.keys().collect::<Vec<_>>(), "traffic splits read");
        let reload = move |splits: &TrafficSplits, text: &[u8]| {
            let parsed = Traffic::parse(&String::from_utf8_lossy(text), &shown).map_err(|e| e.to_string());
            *splits.refused.lock() = parsed.as_ref().err().cloned();
            let traffic = parsed?;
            tracing::info!(traffic_file = %shown, models = ?traffic.models.keys().collect::<Vec<_>>(), "traffic splits reloaded");
            splits.set(traffic);
            Ok(())
        };
        tokio::spawn(crate::reload::watch_file(path.to_path_buf(), "traffic file", Arc::downgrade(self), text, reload));
        Ok(())
    }
}
