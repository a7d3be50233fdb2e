//! Every wait in ssh-ec2 polls through here: for an instance state, an sshd, a lock, a job, a
//! security group AWS still holds. The delays start short, so fast cases are fast, and double up
//! to a cap, so slow ones do not hammer the API; each is jittered, so callers that started
//! together (after a throttled burst) do not stay in step. A deadline is never slept past, and a
//! signal ends an interruptible wait at once. Never a fixed sleep.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::interrupt::Interrupt;

/// The first delay: most waits on loopback or a fast link are over by then.
const FIRST: Duration = Duration::from_millis(50);

pub struct Poll<'a> {
    next: Duration,
    cap: Duration,
    deadline: Option<Instant>,
    interrupt: Option<&'a Interrupt>,
}

impl<'a> Poll<'a> {
    /// Delays that grow up to `cap`; no deadline, not interruptible.
    pub fn every(cap: Duration) -> Poll<'a> {
        Poll {
            next: FIRST,
            cap,
            deadline: None,
            interrupt: None,
        }
    }

    /// Starts from `delay` rather than 50 ms: for what is known to take a while (an instance
    /// shutting down), so that it is not asked over and over in its first second.
    pub fn starting_at(self, delay: Duration) -> Poll<'a> {
        Poll {
            next: delay.min(self.cap),
            ..self
        }
    }

    /// Gives up at `deadline`: `wait` then says so instead of sleeping.
    pub fn until(self, deadline: Instant) -> Poll<'a> {
        Poll {
            deadline: Some(deadline),
            ..self
        }
    }

    /// Gives up `timeout` from now.
    pub fn within(self, timeout: Duration) -> Poll<'a> {
        self.until(Instant::now() + timeout)
    }

    /// A signal (past or to come) ends the wait with `Interrupted`.
    pub fn interruptible(self, interrupt: &'a Interrupt) -> Poll<'a> {
        Poll {
            interrupt: Some(interrupt),
            ..self
        }
    }

    /// Waits before the next look. `Ok(false)`: the deadline has passed, look no more; `Err`:
    /// a signal came (when interruptible).
    pub async fn wait(&mut self) -> Result<bool> {
        let delay = match self.deadline {
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => self.next_delay().min(left),
                _ => return Ok(false),
            },
            None => self.next_delay(),
        };
        match self.interrupt {
            Some(interrupt) => interrupt.sleep(delay).await?,
            None => tokio::time::sleep(delay).await,
        }
        Ok(true)
    }

    /// Between half the current step and all of it; the step doubles up to the cap.
    fn next_delay(&mut self) -> Duration {
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
        let mut poll = Poll::every(Duration::from_millis(300));
        for step in [50, 100, 200, 300, 300] {
            let delay = poll.next_delay();
            let step = Duration::from_millis(step);
            assert!(step / 2 <= delay && delay <= step, "{delay:?} for {step:?}");
        }
    }

    #[test]
    fn a_slow_wait_starts_from_its_own_delay() {
        let mut poll = Poll::every(Duration::from_secs(10)).starting_at(Duration::from_secs(1));
        for step in [1000, 2000, 4000, 8000, 10000] {
            let delay = poll.next_delay();
            let step = Duration::from_millis(step);
            assert!(step / 2 <= delay && delay <= step, "{delay:?} for {step:?}");
        }
    }

    #[tokio::test]
    async fn a_deadline_is_never_slept_past() {
        let started = Instant::now();
        let mut poll = Poll::every(Duration::from_secs(60)).within(Duration::from_millis(120));
        let mut waits = 0;
        while poll.wait().await.unwrap() {
            waits += 1;
        }
        assert!(waits >= 2, "{waits}");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(120), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        assert!(!poll.wait().await.unwrap(), "past the deadline");
    }
}
