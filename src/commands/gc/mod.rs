//! `ssh-ec2 --gc [--yes] [--all-regions]`: what ssh-ec2 left behind, shown, and with --yes
//! removed: this machine's instances whose keys are gone or whose expiry passed, security and
//! placement groups and launches without an instance, and local state of instances that no
//! longer exist.
//! Directories where a run goes on are left alone. Running it again finds nothing more.

mod find;
mod keys;
mod remove;
mod report;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use crate::cloud::{Cloud, Owned, OwnedPlacementGroup, SshGroup};
use crate::fleet::Skipped;
use crate::fleet::journal::Launch;
use crate::interrupt::Interrupt;
use crate::plan::FleetPlan;
use crate::printer::Printer;
use crate::state::Store;
use crate::status::ExitStatus;

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
    /// Each instance, or a cluster's nodes (head first), and why.
    instances: Vec<(Vec<Owned>, Why)>,
    groups: Vec<(String, SshGroup)>,
    placement_groups: Vec<(String, OwnedPlacementGroup)>,
    launches: Vec<Launch>,
    /// Local paths to remove, and why.
    local: Vec<(PathBuf, String)>,
    /// Left alone, and why.
    skipped: Vec<String>,
    /// Regions that could not be looked in.
    skipped_regions: Skipped,
    /// Instances of the owner launched from other machines, left to them.
    from_elsewhere: usize,
}

pub async fn gc(
    plan: &FleetPlan,
    printer: &Printer,
    yes: bool,
    all_regions: bool,
) -> Result<ExitStatus> {
    let cloud = Cloud::connect(&plan.account).await;
    let store = Store::new(&plan.dirs.root);
    // Looking may be cut short by a signal; removing, once begun, finishes.
    let found = Interrupt::install()?
        .cancel(find::find(&cloud, &store, plan, printer, all_regions))
        .await?;
    printer.out(report::report(&found, &plan.owner.name))?;
    let nothing = found.instances.is_empty()
        && found.groups.is_empty()
        && found.placement_groups.is_empty()
        && found.launches.is_empty()
        && found.local.is_empty();
    if nothing {
        printer.info("nothing to clean up");
    } else if !yes {
        printer.info("run `ssh-ec2 --gc --yes` to remove these");
    } else {
        match remove::remove(&found, &cloud, &store, plan, printer).await {
            0 => printer.info("cleaned up"),
            // Each failure was said as it came.
            _ => return Ok(ExitStatus::Failed),
        }
    }
    found.skipped_regions.check()?;
    Ok(ExitStatus::Success)
}

fn show(dir: &Option<String>) -> &str {
    dir.as_deref().unwrap_or("an unknown directory")
}
