//! A queue's rules, sans I/O: peek-lock, lock expiry, delivery counts, dead-lettering, TTL.
//!
//! Time is an argument (`now`), so the rules are tested with plain values and no clock.
//! A message is `Available` until a receiver locks it; a lock ends in complete (gone),
//! abandon (available again, delivery count + 1), dead-letter (moved to the
//! `$DeadLetterQueue` sub-queue with `DeadLetterReason` / `DeadLetterErrorDescription`) or
//! expiry (as abandon). A message whose delivery count reaches the queue's maximum is
//! dead-lettered with `MaxDeliveryCountExceeded` instead of being offered again; one past
//! its time-to-live is dropped (or dead-lettered with `TTLExpiredException` where the
//! queue is configured so), as Service Bus does.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// A queue's settings (Service Bus's defaults: 10 deliveries, dead-lettering on expiry off).
#[derive(Debug, Clone)]
pub struct QueueRules {
    pub lock_duration: Duration,
    pub max_delivery_count: u32,
    pub dead_letter_on_expiry: bool,
}

impl Default for QueueRules {
    fn default() -> Self {
        Self { lock_duration: Duration::from_secs(30), max_delivery_count: 10, dead_letter_on_expiry: false }
    }
}

/// A stored message: the payload the server keeps (encoded AMQP sections), and what the
/// broker adds.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored<T> {
    pub payload: T,
    pub sequence_number: i64,
    /// Times it was locked before this lock (the AMQP header's `delivery-count`).
    pub delivery_count: u32,
    pub expires_at: Option<Instant>,
    pub group_id: Option<String>,
    /// `DeadLetterReason` and `DeadLetterErrorDescription`, once dead-lettered.
    pub dead_letter: Option<(String, String)>,
}

/// A lock a receiver holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lock {
    pub token: Uuid,
    pub sequence_number: i64,
    pub locked_until: Instant,
}

/// How a lock ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    Complete,
    /// Modified (delivery failed) or abandoned by `$management`: available again, its
    /// delivery count one higher (Service Bus counts every failed lock as a delivery).
    Abandon,
    /// Released: available again with its delivery count unchanged.
    Release,
    DeadLetter {
        reason: String,
        description: String,
    },
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// `com.microsoft:message-lock-lost` (management status 410 in Service Bus).
    #[error("the lock {0} was lost (expired, settled, or never held)")]
    LockLost(Uuid),
}

/// One queue and its dead-letter sub-queue.
#[derive(Debug)]
pub struct Queue<T> {
    rules: QueueRules,
    next_sequence_number: i64,
    available: BTreeMap<i64, Stored<T>>,
    locked: HashMap<Uuid, (Lock, Stored<T>)>,
    dead_letters: BTreeMap<i64, Stored<T>>,
}

impl<T: Clone> Queue<T> {
    pub fn new(rules: QueueRules) -> Self {
        Self {
            rules,
            next_sequence_number: 1,
            available: BTreeMap::new(),
            locked: HashMap::new(),
            dead_letters: BTreeMap::new(),
        }
    }

    /// Enqueues a message; `ttl` from its header or its absolute-expiry-time.
    pub fn enqueue(&mut self, payload: T, group_id: Option<String>, ttl: Option<Duration>, now: Instant) -> i64 {
        let sequence_number = self.next_sequence_number;
        self.next_sequence_number += 1;
        let message = Stored {
            payload,
            sequence_number,
            delivery_count: 0,
            expires_at: ttl.map(|ttl| now + ttl),
            group_id,
            dead_letter: None,
        };
        self.available.insert(sequence_number, message);
        sequence_number
    }

