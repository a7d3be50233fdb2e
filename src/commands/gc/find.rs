//! Finding what ssh-ec2 left behind: this machine's instances whose keys are gone or whose
//! expiry passed, groups (security, placement) and launches without an instance, and stale
//! local state.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::{Leftovers, UNRECORDED_AFTER, Why, keys, show};
use crate::cloud::{Cloud, Owned, OwnedPlacementGroup, SshGroup};
use crate::fleet;
use crate::fleet::journal::{self, Launch};
use crate::plan::FleetPlan;
use crate::printer::Printer;
use crate::state::{Store, lock};

/// Finds the leftovers.
pub(super) async fn find(
    cloud: &Cloud,
    store: &Store,
    plan: &FleetPlan,
    printer: &Printer,
    all_regions: bool,
) -> Result<Leftovers> {
    let state_dir = &plan.dirs.root;
    let mut found = Leftovers::default();
    let mut caller = keys::Caller::new(cloud);
    let launches = journal::unfinished(store);

    let made = fleet::owner_made(cloud, &plan.owner, all_regions, printer).await?;
    let owned = made.instances;
    found.skipped_regions = made.skipped;
    let known = Known {
        state_dir,
        store,
        owned: &owned,
        launches: &launches,
    };
    found.from_elsewhere = known.instances(&mut found);
    known.groups(made.groups, &mut found);
    known.placement_groups(made.placement_groups, &mut found);

    for launch in launches {
        match leave_launch(&mut caller, state_dir, &launch).await {
            Some(why) => found.skipped.push(format!("launch {}: {why}", launch.id)),
            None => found.launches.push(launch),
        }
    }

    let (local, kept) = stale_local_state(&mut caller, plan, store, &owned).await;
    found.local = local;
    found.skipped.extend(kept);
    Ok(found)
}

/// What a leftover is judged against: the owner's instances and the unfinished launches.
struct Known<'a> {
    state_dir: &'a Path,
    store: &'a Store,
    owned: &'a [Owned],
    launches: &'a [Launch],
}

impl Known<'_> {
    /// Whether a run goes on in `dir`: then `what` is left alone, and `found` says why.
    fn busy(&self, what: &str, dir: &Option<String>, found: &mut Leftovers) -> bool {
        let busy = dir
            .as_deref()
            .is_some_and(|dir| lock::busy(self.state_dir, Path::new(dir)));
        if busy {
            found
                .skipped
                .push(format!("{what}: a run in {} goes on", show(dir)));
        }
        busy
    }

    /// Adds this machine's instances nothing here can use any more; returns how many
    /// instances were launched from other machines.
    fn instances(&self, found: &mut Leftovers) -> usize {
        let launch_ids: HashSet<&str> = self.launches.iter().map(|l| l.id.as_str()).collect();
        let mut from_elsewhere = 0;
        // A cluster is judged, and ended, whole: by its head.
        for nodes in fleet::machines(self.owned.to_vec()) {
            let owned = &nodes[0];
            let id = &owned.instance.id;
            if !owned.this_machine {
                from_elsewhere += 1;
                continue;
            }
            // Not adopted yet: its launch is judged with the unfinished launches.
            if owned
                .launch
                .as_deref()
                .is_some_and(|l| launch_ids.contains(l))
            {
                continue;
            }
            let home = owned
                .dir
                .as_deref()
                .is_some_and(|dir| Path::new(dir).is_dir());
            let why = match (self.store.holds(id), owned.expired(), home) {
                (false, _, _) => Why::KeysGone,
                (true, true, true) => Why::ExpiredWithHome,
                (true, true, false) => Why::Expired,
                (true, false, _) => continue,
            };
            if self.busy(id, &owned.dir, found) {
                continue;
            }
            found.instances.push((nodes.clone(), why));
        }
        from_elsewhere
    }

    /// Adds this machine's security groups that no instance or launch uses.
    fn groups(&self, groups: Vec<(String, SshGroup)>, found: &mut Leftovers) {
        for (region, group) in groups {
            let used = self.owned.iter().any(|o| {
                let instance = &o.instance;
                [&instance.security_group, &instance.node_group]
                    .into_iter()
                    .any(|g| g.as_deref() == Some(&group.id))
            });
            let launched = self.launches.iter().any(|l| {
                [&l.group, &l.node_group]
                    .into_iter()
                    .any(|g| g.as_deref() == Some(&group.id))
                    || [l.group_name(), l.node_group_name()].contains(&group.name)
            });
            if used || launched || !group.this_machine {
                continue;
            }
            if self.busy(&group.id, &group.dir, found) {
                continue;
            }
            found.groups.push((region, group));
        }
    }

    /// Adds the placement groups that no instance or launch uses.
    fn placement_groups(
        &self,
        placement_groups: Vec<(String, OwnedPlacementGroup)>,
        found: &mut Leftovers,
    ) {
        for (region, placement) in placement_groups {
            let used = (self.owned.iter())
                .any(|o| o.instance.placement_group.as_deref() == Some(&placement.name));
            let launched = self
                .launches
                .iter()
                .any(|l| l.placement_group_name() == placement.name);
            if used || launched {
                continue;
            }
            let what = format!("placement group {}", placement.name);
            if self.busy(&what, &placement.dir, found) {
                continue;
            }
            found.placement_groups.push((region, placement));
        }
    }
}

/// Why an unfinished launch is left alone, if it is.
async fn leave_launch(
    caller: &mut keys::Caller<'_>,
    state_dir: &Path,
    launch: &Launch,
) -> Option<String> {
    if lock::busy(state_dir, Path::new(&launch.dir)) {
        return Some(format!("a run in {} goes on", launch.dir));
    }
    // Its instance, if any, is where only that account's credentials see it.
    caller.elsewhere(launch).await
}

/// Instance directories whose instance is gone (see `keys`), keys that wait for a launch no
/// run recorded, and rsync relays of dead runs; and the keys kept, with why.
async fn stale_local_state(
    caller: &mut keys::Caller<'_>,
    plan: &FleetPlan,
    store: &Store,
    owned: &[Owned],
) -> (Vec<(PathBuf, String)>, Vec<String>) {
    let instances = plan.dirs.root.join("instances");
    let (mut stale, kept) = keys::stale_keys(caller, store, owned, &instances).await;
    for launch in store.unrecorded_launches(UNRECORDED_AFTER) {
        stale.push((
            instances.join(format!("pending-{launch}")),
            "keys of a launch that never started".to_string(),
        ));
    }
    if let Ok(entries) = std::fs::read_dir(&plan.dirs.sockets) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix("relay-")
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<i32>().ok());
            let dead = pid.is_some_and(|pid| {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                    == Err(nix::errno::Errno::ESRCH)
            });
            if dead {
                stale.push((entry.path(), "rsync relay of a run that ended".to_string()));
            }
        }
    }
    (stale, kept)
}
