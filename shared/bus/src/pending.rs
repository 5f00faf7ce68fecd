//! Calls waiting for their replies, by correlation id, as both broker transports (`amqp`,
//! `amqp1`) keep them: a call registers before it publishes, its reply consumer hands each
//! reply to the call it answers, and a lost connection fails every call at once.

use std::collections::HashMap;
use std::future::Future;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::{metrics, BusError};

/// Where a waiting caller's reply (or the reason it will never come) goes.
pub(crate) type ReplyTx = oneshot::Sender<Result<Vec<u8>, BusError>>;

#[derive(Default)]
pub(crate) struct Pending(Mutex<HashMap<String, ReplyTx>>);

/// Removes the pending entry when the caller stops waiting (deadline, error or
/// cancellation), so a reply that comes later finds nobody and is dropped.
pub(crate) struct Registered<'a> {
    pending: &'a Pending,
    correlation_id: &'a str,
    reply_rx: Option<oneshot::Receiver<Result<Vec<u8>, BusError>>>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.pending.0.lock().remove(self.correlation_id);
    }
}

impl Pending {
    /// Registers a call; `DuplicateId` while another call waits under the same id.
    pub(crate) fn register<'a>(&'a self, correlation_id: &'a str) -> Result<Registered<'a>, BusError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let mut pending = self.0.lock();
        if pending.contains_key(correlation_id) {
            return Err(BusError::DuplicateId(correlation_id.to_string()));
        }
        pending.insert(correlation_id.to_string(), reply_tx);
        Ok(Registered { pending: self, correlation_id, reply_rx: Some(reply_rx) })
    }

    /// The call `correlation_id` answers, if one still waits.
    pub(crate) fn take(&self, correlation_id: &str) -> Option<ReplyTx> {
        self.0.lock().remove(correlation_id)
    }

    /// The connection is gone: every waiting call fails with `error`; how many there were.
    pub(crate) fn fail_all(&self, error: impl Fn() -> BusError) -> usize {
        let pending: Vec<_> = self.0.lock().drain().collect();
        let failed = pending.len();
        for (_, reply_tx) in pending {
            let _ = reply_tx.send(Err(error()));
        }
        failed
    }
}

impl Registered<'_> {
    /// Publishes the request (`publishing`, counted under `transport`) and waits for its
    /// reply, both until `deadline`. `lost_since_registering` says whether the connection
    /// was lost meanwhile: a reply would then have gone to a reply address that is gone.
    pub(crate) async fn publish_and_await(
        mut self,
        transport: &'static str,
        queue: &str,
        deadline: Instant,
        publishing: impl Future<Output = Result<(), BusError>>,
        lost_since_registering: impl FnOnce() -> Option<BusError>,
    ) -> Result<Vec<u8>, BusError> {
        let started = Instant::now();
        let published = match tokio::time::timeout_at(deadline.into(), publishing).await {
            Ok(published) => published,
            Err(_) => Err(BusError::DeadlineExceeded),
        };
        metrics::published(transport, &published, started.elapsed());
        if let Err(error) = published {
            tracing::debug!(%queue, correlation_id = %self.correlation_id, %error, "publishing request failed");
            return Err(error);
        }
        if let Some(error) = lost_since_registering() {
            return Err(error);
        }
        let reply_rx = self.reply_rx.take().expect("awaited once");
        match tokio::time::timeout_at(deadline.into(), reply_rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(BusError::Unavailable("the bus shut down".into())),
            Err(_) => Err(BusError::DeadlineExceeded),
        }
    }
}
