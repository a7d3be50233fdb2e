//! The records of launches (`launch.json` beside the keys; see `fleet::journal`): in
//! `instances/pending-<launch id>/` until the instance is adopted, then kept in
//! `instances/<instance id>/`, where they say which account and region the instance is in.

use std::fs;

use anyhow::{Context, Result};

use super::Store;

/// The record of the launch the keys are waiting for.
const LAUNCH_FILE: &str = "launch.json";

impl Store {
    /// Files the keys of `launch` under its instance, which now exists, with the launch's
    /// record: where it was launched (see `launched_record`).
    pub fn adopt_launch(&self, launch: &str, instance_id: &str) -> Result<()> {
        let target = self.instance_dir(instance_id);
        fs::rename(self.pending_dir(launch), &target).with_context(|| {
            format!(
                "cannot keep the keys of {instance_id} in {}",
                target.display()
            )
        })
    }

    /// The record of the launch that made `instance_id`, as written; none for an instance
    /// launched by an earlier version of ssh-ec2.
    pub fn launched_record(&self, instance_id: &str) -> Option<String> {
        fs::read_to_string(self.instance_dir(instance_id).join(LAUNCH_FILE)).ok()
    }

    /// Drops the keys and the record of a launch that made no instance (or whose instance ended).
    pub fn discard_launch(&self, launch: &str) {
        let _ = fs::remove_dir_all(self.pending_dir(launch));
    }

    /// Writes (or replaces) the record of `launch` beside its keys, whole or not at all.
    pub fn record_launch(&self, launch: &str, record: &str) -> Result<()> {
        let path = self.pending_dir(launch).join(LAUNCH_FILE);
        super::replace(&path, record).context("cannot write the launch record")
    }

    /// The records of the launches whose instances were never adopted, as written.
    pub fn launch_records(&self) -> Vec<String> {
        self.pending_launches()
            .iter()
            .filter_map(|launch| {
                fs::read_to_string(self.pending_dir(launch).join(LAUNCH_FILE)).ok()
            })
            .collect()
    }

    /// Launches whose keys wait without a record, untouched for `quiet`: their run ended
    /// between generating the keys and writing the record, before anything was created.
    pub fn unrecorded_launches(&self, quiet: std::time::Duration) -> Vec<String> {
        self.pending_launches()
            .into_iter()
            .filter(|launch| {
                let dir = self.pending_dir(launch);
                !dir.join(LAUNCH_FILE).exists()
                    && fs::metadata(&dir)
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| t.elapsed().is_ok_and(|age| age >= quiet))
            })
            .collect()
    }

    fn pending_launches(&self) -> Vec<String> {
        self.entries()
            .into_iter()
            .filter_map(|name| name.strip_prefix(super::PENDING).map(str::to_string))
            .collect()
    }
}
