//! Polling without fixed sleeps.

use std::time::Duration;

/// Delays between polls of something that is on its way (an instance state, an sshd): short at
/// first so fast cases are fast, capped so slow ones do not hammer the API.
pub struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Backoff {
    pub fn new(cap: Duration) -> Self {
        Self {
            next: Duration::from_millis(50),
            cap,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.cap);
        delay
    }
}
