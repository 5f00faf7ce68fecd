//! Catalog listeners: one receiving link (broker: its own exclusive queue on the catalog
//! topic) per [`Amqp1Bus::catalog`] stream, attached again on every new session.
//!
//! [`Amqp1Bus::catalog`]: super::Amqp1Bus::catalog

use std::sync::Arc;

use fe2o3_amqp::types::messaging::Body;
use fe2o3_amqp::types::primitives::Value;
use fe2o3_amqp::Receiver;
use tokio::sync::mpsc;

use super::connection::subscribe_after;
use super::{bounded, message, Inner};

pub(super) async fn listen(inner: Arc<Inner>, announcement_tx: mpsc::Sender<Vec<u8>>) {
    let stop = inner.shutdown.child_token();
    let _stop = stop.clone().drop_guard();
    let address = inner.catalog_address();
    let mut after = 0;
    loop {
        let attached = tokio::select! {
            _ = announcement_tx.closed() => return,
            attached = subscribe_after(&inner, after, &stop, "catalog", |session| {
                let address = &address;
                async move {
                    let mut handle = session.session.lock().await;
                    let name = format!("rfleet-catalog-{}", uuid::Uuid::new_v4().simple());
                    bounded("attach the catalog link", Receiver::attach(&mut handle, name, address.as_str())).await
                }
            }) => attached,
        };
        let Some((session, mut receiver)) = attached else { return };
        loop {
            let received = tokio::select! {
                _ = announcement_tx.closed() => return,
                // Not detached: see `route_replies`.
                _ = stop.cancelled() => return,
                _ = session.lost.cancelled() => break,
                received = receiver.recv::<Body<Value>>() => received,
            };
            match received {
                Ok(announcement) => {
                    let _ = receiver.accept(&announcement).await;
                    if announcement_tx.try_send(message::body_bytes(announcement.into_body())).is_err() {
                        tracing::debug!("catalog listener lags; announcement dropped");
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, "catalog link ended");
                    break;
                }
            }
        }
        after = if session.lost.is_cancelled() { session.generation } else { session.generation - 1 };
    }
}
