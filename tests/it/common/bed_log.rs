//! What the bed saw go wrong (a machine that could not boot, bad user-data…), for failure
//! messages: the cloud's own check when it drops, and the message of a failing run or wait.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use serde_json::Value;

/// A bed's event and stderr logs, and how many of its error events the test took.
pub(super) struct BedLog {
    state: PathBuf,
    /// How many of the bed's error events the test provoked and took (`take_errors`).
    errors_taken: AtomicUsize,
}

thread_local! {
    /// The beds of the test on this thread. A test that fails already cannot fail again when
    /// its cloud drops (a second panic aborts), so a failing run's or wait's message says what
    /// they saw.
    static BEDS: RefCell<Vec<Weak<BedLog>>> = const { RefCell::new(Vec::new()) };
}

impl BedLog {
    /// The log of the bed whose state directory is `state`, known to this thread's failure
    /// messages while the returned handle lives.
    pub(super) fn new(state: &Path) -> Arc<BedLog> {
        let log = Arc::new(BedLog {
            state: state.to_path_buf(),
            errors_taken: AtomicUsize::new(0),
        });
        BEDS.with_borrow_mut(|beds| {
            beds.retain(|bed| bed.strong_count() > 0);
            beds.push(Arc::downgrade(&log));
        });
        log
    }

    /// The boot simulator's events (sshd-started, sshd-stopped, disk-deleted, checkip, error…).
    pub(super) fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.state.join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The bed's `error` events that the test has not taken (`take_errors`).
    pub(super) fn errors(&self) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == "error")
            .skip(self.errors_taken.load(Ordering::Relaxed))
            .collect()
    }

    /// The errors so far, which the test provoked on purpose: they are reported no longer.
    pub(super) fn take_errors(&self) -> Vec<Value> {
        let errors = self.errors();
        self.errors_taken.fetch_add(errors.len(), Ordering::Relaxed);
        errors
    }

    /// The errors not taken, and the bed's stderr, if there are any.
    pub(super) fn report(&self) -> Option<String> {
        let errors = self.errors();
        (!errors.is_empty()).then(|| {
            format!(
                "the test bed reported errors: {errors:#?}\n{}",
                read_log(&self.state)
            )
        })
    }
}

/// The reports of this thread's live beds (see `BedLog::report`), each on lines of its own,
/// to end a failure message with.
pub(super) fn reports() -> String {
    BEDS.with_borrow(|beds| {
        (beds.iter())
            .filter_map(Weak::upgrade)
            .filter_map(|bed| bed.report())
            .map(|report| format!("\n--- {report}"))
            .collect()
    })
}

pub(super) fn read_log(state: &Path) -> String {
    std::fs::read_to_string(state.join("cloud.stderr")).unwrap_or_default()
}
