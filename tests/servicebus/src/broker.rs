//! The namespace's state shared by all connections: queues, their dead-letter sub-queues,
//! and session locks.
//!
//! Connections lock the state for one operation at a time and never across an await;
//! `changed` wakes them to deliver after anything was enqueued or given back.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;
use uuid::Uuid;

use crate::config::QueueConfig;
use crate::queue::{Lock, LockError, Queue, QueueRules, Settle, Stored};
use crate::wire::{AmqpMessage, DEAD_LETTER_QUEUE_SUFFIX};

/// What the broker keeps of a message: the message as sent and when it was enqueued.
#[derive(Debug, Clone)]
pub struct Payload {
    pub message: AmqpMessage,
    pub enqueued_at: SystemTime,
}

/// An entity a link or request names: a queue or its dead-letter sub-queue.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entity {
    pub queue: String,
    pub dead_letter: bool,
}

impl Entity {
    /// The entity of a path (`Q` or `Q/$DeadLetterQueue`), case-insensitively as Service
    /// Bus matches `$DeadLetterQueue`.
    pub fn parse(path: &str) -> Entity {
        let lower = path.to_ascii_lowercase();
        match lower.strip_suffix(&DEAD_LETTER_QUEUE_SUFFIX.to_ascii_lowercase()) {
            Some(_) => Entity { queue: path[..path.len() - DEAD_LETTER_QUEUE_SUFFIX.len()].into(), dead_letter: true },
            None => Entity { queue: path.into(), dead_letter: false },
        }
    }

    pub fn path(&self) -> String {
        if self.dead_letter {
            format!("{}{DEAD_LETTER_QUEUE_SUFFIX}", self.queue)
        } else {
            self.queue.clone()
        }
    }
}

/// Why a session cannot be given to a receiver.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionRefusal {
    /// Another receiver holds it (`com.microsoft:session-cannot-be-locked`).
    Locked(String),
    /// No unlocked session has messages (`com.microsoft:timeout`, as Service Bus answers a
    /// next-available request once its wait is over; the stand-in does not wait).
    NoneAvailable,
}

#[derive(Debug)]
struct SessionLock {
    owner: u64,
    locked_until: Instant,
}

#[derive(Debug)]
struct Entry {
    config: QueueConfig,
    main: Queue<Payload>,
    dead_letters: Queue<Payload>,
    sessions: HashMap<String, SessionLock>,
}

impl Entry {
    fn queue(&mut self, dead_letter: bool) -> &mut Queue<Payload> {
        if dead_letter {
            &mut self.dead_letters
        } else {
            &mut self.main
        }
    }

    /// Applies time, then moves whatever the main queue dead-lettered into the sub-queue.
    fn tick(&mut self, now: Instant) {
        self.main.tick(now);
        self.dead_letters.tick(now);
        self.settle_dead_letters();
        self.sessions.retain(|_, lock| lock.locked_until > now);
    }

    fn settle_dead_letters(&mut self) {
        for message in self.main.take_dead_letters() {
            self.dead_letters.insert(message);
        }
    }
}

#[derive(Debug)]
pub struct Broker {
    entries: Mutex<BTreeMap<String, Entry>>,
    pub changed: Notify,
}

impl Broker {
    pub fn new(queues: &[QueueConfig]) -> Self {
        let entries = queues
            .iter()
            .map(|config| {
                let rules = QueueRules {
                    lock_duration: config.lock_duration,
                    max_delivery_count: config.max_delivery_count,
                    dead_letter_on_expiry: config.dead_letter_on_expiry,
                };
                // The sub-queue never dead-letters again: its messages stay until received.
                let dead_letter_rules = QueueRules { max_delivery_count: u32::MAX, ..rules.clone() };
                let entry = Entry {
                    config: config.clone(),
                    main: Queue::new(rules),
                    dead_letters: Queue::new(dead_letter_rules),
                    sessions: HashMap::new(),
                };
                (config.name.clone(), entry)
            })
            .collect();
        Self { entries: Mutex::new(entries), changed: Notify::new() }
    }

