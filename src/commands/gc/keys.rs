//! Whether the keys of an instance launched from here may go. They are the only way into it, so
//! only when that instance is seen terminated, or when the account and region it was launched
//! in no longer list it (AWS forgets a terminated instance after about an hour) and its launch
//! is older than `VISIBILITY_LAG` (AWS may not list a new one yet). Other credentials (another
//! AWS_PROFILE, another account) see nothing of it: their silence proves nothing, and the keys
//! stay, with the reason said.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::cloud::{Cloud, InRegion, Owned, State, VISIBILITY_LAG};
use crate::fleet::journal::{self, Launch};
use crate::state::Store;

/// What AWS says of an instance whose keys are here.
#[derive(Debug)]
enum Seen {
    State(State),
    /// Where it was looked for, AWS does not list it.
    NotListed,
    /// Not looked for: these credentials cannot see it.
    NotAsked(String),
    /// The look failed.
    Failed(String),
}

/// Where to look for it.
#[derive(Debug, PartialEq, Eq)]
enum Look {
    /// The region of its launch, with credentials of its account (or of an unknown one).
    In(String),
    /// Launched by an earlier version, which recorded neither: here, then every region.
    Everywhere,
    /// Not with these credentials, and why.
    Not(String),
}

/// What becomes of the keys.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Remove,
    /// Kept; the reason to say, when there is one (a live instance needs none).
    Keep(Option<String>),
}

/// The account these credentials act in, asked of STS once, when first needed.
pub(super) struct Caller<'a> {
    cloud: &'a Cloud,
    /// `Some(None)`: asked, and STS did not say.
    account: Option<Option<String>>,
}

impl<'a> Caller<'a> {
    pub(super) fn new(cloud: &'a Cloud) -> Caller<'a> {
        Caller {
            cloud,
            account: None,
        }
    }

    async fn account(&mut self) -> Option<String> {
        if self.account.is_none() {
            self.account = Some(self.cloud.account_id().await.ok());
        }
        self.account.clone().flatten()
    }

    /// Why these credentials cannot judge what `launch` made (see `other_account`).
    pub(super) async fn elsewhere(&mut self, launch: &Launch) -> Option<String> {
        // A launch that named no account needs no STS call.
        launch.account.as_ref()?;
        let ours = self.account().await;
        other_account(launch, ours.as_deref())
    }
}

/// Why credentials of account `ours` cannot judge what `launch` made: it was made with
/// another account's; `None` when they can (or when either account is unknown).
fn other_account(launch: &Launch, ours: Option<&str>) -> Option<String> {
    let (theirs, ours) = (launch.account.as_deref()?, ours?);
    (theirs != ours).then(|| {
        format!(
            "made with the credentials of AWS account {theirs}, and these are account {ours}'s: \
             run `ssh-ec2 --gc` with account {theirs}'s (its AWS_PROFILE)"
        )
    })
}

/// Where the instance launched as `launch` recorded can be seen: `elsewhere` says why not with
/// these credentials.
fn look(launch: Option<&Launch>, elsewhere: Option<String>) -> Look {
    match (launch, elsewhere) {
        (None, _) => Look::Everywhere,
        (Some(_), Some(why)) => Look::Not(why),
        (Some(launch), None) => Look::In(launch.region.clone()),
    }
}

/// Whether the keys may go, from what was seen.
fn verdict(launch: Option<&Launch>, account: Option<&str>, seen: Seen) -> Verdict {
    let keep = |why: String| Verdict::Keep(Some(why));
    let launch = match seen {
        Seen::State(State::Terminated) => return Verdict::Remove,
        Seen::State(_) => return Verdict::Keep(None),
        Seen::NotAsked(why) => return keep(why),
        Seen::Failed(why) => return keep(format!("it could not be looked up ({why})")),
        Seen::NotListed => match launch {
            Some(launch) => launch,
            None => {
                return keep(
                    "launched by an earlier ssh-ec2, which did not record its account and \
                     region, and no region lists it with these credentials: if you know it is \
                     terminated, delete its directory"
                        .to_string(),
                );
            }
        },
    };
    let region = &launch.region;
    match (launch.account.as_deref(), account, launch.sent_ago()) {
        (None, _, _) => keep(format!(
            "{region} does not list it, but its launch did not record its account, so these \
             credentials may not be the ones that see it"
        )),
        (_, None, _) => keep(format!(
            "{region} does not list it, but STS did not say which account these credentials \
             belong to"
        )),
        (_, _, Some(ago)) if ago >= VISIBILITY_LAG => Verdict::Remove,
        _ => keep(format!(
            "launched less than {} s ago, and AWS may not list an instance that new yet: run \
             `ssh-ec2 --gc` again later",
            VISIBILITY_LAG.as_secs()
        )),
    }
}

/// The instance directories whose keys may go, and why; what was kept, and why.
pub(super) async fn stale_keys(
    caller: &mut Caller<'_>,
    store: &Store,
    owned: &[Owned],
    instances_dir: &std::path::Path,
) -> (Vec<(PathBuf, String)>, Vec<String>) {
    let mut looker = Looker {
        cloud: caller.cloud,
        regions: HashMap::new(),
        all_regions: None,
    };
    let (mut stale, mut kept) = (Vec::new(), Vec::new());
    for id in store.instance_ids() {
        let launch = journal::launched(store, &id);
        // Listed by these credentials here: seen.
        let listed = owned.iter().find(|o| o.instance.id == id);
        let seen = match (listed, &launch) {
            (Some(seen), _) => Seen::State(seen.instance.state),
            (None, Some(made)) => match look(Some(made), caller.elsewhere(made).await) {
                Look::In(region) => looker.seen_in(&region, &id).await,
                Look::Everywhere => looker.seen_anywhere(&id).await,
                Look::Not(why) => Seen::NotAsked(why),
            },
            (None, None) => looker.seen_anywhere(&id).await,
        };
        let ours = match seen {
            Seen::NotListed => caller.account().await,
            _ => None,
        };
        let path = instances_dir.join(&id);
        match verdict(launch.as_ref(), ours.as_deref(), seen) {
            Verdict::Remove => {
                stale.push((path, format!("keys of {id}, which no longer exists")));
            }
            Verdict::Keep(Some(why)) => {
                kept.push(format!("keys of {id} ({}): {why}", path.display()));
            }
            Verdict::Keep(None) => {}
        }
    }
    (stale, kept)
}

/// Looks instances up region by region, each region's connection made once.
struct Looker<'a> {
    cloud: &'a Cloud,
    regions: HashMap<String, InRegion<'a>>,
    /// The account's enabled regions, once asked.
    all_regions: Option<Vec<String>>,
}

