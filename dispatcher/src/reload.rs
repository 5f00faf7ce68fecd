//! Files re-read while the dispatcher runs (the keys file, the traffic file): polled, and
//! handed to their owner whenever their contents change.

use std::path::PathBuf;
use std::sync::Weak;
use std::time::Duration;

/// How often a watched file is re-read.
pub const POLL: Duration = Duration::from_secs(1);

/// Re-reads `path` every [`POLL`] and calls `reload` with the owner and the new contents
/// whenever they differ from `last_text`. Comparing contents rather than mtimes also
/// catches Kubernetes' updates, which swap a symlink to a new directory. A file that
/// cannot be read, or that `reload` refuses, keeps what the owner has; each distinct
/// problem is warned once, not every second. Holds the owner only weakly: returns once it
/// is dropped.
pub async fn watch_file<O: Send + Sync + 'static>(
    path: PathBuf,
    what: &'static str,
    owner: Weak<O>,
    mut last_text: Vec<u8>,
    mut reload: impl FnMut(&O, &[u8]) -> Result<(), String> + Send + 'static,
) {
    let mut last_error: Option<String> = None;
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        poll.tick().await;
        if owner.strong_count() == 0 {
            return;
        }
        let outcome = match tokio::fs::read(&path).await {
            Ok(text) if text == last_text => continue,
            Ok(text) => {
                let Some(owner) = owner.upgrade() else { return };
                let outcome = reload(&owner, &text);
                last_text = text;
                outcome
            }
            Err(e) => Err(format!("cannot read it: {e}")),
        };
        match outcome {
            Ok(()) => last_error = None,
            Err(error) if last_error.as_ref() != Some(&error) => {
                tracing::warn!(file = %path.display(), %error, "{what} not reloaded; keeping the current one");
                last_error = Some(error);
            }
            Err(_) => {}
        }
    }
}