    fn entries(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        // A panic while holding the lock leaves the queues as consistent as each single
        // operation left them: keep serving.
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn config(&self, queue: &str) -> Option<QueueConfig> {
        self.entries().get(queue).map(|e| e.config.clone())
    }

    /// Enqueues a message sent to `queue` (TTL from its header, else the queue's default).
    pub fn enqueue(&self, queue: &str, message: AmqpMessage, now: Instant) -> Option<i64> {
        let mut entries = self.entries();
        let entry = entries.get_mut(queue)?;
        let ttl = message.header.as_ref().and_then(|h| h.ttl).map(|ms| Duration::from_millis(ms.into()));
        let ttl = ttl.or(entry.config.default_ttl);
        let group_id = message.properties.as_ref().and_then(|p| p.group_id.clone());
        let payload = Payload { message, enqueued_at: SystemTime::now() };
        let sequence_number = entry.main.enqueue(payload, group_id, ttl, now);
        drop(entries);
        self.changed.notify_waiters();
        Some(sequence_number)
    }

    pub fn lock_next(&self, entity: &Entity, session: Option<&str>, now: Instant) -> Option<(Lock, Stored<Payload>)> {
        let mut entries = self.entries();
        let entry = entries.get_mut(&entity.queue)?;
        entry.tick(now);
        entry.queue(entity.dead_letter).lock_next(session, now)
    }

    pub fn settle(&self, entity: &Entity, token: Uuid, settle: Settle, now: Instant) -> Result<(), LockError> {
        let mut entries = self.entries();
        let entry = entries.get_mut(&entity.queue).ok_or(LockError::LockLost(token))?;
        entry.tick(now);
        let settled = entry.queue(entity.dead_letter).settle(token, settle, now);
        entry.settle_dead_letters();
        drop(entries);
        self.changed.notify_waiters();
        settled
    }

    pub fn renew(&self, entity: &Entity, token: Uuid, now: Instant) -> Result<Instant, LockError> {
        let mut entries = self.entries();
        let entry = entries.get_mut(&entity.queue).ok_or(LockError::LockLost(token))?;
        entry.tick(now);
        entry.queue(entity.dead_letter).renew(token, now)
    }

    pub fn peek(&self, entity: &Entity, from: i64, count: usize, now: Instant) -> Vec<Stored<Payload>> {
        let mut entries = self.entries();
        let Some(entry) = entries.get_mut(&entity.queue) else { return Vec::new() };
        entry.tick(now);
        entry.queue(entity.dead_letter).peek(from, count)
    }

    /// Active messages of an entity after time has been applied.
    pub fn messages(&self, entity: &Entity, now: Instant) -> Vec<Stored<Payload>> {
        let mut entries = self.entries();
        let Some(entry) = entries.get_mut(&entity.queue) else { return Vec::new() };
        entry.tick(now);
        entry.queue(entity.dead_letter).messages()
    }

    /// Locks session `wanted` (or the first unlocked one with messages) for `owner`.
    pub fn lock_session(
        &self,
        queue: &str,
        wanted: Option<&str>,
        owner: u64,
        now: Instant,
    ) -> Result<(String, Instant), SessionRefusal> {
        let mut entries = self.entries();
        let entry = entries.get_mut(queue).ok_or(SessionRefusal::NoneAvailable)?;
        entry.tick(now);
        let session = match wanted {
            Some(session) if entry.sessions.contains_key(session) => {
                return Err(SessionRefusal::Locked(session.into()));
            }
            Some(session) => session.to_owned(),
            None => entry
                .main
                .available_sessions()
                .into_iter()
                .find(|s| !entry.sessions.contains_key(s))
                .ok_or(SessionRefusal::NoneAvailable)?,
        };
        let locked_until = now + entry.config.lock_duration;
        entry.sessions.insert(session.clone(), SessionLock { owner, locked_until });
        Ok((session, locked_until))
    }

    /// When `owner`'s lock on `session` ends, or `None` if it holds none (any more).
    pub fn session_locked_until(&self, queue: &str, session: &str, owner: u64, now: Instant) -> Option<Instant> {
        let mut entries = self.entries();
        let entry = entries.get_mut(queue)?;
        entry.tick(now);
        entry.sessions.get(session).filter(|lock| lock.owner == owner).map(|lock| lock.locked_until)
    }

    /// Renews the lock on `session` if one of `owners` holds it, and the locks on the
    /// session's messages with it.
    pub fn renew_session(&self, queue: &str, session: &str, owners: &[u64], now: Instant) -> Option<Instant> {
        let mut entries = self.entries();
        let entry = entries.get_mut(queue)?;
        entry.tick(now);
        let duration = entry.config.lock_duration;
        let lock = entry.sessions.get_mut(session).filter(|lock| owners.contains(&lock.owner))?;
        lock.locked_until = now + duration;
        let locked_until = lock.locked_until;
        entry.main.renew_session_messages(session, now);
        Some(locked_until)
    }

    pub fn release_session(&self, queue: &str, session: &str, owner: u64) {
        if let Some(entry) = self.entries().get_mut(queue) {
            if entry.sessions.get(session).is_some_and(|lock| lock.owner == owner) {
                entry.sessions.remove(session);
            }
        }
        self.changed.notify_waiters();
    }
}

/// The wall-clock time of an `Instant` (for the timestamps Service Bus sends).
pub fn wall_clock(at: Instant) -> SystemTime {
    let now = Instant::now();
    if at >= now {
        SystemTime::now() + (at - now)
    } else {
        SystemTime::now() - (now - at)
    }
}

pub fn unix_millis(at: SystemTime) -> i64 {
    at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
