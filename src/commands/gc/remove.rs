//! Removing what `--gc --yes` found: instances ended (as `--down` does where their directory
//! is here), launches settled, security and placement groups deleted, local state removed.

use std::path::Path;

use anyhow::{Context, Result, bail};

use super::{Leftovers, Why};
use crate::cloud::{Cloud, Instance, Owned};
use crate::fleet::end_of_life;
use crate::fleet::journal::{self, Launch};
use crate::plan::FleetPlan;
use crate::printer::Printer;
use crate::settings::values::EndOfLife;
use crate::state::{Store, lock};

/// Ends `owned` as `ssh-ec2 --down` run in its directory `dir` does, with that directory's
/// own settings (remote directory, .rsyncignore…): its results come home, then it is
/// terminated; a pull that fails stops it instead. It takes the directory's lock itself.
async fn down_in(dir: &Path, owned: &Owned, plan: &FleetPlan, cloud: &Cloud) -> Result<()> {
    let id = &owned.instance.id;
    let exe = std::env::current_exe().context("cannot find ssh-ec2's own program")?;
    let mut down = tokio::process::Command::new(exe);
    down.arg("--down")
        .arg("--region")
        .arg(&owned.region)
        .current_dir(dir);
    // The account this --gc looked in, whatever that directory's .env says.
    if let Some(profile) = &plan.account.profile {
        down.env("AWS_PROFILE", profile);
    }
    let status = down
        .status()
        .await
        .with_context(|| format!("cannot run `ssh-ec2 --down` in {}", dir.display()))?;
    let ended = match cloud.in_region(&owned.region).lookup(id).await {
        // Shutting down is ended: its groups go in the background (see `fleet::release`).
        Ok(found) => found.is_none_or(|instance| !instance.state.is_live()),
        Err(_) => false,
    };
    match (status.success(), ended) {
        (true, true) => Ok(()),
        _ => bail!(
            "{id} is not ended: `ssh-ec2 --down` in {} did not finish ({status}; see above)",
            dir.display()
        ),
    }
}

/// Removes what was found; how many could not be.
pub(super) async fn remove(
    found: &Leftovers,
    cloud: &Cloud,
    store: &Store,
    plan: &FleetPlan,
    printer: &Printer,
) -> usize {
    let mut removal = Removal {
        cloud,
        store,
        plan,
        printer,
        locks: Vec::new(),
        failed: 0,
    };
    for (nodes, why) in &found.instances {
        let ended = removal.end_instance(nodes, *why).await;
        removal.count(ended);
    }
    for launch in &found.launches {
        let ended = removal.end_launch(launch).await;
        removal.count(ended);
    }
    for (region, group) in &found.groups {
        let phase = printer.phase(format!("deleting security group {}", group.id));
        match cloud.in_region(region).delete_ssh_group(&group.id).await {
            Ok(()) => phase.done(format!("deleted security group {}", group.id)),
            Err(e) => {
                drop(phase);
                removal.count(Err(e));
            }
        }
    }
    for (region, placement) in &found.placement_groups {
        let name = &placement.name;
        let phase = printer.phase(format!("deleting placement group {name}"));
        match cloud.in_region(region).delete_placement_group(name).await {
            Ok(()) => phase.done(format!("deleted placement group {name}")),
            Err(e) => {
                drop(phase);
                removal.count(Err(e));
            }
        }
    }
    for (path, _) in &found.local {
        let removed = match path.is_dir() {
            true => std::fs::remove_dir_all(path),
            false => std::fs::remove_file(path),
        };
        if let Err(e) = removed
            && e.kind() != std::io::ErrorKind::NotFound
        {
            let e = anyhow::Error::new(e).context(format!("cannot remove {}", path.display()));
            removal.count(Err(e));
        }
    }
    drop(removal.locks);
    // Every run leaves its directory's lock file behind, unheld: bookkeeping, not a leftover
    // to report, swept along.
    lock::sweep(&plan.dirs.root);
    removal.failed
}

/// One `--gc --yes` under way: the directories' locks it holds while acting (so that no run
/// starts there meanwhile), and how many removals failed.
struct Removal<'a> {
    cloud: &'a Cloud,
    store: &'a Store,
    plan: &'a FleetPlan,
    printer: &'a Printer,
    locks: Vec<lock::DirLock>,
    failed: usize,
}

impl Removal<'_> {
    /// Says a failure as it comes.
    fn count(&mut self, done: Result<()>) {
        if let Err(e) = done {
            self.printer.error(&e);
            self.failed += 1;
        }
    }

    /// Takes the lock of `dir`; false (and said) when a run began there meanwhile.
    fn lock(&mut self, dir: &str, what: &str) -> bool {
        match lock::DirLock::try_take(&self.plan.dirs.root, Path::new(dir)) {
            Ok(Some(held)) => {
                self.locks.push(held);
                true
            }
            _ => {
                self.printer.warn(&format!(
                    "{what}: a run in {dir} began meanwhile: left alone"
                ));
                false
            }
        }
    }

    /// Ends an instance, or a cluster's nodes (head first) together.
    async fn end_instance(&mut self, nodes: &[Owned], why: Why) -> Result<()> {
        let owned = &nodes[0];
        let id = &owned.instance.id;
        if let (Why::ExpiredWithHome, Some(dir)) = (why, &owned.dir) {
            self.printer.info(&format!(
                "{id}: its expiry passed; `ssh-ec2 --down` in {dir} brings its results home, \
                 then ends it"
            ));
            return down_in(Path::new(dir), owned, self.plan, self.cloud).await;
        }
        if let Some(dir) = &owned.dir
            && !self.lock(dir, id)
        {
            return Ok(());
        }
        let there = self.cloud.in_region(&owned.region);
        let instances: Vec<Instance> = nodes.iter().map(|n| n.instance.clone()).collect();
        let store = self.store;
        end_of_life::apply(
            &there,
            store,
            &instances,
            EndOfLife::Terminate,
            self.printer,
        )
        .await
    }

    async fn end_launch(&mut self, launch: &Launch) -> Result<()> {
        if !self.lock(&launch.dir, &format!("launch {}", launch.id)) {
            return Ok(());
        }
        let there = self.cloud.in_region(&launch.region);
        journal::end(&there, launch, self.store, self.printer).await
    }
}
