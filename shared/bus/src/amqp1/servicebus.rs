//! Azure Service Bus's dialect: wire constants and entity names. **Not yet wired**: the
//! bus connects in the broker dialect only; with [`Dialect::ServiceBus`] it refuses to
//! connect (every operation is `Unavailable`, the reason logged). What is left is listed
//! in the module docs of `amqp1` and below.
//!
//! To wire (constants from azure-sdk-for-python's `pyamqp` and `azure-servicebus`):
//! - TLS on 5671 (tokio-rustls, ring) handed to `open_with_stream`, `hostname` = the
//!   namespace host;
//! - CBS put-token on `$cbs` (`fe2o3-amqp-cbs`): [`SAS_TOKEN_TYPE`] with
//!   `credentials::sas_token(uri, key_name, key, expiry)` or [`JWT_TOKEN_TYPE`], per entity
//!   before attaching, refreshed before expiry;
//! - request links: rcv-settle-mode second, snd-settle-mode unsettled; abandon is
//!   `modified { delivery_failed: true }`; dead-letter is `rejected` with condition
//!   [`DEAD_LETTER_CONDITION`] and info [`DEAD_LETTER_REASON`] /
//!   [`DEAD_LETTER_DESCRIPTION`]; lock renewal [`RENEW_LOCK_OPERATION`] on
//!   `<entity>/$management` with [`LOCK_TOKENS`] (the delivery tag as a UUID);
//! - replies: one session-enabled queue, a receiver with source filter
//!   [`SESSION_FILTER`] = the bus's session id, requests with `reply-to-group-id`, replies
//!   with `group-id`; [`RENEW_SESSION_LOCK_OPERATION`] on its `$management`.
//!
//! [`Dialect::ServiceBus`]: super::Dialect::ServiceBus

/// CBS token types (`put-token`'s `type` application property).
pub const SAS_TOKEN_TYPE: &str = "servicebus.windows.net:sastoken";
pub const JWT_TOKEN_TYPE: &str = "jwt";
/// The CBS node.
pub const CBS_NODE: &str = "$cbs";
/// The management node, under an entity: `<entity>/$management`.
pub const MANAGEMENT_NODE: &str = "$management";
pub const RENEW_LOCK_OPERATION: &str = "com.microsoft:renew-lock";
pub const RENEW_SESSION_LOCK_OPERATION: &str = "com.microsoft:renew-session-lock";
pub const LOCK_TOKENS: &str = "lock-tokens";
pub const SESSION_ID: &str = "session-id";
/// The source filter that picks a session of a session-enabled queue.
pub const SESSION_FILTER: &str = "com.microsoft:session-filter";
pub const DEAD_LETTER_CONDITION: &str = "com.microsoft:dead-letter";
pub const DEAD_LETTER_REASON: &str = "DeadLetterReason";
pub const DEAD_LETTER_DESCRIPTION: &str = "DeadLetterErrorDescription";
/// Service Bus's longest entity name.
pub const MAX_ENTITY_NAME_CHARS: usize = 260;

/// The queue of `model` (at `version`) on Service Bus: `<prefix><model>[/version]`. Entity
/// names take letters, digits, `.`, `-`, `_` and `/` only, so the `@` of RabbitMQ's version
/// queues becomes `/`, and any other character `_`.
pub fn entity_name(prefix: &str, model: &str, version: Option<&str>) -> String {
    let name = match version {
        Some(version) => format!("{prefix}{model}/{version}"),
        None => format!("{prefix}{model}"),
    };
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/') { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_names_keep_to_service_bus_characters() {
        let check = |model: &str, version: Option<&str>, expected: &str| {
            assert_eq!(entity_name("rfleet.model.", model, version), expected, "{model} {version:?}");
        };
        check("rf-reg", None, "rfleet.model.rf-reg");
        check("rf-reg", Some("2"), "rfleet.model.rf-reg/2");
        check("rf reg", Some("2024-01-31.b"), "rfleet.model.rf_reg/2024-01-31.b");
        check("m@x", None, "rfleet.model.m_x");
    }
}
