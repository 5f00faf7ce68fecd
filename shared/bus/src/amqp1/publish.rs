//! The dispatcher's side: calls waiting for replies, the reply link, and routing replies
//! to callers by correlation id.

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Instant;

use async_trait::async_trait;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::definitions::{ReceiverSettleMode, SenderSettleMode};
use fe2o3_amqp::types::messaging::{Body, FilterSet, Source};
use fe2o3_amqp::types::primitives::Value;
use fe2o3_amqp::Receiver;
use tokio_util::sync::CancellationToken;

use super::servicebus::SESSION_FILTER;
use super::{bounded, message, unavailable, Amqp1Bus, Dialect, Inner};
use crate::{metrics, BusError, Outgoing, Requester};

/// Attaches this bus's reply link. Broker: its private `amq.direct` key. Service Bus: the
/// session `group` of the reply queue, received and deleted (a reply nobody waits for any
/// more is worth nothing, so it is not locked).
pub(super) async fn attach_replies(
    inner: &Inner,
    session: &mut SessionHandle<()>,
    group: Option<&str>,
) -> Result<Receiver, BusError> {
    let name = format!("rfleet-replies-{}", uuid::Uuid::new_v4().simple());
    let source = Source::builder().address(inner.reply_address.clone());
    let builder = Receiver::builder().name(name);
    let builder = match group {
        None => builder.source(source.build()),
        Some(group) => {
            let mut filter = FilterSet::new();
            filter.insert(SESSION_FILTER.into(), Value::String(group.to_string()));
            builder
                .source(source.filter(filter).build())
                .sender_settle_mode(SenderSettleMode::Settled)
                .receiver_settle_mode(ReceiverSettleMode::First)
        }
    };
    let attaching = builder.attach(session);
    bounded("attach the reply link", attaching).await
}

/// Hands each reply to its caller until the reply link ends; then the session is lost.
pub(super) async fn route_replies(inner: Weak<Inner>, mut replies: Receiver, lost: CancellationToken) {
    let _lost = lost.clone().drop_guard();
    let Some(shutdown) = inner.upgrade().map(|inner| inner.shutdown.clone()) else { return };
    loop {
        let reply = tokio::select! {
            _ = lost.cancelled() => return,
            // Not detached: the 3.10 plugin answers a closing detach of an `/exchange/...`
            // link by declaring a fresh temporary queue (measured), which would outlive us.
            _ = shutdown.cancelled() => return,
            reply = replies.recv::<Body<Value>>() => reply,
        };
        let Some(inner) = inner.upgrade() else { return };
        let reply = match reply {
            Ok(reply) => reply,
            Err(error) => {
                tracing::debug!(%error, "reply link ended");
                return;
            }
        };
        let _ = replies.accept(&reply).await;
        let correlation_id = message::correlation_id(reply.message().properties.as_ref());
        let waiter = correlation_id.as_ref().and_then(|id| inner.pending.take(id));
        match waiter {
            Some(reply_tx) => {
                let _ = reply_tx.send(Ok(message::body_bytes(reply.into_body())));
            }
            None => {
                metrics::reply_dropped(metrics::AMQP1);
                tracing::debug!(?correlation_id, "dropping late, duplicate or uncorrelated reply");
            }
        }
    }
}

#[async_trait]
impl Requester for Amqp1Bus {
    async fn call(&self, outgoing: Outgoing, deadline: Instant) -> Result<Vec<u8>, BusError> {
        let inner = &self.inner;
        crate::amqp::check_queue_name(&outgoing.queue)?;
        let session = inner.current()?;
        let losses = inner.losses.load(Ordering::SeqCst);
        let correlation_id = outgoing.correlation_id.clone();
        let registered = inner.pending.register(&correlation_id)?;
        let address = inner.queue_address(&outgoing.queue);
        let request = message::request(&outgoing, &inner.reply_address, session.reply_group.as_deref());
        let lost = || {
            (inner.losses.load(Ordering::SeqCst) != losses)
                .then(|| unavailable("lost the amqp 1.0 connection while sending"))
        };
        registered
            .publish_and_await(metrics::AMQP1, &outgoing.queue, deadline, session.send(&address, request), lost)
            .await
    }

    fn queue_for(&self, model: &str, version: Option<&str>) -> String {
        match self.inner.config.dialect {
            Dialect::Broker => crate::amqp::queue_name(&self.inner.config.queue_prefix, model, version),
            Dialect::ServiceBus => super::servicebus::entity_name(&self.inner.config.queue_prefix, model, version),
        }
    }

    fn is_ready(&self) -> bool {
        self.inner.current().is_ok_and(|session| !session.lost.is_cancelled())
    }

    fn messaging_system(&self) -> &'static str {
        match self.inner.config.dialect {
            Dialect::Broker => "rabbitmq",
            Dialect::ServiceBus => "servicebus",
        }
    }
}
