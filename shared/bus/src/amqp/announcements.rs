//! Following the catalog exchange: one listener queue per [`AmqpBus::catalog`] stream,
//! subscribed again on every new connection.
//!
//! [`AmqpBus::catalog`]: super::AmqpBus::catalog

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::connection::{sleep_or_cancel, subscribe_after};
use super::{bounded, topology, Inner};

/// Forwards announcements from the catalog exchange to `announcement_tx` until its
/// receiver is dropped or the bus shuts down.
pub(super) async fn listen(inner: Arc<Inner>, announcement_tx: mpsc::Sender<Vec<u8>>) {
    tokio::select! {
        _ = announcement_tx.closed() => {}
        _ = forward(&inner, &announcement_tx, &inner.shutdown) => {}
    }
}

async fn forward(inner: &Inner, announcement_tx: &mpsc::Sender<Vec<u8>>, stop: &CancellationToken) {
    let queue = format!("{}.listener.{}", inner.config.catalog_exchange, uuid::Uuid::new_v4().simple());
    let mut sessions = inner.session.subscribe();
    // Generations start at 1, so the first subscription takes whichever session is current.
    let mut after = 0;
    loop {
        let subscribed = subscribe_after(inner, after, stop, "catalog", |session| {
            let queue = &queue;
            async move {
                let channel = bounded("open channel", session.connection.create_channel()).await?;
                let exchange = Some(inner.config.catalog_exchange.as_str());
                let consumer = topology::consume_private_queue(&channel, queue, exchange).await?;
                Ok((channel, consumer))
            }
        })
        .await;
        let Some((generation, (_channel, mut announcements))) = subscribed else { return };
        after = generation;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = sessions.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if sessions.borrow_and_update().as_ref().map(|s| s.generation) != Some(generation) {
                        break;
                    }
                }
                item = announcements.next() => match item {
                    Some(Ok(announcement)) => {
                        if announcement_tx.try_send(announcement.data).is_err() {
                            tracing::debug!(%queue, "catalog listener lags; announcement dropped");
                        }
                    }
                    Some(Err(error)) => tracing::debug!(%queue, %error, "catalog consumer interrupted"),
                    None => {
                        // The consumer ended: its connection is gone (the next session
                        // takes over), or the broker cancelled it (its queue was deleted),
                        // and then a pause and the same connection will do.
                        if sessions.borrow().as_ref().is_some_and(|s| s.generation == generation) {
                            after = generation - 1;
                            sleep_or_cancel(stop, Duration::from_millis(500)).await;
                        }
                        break;
                    }
                }
            }
        }
    }
}