    /// Applies what time did: expired locks are abandoned, expired messages dropped or
    /// dead-lettered.
    pub fn tick(&mut self, now: Instant) {
        let lapsed: Vec<Uuid> =
            self.locked.iter().filter(|(_, (lock, _))| lock.locked_until <= now).map(|(token, _)| *token).collect();
        for token in lapsed {
            let (_, message) = self.locked.remove(&token).expect("listed above");
            self.give_back(message);
        }
        let expired: Vec<i64> = self
            .available
            .values()
            .filter(|m| m.expires_at.is_some_and(|at| at <= now))
            .map(|m| m.sequence_number)
            .collect();
        for sequence_number in expired {
            let message = self.available.remove(&sequence_number).expect("listed above");
            if self.rules.dead_letter_on_expiry {
                self.dead_letter(message, "TTLExpiredException", "The message expired and was dead lettered.");
            }
        }
    }

    /// Locks the first available message (of session `group_id`, if given).
    pub fn lock_next(&mut self, group_id: Option<&str>, now: Instant) -> Option<(Lock, Stored<T>)> {
        self.tick(now);
        let sequence_number =
            *self.available.iter().find(|(_, m)| group_id.is_none_or(|g| m.group_id.as_deref() == Some(g)))?.0;
        let message = self.available.remove(&sequence_number).expect("found above");
        let lock = Lock { token: Uuid::new_v4(), sequence_number, locked_until: now + self.rules.lock_duration };
        self.locked.insert(lock.token, (lock, message.clone()));
        Some((lock, message))
    }

    /// Ends the lock `token` as `settle` says.
    pub fn settle(&mut self, token: Uuid, settle: Settle, now: Instant) -> Result<(), LockError> {
        self.tick(now);
        let (_, message) = self.locked.remove(&token).ok_or(LockError::LockLost(token))?;
        match settle {
            Settle::Complete => {}
            Settle::Abandon => self.give_back(message),
            Settle::Release => {
                self.available.insert(message.sequence_number, message);
            }
            Settle::DeadLetter { reason, description } => self.dead_letter(message, &reason, &description),
        }
        Ok(())
    }

    /// Renews the lock `token` for another lock duration; the new expiry.
    pub fn renew(&mut self, token: Uuid, now: Instant) -> Result<Instant, LockError> {
        self.tick(now);
        let (lock, _) = self.locked.get_mut(&token).ok_or(LockError::LockLost(token))?;
        lock.locked_until = now + self.rules.lock_duration;
        Ok(lock.locked_until)
    }

    /// Renews the locks on the messages of session `group_id` (Service Bus holds a session's
    /// messages under the session's lock, so renewing the session renews them).
    pub fn renew_session_messages(&mut self, group_id: &str, now: Instant) {
        self.tick(now);
        for (lock, message) in self.locked.values_mut() {
            if message.group_id.as_deref() == Some(group_id) {
                lock.locked_until = now + self.rules.lock_duration;
            }
        }
    }

    /// Messages not yet settled (available or locked), as Service Bus counts active ones.
    pub fn depth(&self) -> usize {
        self.available.len() + self.locked.len()
    }

    /// The dead-letter sub-queue, oldest first.
    pub fn dead_letters(&self) -> Vec<Stored<T>> {
        self.dead_letters.values().cloned().collect()
    }

    /// Takes the dead-lettered messages out, oldest first (the server moves them into a
    /// queue of their own, from which they are received like any other).
    pub fn take_dead_letters(&mut self) -> Vec<Stored<T>> {
        std::mem::take(&mut self.dead_letters).into_values().collect()
    }

    /// Adds a message stored elsewhere (a dead letter moved here), keeping its sequence
    /// number, delivery count and reason; dead letters do not expire.
    pub fn insert(&mut self, mut message: Stored<T>) {
        message.expires_at = None;
        self.next_sequence_number = self.next_sequence_number.max(message.sequence_number + 1);
        self.available.insert(message.sequence_number, message);
    }

    /// Active messages (available or locked), by sequence number.
    pub fn messages(&self) -> Vec<Stored<T>> {
        let mut all: Vec<Stored<T>> =
            self.available.values().chain(self.locked.values().map(|(_, m)| m)).cloned().collect();
        all.sort_by_key(|m| m.sequence_number);
        all
    }

