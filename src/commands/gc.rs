//! `ssh-ec2 --gc [--yes] [--all-regions]`: what ssh-ec2 left behind, shown, and with --yes
//! removed: this machine's instances whose keys are gone or whose expiry passed, security
//! groups and launches without an instance, and local state of instances that no longer exist.
//! Directories where a run goes on are left alone. Running it again finds nothing more.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{AlreadyReported, Ground};
use crate::cloud::{Cloud, Owned, SshGroup, State};
use crate::config::EndOfLife;
use crate::fleet::journal::{self, Launch};
use crate::fleet::{self, Skipped, end_of_life};
use crate::keys::KeyStore;
use crate::lock;
use crate::plan::Plan;
use crate::printer::Printer;

/// Keys waiting without a launch record for this long belong to no run any more.
const UNRECORDED_AFTER: Duration = Duration::from_secs(600);

/// Why an instance is a leftover.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Why {
    /// Nothing here can reach it.
    KeysGone,
    /// Its `ssh-ec2:expires-at` has passed, and its directory is on this machine: its results
    /// come home there before it ends.
    ExpiredWithHome,
    /// Its `ssh-ec2:expires-at` has passed; its directory is gone from this machine.
    Expired,
}

/// What --gc found.
#[derive(Default)]
struct Leftovers {
    instances: Vec<(Owned, Why)>,
    groups: Vec<(String, SshGroup)>,
    launches: Vec<Launch>,
    /// Local paths to remove, and why.
    local: Vec<(PathBuf, String)>,
    /// Lock files no run holds.
    locks: usize,
    /// Left alone, and why.
    skipped: Vec<String>,
    /// Regions that could not be looked in.
    skipped_regions: Skipped,
}

pub async fn gc(plan: &Plan, printer: &Printer, yes: bool, all_regions: bool) -> Result<i32> {
    let ground = Ground::open(plan).await?;
    // Looking may be cut short by a signal; removing, once begun, finishes.
    let found = ground
        .interrupt
        .cancel(find(&ground, plan, printer, all_regions))
        .await?;
    let nothing = found.instances.is_empty()
        && found.groups.is_empty()
        && found.launches.is_empty()
        && found.local.is_empty()
        && found.locks == 0;
    if nothing {
        printer.info("nothing to clean up");
    } else if !yes {
        printer.info("run `ssh-ec2 --gc --yes` to remove these");
    } else {
        match remove(&found, &ground.cloud, &ground.store, plan, printer).await {
            0 => printer.info("cleaned up"),
            _ => return Err(AlreadyReported.into()),
        }
    }
    found.skipped_regions.check()?;
    Ok(0)
}

/// Finds the leftovers, and reports them on stdout.
async fn find(
    ground: &Ground,
    plan: &Plan,
    printer: &Printer,
    all_regions: bool,
) -> Result<Leftovers> {
    let (cloud, store) = (&ground.cloud, &ground.store);
    let busy = |dir: &Option<String>| {
        dir.as_deref()
            .is_some_and(|dir| lock::busy(&plan.state_dir, Path::new(dir)))
    };
    let mut found = Leftovers::default();
    let launches = journal::unfinished(store);
    let launch_ids: HashSet<&str> = launches.iter().map(|l| l.id.as_str()).collect();

    let (owned, groups, skipped_regions) =
        fleet::owner_instances_and_groups(cloud, &plan.ownership, all_regions, printer).await?;
    found.skipped_regions = skipped_regions;
    let mut from_elsewhere = 0;
    for owned in &owned {
        let id = &owned.instance.id;
        if !owned.this_machine {
            from_elsewhere += 1;
            continue;
        }
        // Not adopted yet: its launch is settled below.
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
        let why = match (store.holds(id), owned.expired(), home) {
            (false, _, _) => Why::KeysGone,
            (true, true, true) => Why::ExpiredWithHome,
            (true, true, false) => Why::Expired,
            (true, false, _) => continue,
        };
        if busy(&owned.dir) {
            found
                .skipped
                .push(format!("{id}: a run in {} goes on", show(&owned.dir)));
            continue;
        }
        found.instances.push((owned.clone(), why));
    }

    for (region, group) in groups {
        let used = owned
            .iter()
            .any(|o| o.instance.security_group.as_deref() == Some(&group.id));
        let launched = launches
            .iter()
            .any(|l| l.group.as_deref() == Some(&group.id) || l.group_name() == group.name);
        if used || launched || !group.this_machine {
            continue;
        }
        if busy(&group.dir) {
            found.skipped.push(format!(
                "{}: a run in {} goes on",
                group.id,
                show(&group.dir)
            ));
            continue;
        }
        found.groups.push((region, group));
    }

    for launch in launches {
        match lock::busy(&plan.state_dir, Path::new(&launch.dir)) {
            true => found.skipped.push(format!(
                "launch {}: a run in {} goes on",
                launch.id, launch.dir
            )),
            false => found.launches.push(launch),
        }
    }

    found.local = stale_local_state(cloud, plan, store, &owned).await?;
    found.locks = lock::sweep(&plan.state_dir, true);

    report(&found, &plan.ownership.owner, from_elsewhere);
    Ok(found)
}

