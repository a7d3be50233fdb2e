//! What a launch looks up before it creates anything (the price, the types and their image,
//! the network, the account): independent lookups, asked together. When a launch is likely (no
//! instance this machine launched for the directory is held here), they are asked beside the
//! lookup of the directory's instance rather than after it: one round trip to AWS less before
//! RunInstances, for a few read-only calls spent in vain when an instance is found after all.

use anyhow::Result;
use futures_util::future::{self, Either, LocalBoxFuture};

use super::resolve::{Resolved, resolve};
use crate::cloud::Cloud;
use crate::fleet::journal::{self, Launch};
use crate::fleet::spec::MachineSpec;
use crate::price::{self, Hourly};
use crate::state::Store;

/// What the lookups found.
pub struct LookedUp {
    pub(super) hourly: Option<Hourly>,
    pub(super) resolved: Resolved,
    /// The account, asked of STS when the user's subnets do not say it; `None`: not asked.
    pub(super) account: Option<Result<String>>,
}

/// The lookups, under way or not started yet.
pub type Lookups<'a> = LocalBoxFuture<'a, Result<LookedUp>>;

/// The lookups a launch of `spec` makes (not started until awaited).
pub fn look_up<'a>(cloud: &'a Cloud, spec: &'a MachineSpec, store: &'a Store) -> Lookups<'a> {
    Box::pin(async move {
        let wanted = &spec.launch;
        let known = store.known();
        let hourly = price::hourly(
            cloud,
            &known,
            &wanted.instance_type,
            wanted.spot.is_some(),
            None,
        );
        // The default subnets name the account; STS is asked when there are subnets given.
        let account = async {
            match wanted.subnets.is_empty() {
                true => None,
                false => Some(cloud.account_id().await),
            }
        };
        let (hourly, resolved, account) =
            tokio::join!(hourly, resolve(cloud, &known, wanted), account);
        Ok(LookedUp {
            hourly,
            resolved: resolved?,
            account,
        })
    })
}

/// `find` while the lookups go on beside it when a launch is likely; what it found, and the
/// lookups (done, under way, or not started).
pub async fn beside<'a, T>(
    find: impl Future<Output = T>,
    lookups: Lookups<'a>,
    store: &Store,
    spec: &MachineSpec,
    region: &str,
) -> (T, Lookups<'a>) {
    let held: Vec<Launch> = (store.instance_ids().iter())
        .filter_map(|id| journal::launched(store, id))
        .collect();
    if holds_one_for(&held, &spec.ownership.dir, region) {
        return (find.await, lookups);
    }
    let find = std::pin::pin!(find);
    match future::select(find, lookups).await {
        Either::Left((found, lookups)) => (found, lookups),
        Either::Right((looked_up, find)) => (find.await, Box::pin(future::ready(looked_up))),
    }
}

/// Whether this machine holds an instance it launched for `dir` in `region` (then it is likely
/// found, not launched). One launched elsewhere, or before launches were recorded, is not
/// counted: the lookups ahead are then spent in vain.
fn holds_one_for(held: &[Launch], dir: &str, region: &str) -> bool {
    held.iter()
        .any(|launch| launch.dir == dir && launch.region == region)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_launch_is_likely_unless_an_instance_launched_for_the_directory_there_is_held() {
        let launched = |dir: &str, region: &str| Launch::new(region, dir, 1, None);
        let held = [
            launched("/home/a/project", "eu-west-1"),
            launched("/home/a/other", "eu-central-1"),
        ];
        assert!(holds_one_for(&held, "/home/a/project", "eu-west-1"));
        assert!(!holds_one_for(&held, "/home/a/project", "eu-central-1"));
        assert!(!holds_one_for(&held, "/home/a/new", "eu-west-1"));
        assert!(!holds_one_for(&[], "/home/a/project", "eu-west-1"));
    }
}