    /// Up to `count` active messages from sequence number `from` on, without locking them.
    pub fn peek(&self, from: i64, count: usize) -> Vec<Stored<T>> {
        self.messages().into_iter().filter(|m| m.sequence_number >= from).take(count).collect()
    }

    /// The session ids of available messages, in the order of their first message.
    pub fn available_sessions(&self) -> Vec<String> {
        let mut sessions: Vec<String> = Vec::new();
        for group_id in self.available.values().filter_map(|m| m.group_id.as_ref()) {
            if !sessions.contains(group_id) {
                sessions.push(group_id.clone());
            }
        }
        sessions
    }

    fn give_back(&mut self, mut message: Stored<T>) {
        message.delivery_count += 1;
        if message.delivery_count >= self.rules.max_delivery_count {
            let description =
                format!("Message could not be consumed after {} delivery attempts.", self.rules.max_delivery_count);
            self.dead_letter(message, "MaxDeliveryCountExceeded", &description);
        } else {
            self.available.insert(message.sequence_number, message);
        }
    }

    fn dead_letter(&mut self, mut message: Stored<T>, reason: &str, description: &str) {
        message.dead_letter = Some((reason.to_owned(), description.to_owned()));
        self.dead_letters.insert(message.sequence_number, message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(max_delivery_count: u32) -> Queue<&'static str> {
        Queue::new(QueueRules { lock_duration: Duration::from_secs(5), max_delivery_count, ..Default::default() })
    }

    #[test]
    fn an_expired_lock_makes_the_message_available_again_with_one_more_delivery() {
        let t0 = Instant::now();
        let mut q = queue(10);
        q.enqueue("a", None, None, t0);
        let (lock, first) = q.lock_next(None, t0).expect("a message");
        assert_eq!((first.payload, first.delivery_count), ("a", 0));
        assert!(q.lock_next(None, t0).is_none(), "a locked message is not offered twice");
        let t1 = lock.locked_until;
        let (_, again) = q.lock_next(None, t1).expect("the message again once its lock lapsed");
        assert_eq!((again.sequence_number, again.delivery_count), (first.sequence_number, 1));
        assert_eq!(q.settle(lock.token, Settle::Complete, t1), Err(LockError::LockLost(lock.token)));
    }

    #[test]
    fn the_last_allowed_delivery_moves_the_message_to_the_dead_letter_queue() {
        let t0 = Instant::now();
        let mut q = queue(2);
        q.enqueue("a", None, None, t0);
        for _ in 0..2 {
            let (lock, _) = q.lock_next(None, t0).expect("a message");
            q.settle(lock.token, Settle::Abandon, t0).unwrap();
        }
        assert!(q.lock_next(None, t0).is_none());
        let dead = q.dead_letters();
        assert_eq!(dead.len(), 1);
        assert_eq!(
            dead[0].dead_letter,
            Some((
                "MaxDeliveryCountExceeded".into(),
                "Message could not be consumed after 2 delivery attempts.".into()
            ))
        );
    }

    #[test]
    fn dispositions_complete_abandon_and_dead_letter() {
        let t0 = Instant::now();
        let mut q = queue(10);
        for payload in ["complete", "abandon", "dead-letter"] {
            q.enqueue(payload, None, None, t0);
        }
        let (a, _) = q.lock_next(None, t0).unwrap();
        let (b, _) = q.lock_next(None, t0).unwrap();
        let (c, _) = q.lock_next(None, t0).unwrap();
        q.settle(a.token, Settle::Complete, t0).unwrap();
        q.settle(b.token, Settle::Abandon, t0).unwrap();
        let dead = Settle::DeadLetter { reason: "bad-input".into(), description: "no column x".into() };
        q.settle(c.token, dead, t0).unwrap();
        assert_eq!(q.depth(), 1);
        let (_, abandoned) = q.lock_next(None, t0).unwrap();
        assert_eq!((abandoned.payload, abandoned.delivery_count), ("abandon", 1));
        let dead = q.dead_letters();
        assert_eq!(dead[0].payload, "dead-letter");
        assert_eq!(dead[0].dead_letter, Some(("bad-input".into(), "no column x".into())));
    }

    #[test]
    fn renewing_a_lock_keeps_it_past_its_first_expiry() {
        let t0 = Instant::now();
        let mut q = queue(10);
        q.enqueue("a", None, None, t0);
        let (lock, _) = q.lock_next(None, t0).unwrap();
        let t1 = t0 + Duration::from_secs(4);
        let until = q.renew(lock.token, t1).unwrap();
        assert_eq!(until, t1 + Duration::from_secs(5));
        assert!(q.lock_next(None, lock.locked_until).is_none(), "the renewed lock still holds");
        assert_eq!(q.settle(lock.token, Settle::Complete, lock.locked_until), Ok(()));
    }

    #[test]
    fn expired_messages_are_dropped_unless_the_queue_dead_letters_them() {
        let t0 = Instant::now();
        for (dead_letter_on_expiry, dead) in [(false, 0), (true, 1)] {
            let mut q = Queue::new(QueueRules { dead_letter_on_expiry, ..Default::default() });
            q.enqueue("old", None, Some(Duration::from_secs(1)), t0);
            assert!(q.lock_next(None, t0 + Duration::from_secs(1)).is_none());
            assert_eq!((q.depth(), q.dead_letters().len()), (0, dead), "dead_letter_on_expiry={dead_letter_on_expiry}");
        }
    }

    #[test]
    fn released_messages_keep_their_count_and_dead_letters_move_with_theirs() {
        let t0 = Instant::now();
        let mut q = queue(2);
        q.enqueue("a", Some("s1".into()), None, t0);
        let (lock, _) = q.lock_next(None, t0).unwrap();
        q.settle(lock.token, Settle::Release, t0).unwrap();
        let (lock, again) = q.lock_next(None, t0).unwrap();
        assert_eq!(again.delivery_count, 0, "a release is not a delivery");
        assert_eq!(q.available_sessions(), Vec::<String>::new(), "a locked message's session is not offered");
        q.settle(lock.token, Settle::DeadLetter { reason: "r".into(), description: "d".into() }, t0).unwrap();
        let mut dlq = queue(u32::MAX);
        for message in q.take_dead_letters() {
            dlq.insert(message);
        }
        assert!(q.dead_letters().is_empty());
        let (_, dead) = dlq.lock_next(None, t0).unwrap();
        assert_eq!((dead.sequence_number, dead.dead_letter), (1, Some(("r".into(), "d".into()))));
        assert_eq!(dlq.peek(0, 10).len(), 1, "peek sees locked messages too");
    }

    #[test]
    fn renewing_a_session_renews_the_locks_on_its_messages() {
        let t0 = Instant::now();
        let mut q = queue(10);
        q.enqueue("s1-a", Some("s1".into()), None, t0);
        q.enqueue("s2-a", Some("s2".into()), None, t0);
        let (s1, _) = q.lock_next(Some("s1"), t0).unwrap();
        let (s2, _) = q.lock_next(Some("s2"), t0).unwrap();
        let t1 = t0 + Duration::from_secs(4);
        q.renew_session_messages("s1", t1);
        let t2 = s1.locked_until;
        assert_eq!(q.settle(s1.token, Settle::Complete, t2), Ok(()), "renewed with its session");
        assert_eq!(q.settle(s2.token, Settle::Complete, t2), Err(LockError::LockLost(s2.token)));
    }

    #[test]
    fn a_session_receiver_gets_only_its_sessions_messages() {
        let t0 = Instant::now();
        let mut q = queue(10);
        q.enqueue("s1-a", Some("s1".into()), None, t0);
        q.enqueue("s2-a", Some("s2".into()), None, t0);
        let (_, m) = q.lock_next(Some("s2"), t0).unwrap();
        assert_eq!(m.payload, "s2-a");
        assert!(q.lock_next(Some("s2"), t0).is_none());
    }
}