fn show(dir: &Option<String>) -> &str {
    dir.as_deref().unwrap_or("an unknown directory")
}

/// One line per leftover, on stdout.
fn report(found: &Leftovers, owner: &str, from_elsewhere: usize) {
    for (owned, why) in &found.instances {
        let i = &owned.instance;
        let reason = match why {
            Why::KeysGone => "its keys are gone from this machine",
            Why::Expired | Why::ExpiredWithHome => "its expiry passed",
        };
        let results = match (i.state, why) {
            (State::Pending | State::ShuttingDown | State::Terminated, _) => "",
            (_, Why::ExpiredWithHome) => {
                "; its results come home to its directory first, as `ssh-ec2 --down` there does"
            }
            (_, Why::Expired) => {
                "; may hold results not brought home, and its directory is gone from this machine"
            }
            (_, Why::KeysGone) => {
                "; may hold results not brought home, which cannot be pulled from here"
            }
        };
        println!(
            "instance {} ({}, {}) of {}: {reason}{results}",
            i.id,
            owned.region,
            i.state.as_str(),
            show(&owned.dir)
        );
    }
    for (region, group) in &found.groups {
        println!(
            "security group {} ({}, {region}) of {}: no instance uses it",
            group.id,
            group.name,
            show(&group.dir)
        );
    }
    for launch in &found.launches {
        let sent = match launch.sent {
            Some(_) => "its instance, if any, is terminated",
            None => "it launched nothing",
        };
        println!(
            "launch {} ({}) of {}: unfinished (its run ended first); {sent}",
            launch.id, launch.region, launch.dir
        );
    }
    for (path, why) in &found.local {
        println!("local state {}: {why}", path.display());
    }
    if found.locks > 0 {
        println!("{} lock files that no run holds", found.locks);
    }
    for skipped in &found.skipped {
        println!("left alone: {skipped}");
    }
    if from_elsewhere > 0 {
        println!(
            "left alone: {from_elsewhere} instances of {owner} launched from other machines \
             (`ssh-ec2 --list` shows them; --gc there cleans them)"
        );
    }
}

