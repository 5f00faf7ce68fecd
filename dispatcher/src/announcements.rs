//! Follows workers' announcements from the bus (any transport) into the [`Catalog`].

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
                catalog.record(announcement, Instant::now());
            }
            Ok(announcement) => {
                tracing::warn!(worker = %announcement.worker, version = announcement.version, "ignoring announcement of another protocol version")
            }
            Err(error) => tracing::warn!(error = %error, "ignoring undecodable announcement"),
        }
    }
}
