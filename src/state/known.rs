//! What AWS said that changes slowly or never, kept in the state directory (`known.json`) so
//! that the next runs need not ask again: prices and instance types (and a refusal).
//! Each entry carries when it was learned; one older than its caller allows, or unreadable, is
//! asked again. A cache only: failing to read or write it never fails a run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// How long a price stays good: AWS changes on-demand prices a few times a year.
pub const PRICE_AGE: Duration = Duration::from_secs(24 * 3600);
/// How long a spot price stays good: it moves within the day.
pub const SPOT_PRICE_AGE: Duration = Duration::from_secs(3600);
/// How long what an instance type has (vCPUs, GPUs, architectures) stays good: it never
/// changes, but a day bounds what a bad answer could cost.
pub const TYPE_AGE: Duration = Duration::from_secs(24 * 3600);

/// How long a refusal that AWS would repeat is remembered (the SSH rule of a new group, after
/// its instance launched): long enough to spare the runs of a day, short enough to notice a fix.
pub const REFUSAL_AGE: Duration = Duration::from_secs(24 * 3600);

#[derive(Serialize, Deserialize)]
struct Entry {
    /// Seconds since the Unix epoch.
    at: u64,
    value: serde_json::Value,
}

pub struct Known {
    path: PathBuf,
}

impl Known {
    pub fn in_dir(state_dir: &Path) -> Known {
        Known {
            path: state_dir.join("known.json"),
        }
    }

    /// The value kept under `key`, if it was learned less than `max_age` ago.
    pub fn get<T: DeserializeOwned>(&self, key: &str, max_age: Duration) -> Option<T> {
        let entry = self.read().remove(key)?;
        if !fresh(entry.at, now(), max_age) {
            return None;
        }
        serde_json::from_value(entry.value).ok()
    }

    /// Keeps `value` under `key`, learned now. Written whole, then renamed into place, so a
    /// run reading it meanwhile sees the old file or the new one.
    pub fn put<T: Serialize>(&self, key: &str, value: &T) {
        let Ok(value) = serde_json::to_value(value) else {
            return;
        };
        let mut entries = self.read();
        entries.insert(key.to_string(), Entry { at: now(), value });
        let Ok(json) = serde_json::to_vec_pretty(&entries) else {
            return;
        };
        let temporary = self
            .path
            .with_extension(format!("json.{}", std::process::id()));
        let written =
            std::fs::write(&temporary, json).and_then(|()| std::fs::rename(&temporary, &self.path));
        if let Err(e) = written {
            tracing::debug!("cannot keep {key} in {}: {e}", self.path.display());
        }
    }

    fn read(&self) -> BTreeMap<String, Entry> {
        std::fs::read(&self.path)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .unwrap_or_default()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Learned at `at`, is it younger than `max_age` at `now`? Not when the clock went back past it.
fn fresh(at: u64, now: u64, max_age: Duration) -> bool {
    now.checked_sub(at)
        .is_some_and(|age| age < max_age.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_good_for_its_age_and_no_longer() {
        let day = Duration::from_secs(86400);
        assert!(fresh(1000, 1000, day));
        assert!(fresh(1000, 1000 + 86399, day));
        assert!(!fresh(1000, 1000 + 86400, day), "a day old");
        assert!(!fresh(1000, 999, day), "the clock went back");
    }

    #[test]
    fn values_are_kept_by_key_and_survive_a_new_reader() {
        let dir = tempfile::tempdir().unwrap();
        let known = Known::in_dir(dir.path());
        assert_eq!(
            known.get::<f64>("price/eu-central-1/g5.xlarge", PRICE_AGE),
            None
        );
        known.put("price/eu-central-1/g5.xlarge", &Some(1.006));
        known.put("price/eu-central-1/x9.huge", &None::<f64>);
        let again = Known::in_dir(dir.path());
        let price: Option<Option<f64>> = again.get("price/eu-central-1/g5.xlarge", PRICE_AGE);
        assert_eq!(price, Some(Some(1.006)));
        let unknown: Option<Option<f64>> = again.get("price/eu-central-1/x9.huge", PRICE_AGE);
        assert_eq!(
            unknown,
            Some(None),
            "an unknown price is known to be unknown"
        );
        assert_eq!(
            again.get::<Option<f64>>("price/eu-central-1/g5.xlarge", Duration::ZERO),
            None
        );
        std::fs::write(dir.path().join("known.json"), "not json").unwrap();
        assert_eq!(
            again.get::<Option<f64>>("price/eu-central-1/g5.xlarge", PRICE_AGE),
            None
        );
    }
}
