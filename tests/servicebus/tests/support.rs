//! What the tests share: a stand-in with the queues the checks expect.

use std::time::Duration;

use servicebus_standin::{QueueConfig, Rights, SasRule, StandIn, StandInConfig};

/// Lock duration of `orders` and `sessions`: short, so lock expiry is seen in a test.
pub const LOCK: Duration = Duration::from_secs(2);
pub const KEY_NAME: &str = "RootManageSharedAccessKey";
pub const KEY: &str = "dGhpcyBpcyBub3QgYSByZWFsIGtleQ==";
pub const LISTEN_KEY_NAME: &str = "listen-only";

/// The queues `check_with_azure_sdk.py` documents.
pub async fn stand_in() -> StandIn {
    stand_in_locked(LOCK).await
}

/// As [`stand_in`], `orders` and `sessions` locked `lock` at a time.
pub async fn stand_in_locked(lock: Duration) -> StandIn {
    let queues = vec![
        QueueConfig { lock_duration: lock, ..QueueConfig::new("orders") },
        QueueConfig { max_delivery_count: 2, ..QueueConfig::new("retries") },
        QueueConfig { dead_letter_on_expiry: true, ..QueueConfig::new("expiring") },
        QueueConfig::new("dropping"),
        QueueConfig { requires_session: true, lock_duration: lock, ..QueueConfig::new("sessions") },
    ];
    let rules = vec![
        SasRule { key_name: KEY_NAME.into(), key: KEY.into(), rights: Rights::ALL },
        SasRule { key_name: LISTEN_KEY_NAME.into(), key: "bGlzdGVu".into(), rights: Rights::LISTEN },
    ];
    StandIn::start(StandInConfig { rules, queues, ..StandInConfig::default() }).await.expect("the stand-in starts")
}
