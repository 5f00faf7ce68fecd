//! Follows workers' announcements from the bus (any transport) into the [`Catalog`], and
//! the scoring metrics of each version announced.

use std::sync::Arc;
use std::time::Instant;

use crate::Catalog;
use protocol::{Announcement, PROTOCOL_VERSION};
use tokio::sync::mpsc;

/// Records every announcement until the stream ends. Undecodable ones and other protocol
/// versions are logged and skipped: one bad worker must not blind the dispatcher.
pub async fn follow(mut announcements: mpsc::Receiver<Vec<u8>>, catalog: Arc<Catalog>) {
    while let Some(body) = announcements.recv().await {
        match protocol::decode::<Announcement>(&body) {
            Ok(announcement) if announcement.version == PROTOCOL_VERSION => {
                tracing::debug!(worker = %announcement.worker, live_hosts = announcement.live_hosts, draining = announcement.draining, "worker announced");
                // Each served version's scoring series, at zero until its first request: a
                // rate of errors is then 0, not absent.
                for model in &announcement.models {
                    crate::metrics::model(&model.name, model.version.as_deref());
                }
                catalog.record(announcement, Instant::now());
            }
            Ok(announcement) => {
                tracing::warn!(worker = %announcement.worker, version = announcement.version, "ignoring announcement of another protocol version")
            }
            Err(error) => tracing::warn!(error = %error, "ignoring undecodable announcement"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{ModelInfo, ModelKind};

    /// A version announced has its scoring series at zero before its first request.
    #[tokio::test]
    async fn announced_versions_are_counted_from_zero() {
        let catalog = Arc::new(Catalog::default());
        let (announcement_tx, announcement_rx) = mpsc::channel(1);
        let info = ModelInfo {
            name: "announced".into(),
            version: Some("7".into()),
            kind: ModelKind::Predict,
            r_class: vec!["lm".into()],
            schema: None,
            predict_type: None,
            forest: None,
            engine: None,
        };
        let announcement = Announcement {
            version: PROTOCOL_VERSION,
            worker: "w".into(),
            models: vec![info],
            live_hosts: 1,
            n_hosts: 1,
            interval_ms: 1000,
            draining: false,
            failed: Vec::new(),
        };
        announcement_tx.send(protocol::encode(&announcement).unwrap()).await.unwrap();
        drop(announcement_tx);
        follow(announcement_rx, catalog.clone()).await;
        assert!(catalog.snapshot().find("announced", Some("7")).is_some());
        let text = telemetry::metrics::encode(telemetry::metrics::Format::Text);
        for outcome in ["success", "client_error", "r_error", "timeout", "rejected", "internal"] {
            let series = format!("rfleet_requests_total{{model=\"announced\",version=\"7\",outcome=\"{outcome}\"}} 0");
            assert!(text.lines().any(|line| line == series), "{series} missing:\n{text}");
        }
    }
}
