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

    /// Between half the current step and all of it: callers that started together (polls
    /// after a throttled burst) do not stay in step.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.cap);
        step / 2 + step.mul_f64(rand::random::<f64>() / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(300));
        for step in [50, 100, 200, 300, 300] {
            let delay = backoff.next_delay();
            let step = Duration::from_millis(step);
            assert!(step / 2 <= delay && delay <= step, "{delay:?} for {step:?}");
        }
    }
}
