//! Intent statuses on their way to the controller: queued while the link is down, drained by
//! the link when it is up.

use std::sync::Mutex;

use pivot_proto::v1;
use tokio::sync::Notify;

/// Intent statuses waiting for the controller link.
#[derive(Debug, Default)]
pub struct Reports {
    queue: Mutex<Vec<v1::IntentStatus>>,
    notify: Notify,
}

/// At most this many reports wait for a link that is down; past that, a new status replaces the
/// queued one of the same device and generation (the controller needs the latest, not each step).
const MAX_QUEUED_REPORTS: usize = 100_000;

impl Reports {
    pub(crate) fn push(&self, s: v1::IntentStatus) {
        let mut q = self
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if q.len() < MAX_QUEUED_REPORTS {
            q.push(s);
        } else if let Some(old) = q
            .iter_mut()
            .find(|o| o.device_id == s.device_id && o.generation == s.generation)
        {
            // The link has been down long: keep only the latest status of each generation.
            *old = s;
        }
        drop(q);
        self.notify.notify_one();
    }

    /// Takes every queued report.
    pub fn drain(&self) -> Vec<v1::IntentStatus> {
        std::mem::take(
            &mut *self
                .queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Waits until a report is queued.
    pub async fn ready(&self) {
        self.notify.notified().await;
    }
}