impl Looker<'_> {
    async fn seen_in(&mut self, region: &str, id: &str) -> Seen {
        let cloud = self.cloud;
        let there =
            (self.regions.entry(region.to_string())).or_insert_with(|| cloud.in_region(region));
        match there.lookup(id).await {
            Ok(Some(instance)) => Seen::State(instance.state),
            Ok(None) => Seen::NotListed,
            Err(e) => Seen::Failed(format!("in {region}: {e}")),
        }
    }

    /// Here first, then in every enabled region: the first that lists it, or fails.
    async fn seen_anywhere(&mut self, id: &str) -> Seen {
        if self.all_regions.is_none() {
            let mut regions = match self.cloud.enabled_regions().await {
                Ok(regions) => regions,
                Err(e) => return Seen::Failed(e.to_string()),
            };
            regions.retain(|r| *r != self.cloud.region);
            regions.insert(0, self.cloud.region.clone());
            self.all_regions = Some(regions);
        }
        for region in self.all_regions.clone().unwrap_or_default() {
            match self.seen_in(&region, id).await {
                Seen::NotListed => continue,
                seen => return seen,
            }
        }
        Seen::NotListed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(account: Option<&str>, sent_ago: u64) -> Launch {
        let mut launch = Launch::new("eu-west-1", "/w/p", account.map(str::to_string));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        launch.sent = Some(now - sent_ago);
        launch
    }

    const LONG_AGO: u64 = 3600;

    #[test]
    fn keys_are_looked_for_where_their_instance_was_launched() {
        let theirs = launch(Some("111111111111"), LONG_AGO);
        assert_eq!(other_account(&theirs, Some("111111111111")), None);
        assert_eq!(other_account(&theirs, None), None, "unknown: looked for");
        let why = other_account(&theirs, Some("222222222222"));
        let why = why.expect("another account's credentials see nothing of it");
        assert!(
            why.contains("account 111111111111") && why.contains("AWS_PROFILE"),
            "{why}"
        );
        assert_eq!(other_account(&launch(None, LONG_AGO), Some("2")), None);
        assert_eq!(look(Some(&theirs), None), Look::In("eu-west-1".into()));
        assert_eq!(look(Some(&theirs), Some(why.clone())), Look::Not(why));
        assert_eq!(look(None, None), Look::Everywhere);
    }

    #[test]
    fn keys_go_only_once_their_instance_is_seen_gone_where_it_was_launched() {
        let ours = Some("111111111111");
        let old = launch(ours, LONG_AGO);
        let judge = |launch: Option<&Launch>, account, seen| verdict(launch, account, seen);
        assert_eq!(
            judge(Some(&old), ours, Seen::State(State::Terminated)),
            Verdict::Remove
        );
        assert_eq!(
            judge(None, None, Seen::State(State::Terminated)),
            Verdict::Remove
        );
        assert_eq!(
            judge(Some(&old), ours, Seen::State(State::Stopped)),
            Verdict::Keep(None)
        );
        assert_eq!(judge(Some(&old), ours, Seen::NotListed), Verdict::Remove);
        let kept = |verdict: Verdict, says: &str| match verdict {
            Verdict::Keep(Some(why)) => assert!(why.contains(says), "{why}"),
            other => panic!("kept, saying `{says}`: {other:?}"),
        };
        // Within the lag, AWS's silence proves nothing.
        let new = launch(ours, 30);
        kept(judge(Some(&new), ours, Seen::NotListed), "may not list");
        // Nor with credentials whose account is unknown, or for a launch that named none.
        kept(judge(Some(&old), None, Seen::NotListed), "STS did not say");
        let unrecorded = launch(None, LONG_AGO);
        kept(
            judge(Some(&unrecorded), ours, Seen::NotListed),
            "did not record",
        );
        kept(judge(None, ours, Seen::NotListed), "earlier ssh-ec2");
        kept(
            judge(Some(&old), ours, Seen::NotAsked("other".into())),
            "other",
        );
        kept(
            judge(Some(&old), ours, Seen::Failed("throttled".into())),
            "throttled",
        );
    }
}