/// Instance directories whose instance is gone (terminated, or unknown in every enabled
/// region), keys that wait for a launch no run recorded, and rsync relays of dead runs.
async fn stale_local_state(
    cloud: &Cloud,
    plan: &Plan,
    store: &KeyStore,
    owned: &[Owned],
) -> Result<Vec<(PathBuf, String)>> {
    let instances = plan.state_dir.join("instances");
    let mut stale = Vec::new();
    // The other regions' connections, made once, when an instance is not found in this one.
    let mut elsewhere = None;
    for id in store.instance_ids() {
        // Already listed: its state is known. Else, whatever AWS cannot answer now is kept:
        // only a clear "gone" removes keys.
        let listed = owned.iter().find(|o| o.instance.id == id);
        let looked_up = match listed {
            Some(seen) => Ok(Some(seen.instance.clone())),
            None => cloud.lookup(&id).await,
        };
        let gone = match looked_up {
            Ok(Some(instance)) => instance.state == State::Terminated,
            Ok(None) => {
                if elsewhere.is_none() {
                    let regions = cloud.enabled_regions().await?;
                    let others = regions.iter().filter(|r| **r != cloud.region);
                    elsewhere = Some(others.map(|r| cloud.in_region(r)).collect::<Vec<_>>());
                }
                let mut anywhere = false;
                for there in elsewhere.iter().flatten() {
                    anywhere |= match there.lookup(&id).await {
                        Ok(found) => found.is_some_and(|i| i.state != State::Terminated),
                        Err(_) => true,
                    };
                }
                !anywhere
            }
            Err(e) => {
                tracing::debug!("keeping the keys of {id}: {e}");
                false
            }
        };
        if gone {
            stale.push((
                instances.join(&id),
                format!("keys of {id}, which no longer exists"),
            ));
        }
    }
    for launch in store.unrecorded_launches(UNRECORDED_AFTER) {
        stale.push((
            instances.join(format!("pending-{launch}")),
            "keys of a launch that never started".to_string(),
        ));
    }
    if let Ok(entries) = std::fs::read_dir(&plan.socket_dir) {
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
    Ok(stale)
}

/// Ends `owned` as `ssh-ec2 --down` run in its directory `dir` does, with that directory's
/// own settings (remote directory, .rsyncignore…): its results come home, then it is
/// terminated; a pull that fails stops it instead. It takes the directory's lock itself.
async fn down_in(dir: &Path, owned: &Owned, plan: &Plan, cloud: &Cloud) -> Result<()> {
    let id = &owned.instance.id;
    let exe = std::env::current_exe().context("cannot find ssh-ec2's own program")?;
    let mut down = tokio::process::Command::new(exe);
    down.arg("--down")
        .arg("--region")
        .arg(&owned.region)
        .current_dir(dir);
    // The account this --gc looked in, whatever that directory's .env says.
    if let Some(profile) = &plan.aws_profile {
        down.env("AWS_PROFILE", profile);
    }
    let status = down
        .status()
        .await
        .with_context(|| format!("cannot run `ssh-ec2 --down` in {}", dir.display()))?;
    let ended = match cloud.in_region(&owned.region).lookup(id).await {
        Ok(found) => found.is_none_or(|instance| instance.state == State::Terminated),
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
async fn remove(
    found: &Leftovers,
    cloud: &Cloud,
    store: &KeyStore,
    plan: &Plan,
    printer: &Printer,
) -> usize {
    let mut failed = 0;
    let mut fail = |e: anyhow::Error| {
        printer.error(&e);
        failed += 1;
    };
    // Held while acting, so that no run starts there meanwhile.
    let mut locks = Vec::new();
    for (owned, why) in &found.instances {
        if let (Why::ExpiredWithHome, Some(dir)) = (why, &owned.dir) {
            printer.info(&format!(
                "{}: its expiry passed; `ssh-ec2 --down` in {dir} brings its results home, \
                 then ends it",
                owned.instance.id
            ));
            if let Err(e) = down_in(Path::new(dir), owned, plan, cloud).await {
                fail(e);
            }
            continue;
        }
        if let Some(dir) = &owned.dir {
            match lock::DirLock::try_take(&plan.state_dir, Path::new(dir)) {
                Ok(Some(held)) => locks.push(held),
                _ => {
                    printer.warn(&format!(
                        "{}: a run in {dir} began meanwhile: left alone",
                        owned.instance.id
                    ));
                    continue;
                }
            }
        }
        let there = cloud.in_region(&owned.region);
        let ended = end_of_life::apply(
            &there,
            store,
            &owned.instance,
            EndOfLife::Terminate,
            printer,
        )
        .await;
        if let Err(e) = ended {
            fail(e);
        }
    }
    for launch in &found.launches {
        match lock::DirLock::try_take(&plan.state_dir, Path::new(&launch.dir)) {
            Ok(Some(held)) => locks.push(held),
            _ => {
                printer.warn(&format!(
                    "launch {}: a run in {} began meanwhile: left alone",
                    launch.id, launch.dir
                ));
                continue;
            }
        }
        let there = cloud.in_region(&launch.region);
        if let Err(e) = journal::end(&there, launch, store, printer).await {
            fail(e);
        }
    }
    for (region, group) in &found.groups {
        let there = cloud.in_region(region);
        let phase = printer.phase(format!("deleting security group {}", group.id));
        match there.delete_ssh_group(&group.id).await {
            Ok(()) => phase.done(format!("deleted security group {}", group.id)),
            Err(e) => {
                drop(phase);
                fail(e);
            }
        }
    }
    for (path, _) in &found.local {
        let removed = match path.is_dir() {
            true => std::fs::remove_dir_all(path),
            false => std::fs::remove_file(path),
        };
        match removed {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                fail(anyhow::Error::new(e).context(format!("cannot remove {}", path.display())))
            }
            _ => {}
        }
    }
    drop(locks);
    lock::sweep(&plan.state_dir, false);
    failed
}
