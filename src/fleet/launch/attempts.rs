//! The RunInstances attempts of one launch: each place for the first type, then the next
//! type; spot first when asked, then on-demand; a lost answer looked up by the launch's tag.

use anyhow::Result;
use ipnet::IpNet;

use super::resolve::Place;
use super::resolve::Resolved;
use super::{Group, Outcome};
use crate::cloud::userdata::UserData;
use crate::cloud::{
    AwsError, CAPACITY_CODES, Cloud, Image, LaunchRequest, SPOT_CAPACITY_CODES, TypeInfo,
};
use crate::fleet::journal::Launch;
use crate::fleet::spec::{MachineSpec, SpotSpec};
use crate::interrupt::Interrupt;
use crate::printer::Printer;
use crate::state::Store;
use crate::state::keys::NewKeys;
use crate::state::known::REFUSAL_AGE;

/// What a launch sends its attempts with.
pub(super) struct Launcher<'a> {
    pub(super) cloud: &'a Cloud,
    pub(super) spec: &'a MachineSpec,
    pub(super) store: &'a Store,
    pub(super) printer: &'a Printer,
    pub(super) interrupt: &'a Interrupt,
}

impl Launcher<'_> {
    /// The launch's security groups (its own, made and recorded now, or the admin's; and a
    /// cluster's), then the RunInstances attempts with the keys in the user-data.
    pub(super) async fn send(
        &self,
        launch: &mut Launch,
        group: Group,
        keys: &NewKeys,
        resolved: &Resolved,
    ) -> Outcome {
        let tags = &self.spec.launch.tags;
        let ssh_name = launch.group_name();
        let ssh_group = async {
            match group {
                Group::Admin(id) => Ok((id, None)),
                Group::Own(caller) => (self.cloud)
                    .create_ssh_group(&ssh_name, &resolved.vpc, caller.cidr(), tags)
                    .await
                    .map(|(group, cidr)| (group, Some(cidr))),
            }
        };
        // At once: each group is a round trip or two to AWS.
        let (ssh_group, (node_group, placement_group)) =
            tokio::join!(ssh_group, self.cluster_groups(launch, resolved));
        // Recorded at once, whatever else failed: the journal deletes the launch's own groups,
        // and only them.
        if let Ok((group, Some(_))) = &ssh_group {
            launch.group = Some(group.clone());
        }
        launch.node_group = node_group.as_ref().ok().cloned().flatten();
        launch.placement_group = placement_group.as_ref().ok().cloned().flatten();
        let saved = launch.save(self.store);
        let (group, cidr) = match (ssh_group, node_group, placement_group, saved) {
            (Ok(group), Ok(_), Ok(_), Ok(())) => group,
            (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) | (.., Err(e)) => {
                return Outcome::Failed(e);
            }
        };
        let user_data = UserData {
            host_private_openssh: &keys.host_private_openssh,
            host_public_openssh: &keys.host_public_openssh,
            authorized_key: keys.authorized_key.as_deref(),
            extra_commands: self.spec.launch.extra_boot_commands.as_deref(),
            watchdog: &self.spec.watchdog,
        }
        .render();
        let attempts = Attempts {
            by: self,
            group: &group,
            node_group: launch.node_group.clone(),
            placement_group: launch.placement_group.clone(),
            user_data: &user_data,
        };
        self.launch_and_open(&attempts, launch, resolved, (&group, cidr))
            .await
    }

    /// The RunInstances attempts, with its own group's rule letting `cidr` in added beside them
    /// (the instance boots for far longer than a round trip). An instance the rule cannot be
    /// added for is ended, and for a day the rule goes first in this region: a refusal costs
    /// one instance, not one a run.
    async fn launch_and_open(
        &self,
        attempts: &Attempts<'_>,
        launch: &mut Launch,
        resolved: &Resolved,
        (group, cidr): (&str, Option<IpNet>),
    ) -> Outcome {
        let known = self.store.known();
        let refused = format!("ssh-rule-refused/{}", self.cloud.region);
        let opened = async {
            match cidr {
                Some(cidr) => (self.cloud.allow_ssh_from(group, cidr).await).map(|()| Some(cidr)),
                None => Ok(None),
            }
        };
        if known.get::<bool>(&refused, REFUSAL_AGE).is_some() {
            match opened.await {
                Ok(cidr) => launch.ingress = cidr,
                Err(e) => return Outcome::Failed(e),
            }
            return attempts
                .run(launch, &resolved.types, &resolved.places)
                .await;
        }
        let launched = attempts.run(launch, &resolved.types, &resolved.places);
        match tokio::join!(launched, opened) {
            (outcome, Ok(cidr)) => {
                launch.ingress = cidr;
                outcome
            }
            (Outcome::Launched { instances, .. }, Err(e)) => {
                known.put(&refused, &true);
                Outcome::Unreachable(instances, e)
            }
            // Nothing launched (or not known yet): its error says what happened first.
            (outcome, Err(_)) => outcome,
        }
    }
}

impl Launcher<'_> {
    /// A cluster's own security group, and its placement group when one of its types takes
    /// it, made at once; None for one machine.
    async fn cluster_groups(
        &self,
        launch: &Launch,
        resolved: &Resolved,
    ) -> (Result<Option<String>>, Result<Option<String>>) {
        if launch.nodes < 2 {
            return (Ok(None), Ok(None));
        }
        let tags = &self.spec.launch.tags;
        let (group_name, placement_name) =
            (launch.node_group_name(), launch.placement_group_name());
        let group = (self.cloud).create_node_group(&group_name, &resolved.vpc, tags);
        let placement = async {
            if !(resolved.types.iter()).any(|(kind, _)| kind.cluster_placement) {
                return Ok(None);
            }
            (self.cloud)
                .create_placement_group(&placement_name, tags)
                .await
                .map(|()| Some(placement_name.clone()))
        };
        let (group, placement) = tokio::join!(group, placement);
        (group.map(Some), placement)
    }
}

/// The RunInstances attempts of one launch, once its keys and groups exist.
struct Attempts<'a> {
    by: &'a Launcher<'a>,
    group: &'a str,
    /// A cluster's own security group and placement group.
    node_group: Option<String>,
    placement_group: Option<String>,
    user_data: &'a str,
}

impl Attempts<'_> {
    /// Each place for the first type, then each place for the next type, until one launches;
    /// with --spot, all of that as spot first, then on-demand (unless --spot-only).
    async fn run(
        &self,
        launch: &mut Launch,
        types: &[(TypeInfo, Image)],
        places: &[Place],
    ) -> Outcome {
        let given: Vec<&str> = places
            .iter()
            .filter_map(|p| match p {
                Place::Given(id) => Some(id.as_str()),
                _ => None,
            })
            .collect();
        let tried = match given.is_empty() {
            true => self.by.cloud.region.clone(),
            false => given.join(", "),
        };
        let names = types
            .iter()
            .map(|t| t.0.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let markets: &[Option<&SpotSpec>] = match &self.by.spec.launch.spot {
            Some(spot) if spot.only => &[Some(spot)],
            Some(spot) => &[Some(spot), None],
            None => &[None],
        };
        let mut no_capacity = None;
        for (m, market) in markets.iter().enumerate() {
            let kind = market.map_or("", |_| "spot ");
            if m > 0 {
                self.by.printer.info(&format!(
                    "no spot capacity for {names} in {tried}: launching on-demand instead \
                     (--spot-only forbids that)"
                ));
            }
            for (t, (type_info, image)) in types.iter().enumerate() {
                let instance_type = type_info.name.as_str();
                if t > 0 {
                    self.by.printer.info(&format!(
                        "no {kind}capacity for {} in {tried}: trying {instance_type} \
                         (--fallback-types)",
                        types[t - 1].0.name
                    ));
                }
                for (p, place) in places.iter().enumerate() {
                    if p > 0 {
                        self.by.printer.info(&format!(
                            "no {kind}capacity for {instance_type} in {}: trying {place}",
                            places[p - 1]
                        ));
                    }
                    let n = (m * types.len() + t) * places.len() + p;
                    let attempt = self.attempt(launch, n, type_info, image, place, *market);
                    match attempt.await {
                        Err(e) if is_capacity(&e, market.is_some()) => no_capacity = Some(e),
                        Err(e) => return Outcome::Failed(e),
                        Ok(outcome) => return outcome,
                    }
                }
            }
        }
        let e = no_capacity.expect("there is at least one type and one place");
        let spot_only = match markets {
            [Some(_)] => "drop --spot-only to take an on-demand instance, ",
            _ => "",
        };
        Outcome::Failed(e.context(format!(
            "no capacity for {names} in {tried} right now: try again later, {spot_only}or name \
             other types to try with --fallback-types T1,T2",
        )))
    }

    /// One RunInstances. An error is an answer: nothing was launched.
    async fn attempt(
        &self,
        launch: &mut Launch,
        n: usize,
        kind: &TypeInfo,
        image: &Image,
        place: &Place,
        spot: Option<&SpotSpec>,
    ) -> Result<Outcome> {
        let instance_type = kind.name.as_str();
        self.by.interrupt.check()?;
        launch.sending(self.by.store)?;
        let wanted = &self.by.spec.launch;
        let user = crate::fleet::launch_user(self.by.spec, image);
        let launched = self
            .by
            .cloud
            .launch(&LaunchRequest {
                image,
                instance_type,
                user_data: self.user_data,
                security_group: Some(self.group),
                own_group: wanted.security_group.is_none(),
                login_user: &user,
                subnet_id: place.subnet_id(),
                key_name: self.by.spec.login.key_pair_name(),
                instance_profile: wanted.instance_profile.as_deref(),
                volume_size: wanted.volume_size,
                tags: &wanted.tags,
                client_token: &launch.client_token(n),
                launch_id: &launch.id,
                expires_at: self.by.spec.watchdog.expiry_tag().as_deref(),
                spot: spot.map(|spot| spot.max_price.as_deref()),
                count: wanted.nodes,
                node_group: self.node_group.as_deref(),
                placement_group: self
                    .placement_group
                    .as_deref()
                    .filter(|_| kind.cluster_placement),
                efa: wanted.efa,
            })
            .await;
        let e = match launched {
            Ok(instances) => return Ok(Outcome::Launched { instances, user }),
            Err(e) => e,
        };
        let code = match e.downcast_ref::<AwsError>() {
            // Throttled, failed inside AWS, or no answer: it may have launched all the same.
            Some(aws) if aws.inconclusive => aws.code.clone().unwrap_or("no answer".into()),
            Some(aws) if is_quota(aws) => return Err(quota_hint(e, instance_type)),
            _ => return Err(e),
        };
        let found = match launch.find_instances(self.by.cloud).await {
            Ok(found) => found,
            Err(lookup) => return Ok(Outcome::Unknown(e.context(format!("{lookup:#}")))),
        };
        let whole = found.len() == wanted.nodes as usize;
        Ok(match found.first() {
            None => Outcome::Failed(e),
            Some(head) if whole && found.iter().all(|i| i.state.is_live()) => {
                let ids: Vec<&str> = found.iter().map(|i| i.id.as_str()).collect();
                self.by.printer.info(&format!(
                    "the launch's answer was lost ({code}), but {} exist{}: using {}",
                    ids.join(", "),
                    if ids.len() == 1 { "s" } else { "" },
                    if ids.len() == 1 { "it" } else { "them" },
                ));
                let user = head.login_user.clone().unwrap_or(user);
                Outcome::Launched {
                    instances: found,
                    user,
                }
            }
            // Some of it ended already: the journal ends the rest, the next run here settles it.
            Some(head) => Outcome::Unknown(e.context(format!(
                "{} was launched, but is {} already",
                head.id,
                head.state.as_str()
            ))),
        })
    }
}

/// No capacity for this attempt (for a spot one: no spot capacity, or not at this price).
fn is_capacity(e: &anyhow::Error, spot: bool) -> bool {
    e.downcast_ref::<AwsError>()
        .and_then(|aws| aws.code.as_deref())
        .is_some_and(|code| {
            CAPACITY_CODES.contains(&code) || (spot && SPOT_CAPACITY_CODES.contains(&code))
        })
}

fn is_quota(aws: &AwsError) -> bool {
    matches!(
        aws.code.as_deref(),
        Some("VcpuLimitExceeded" | "InstanceLimitExceeded")
    )
}

/// Names the quota to raise: there is one per instance family.
fn quota_hint(e: anyhow::Error, instance_type: &str) -> anyhow::Error {
    e.context(format!(
        "your account may run no more {instance_type} instances here: raise the quota \
         \"Running On-Demand {} instances\" (Service Quotas console, Amazon EC2, in this \
         region), or end instances you no longer use",
        quota_family(instance_type)
    ))
}

/// The family in the name of a type's On-Demand vCPU quota.
fn quota_family(instance_type: &str) -> &'static str {
    let letters: String = instance_type
        .chars()
        .take_while(char::is_ascii_lowercase)
        .collect();
    match letters.as_str() {
        "g" | "vt" => "G and VT",
        "p" => "P",
        "f" => "F",
        "inf" => "Inf",
        "trn" => "Trn",
        "dl" => "DL",
        "x" => "X",
        "hpc" => "HPC",
        "u" => "High Memory",
        _ => "Standard (A, C, D, H, I, M, R, T, Z)",
    }
}

#[cfg(test)]
mod tests {
    use super::quota_family;

    #[test]
    fn quotas_are_named_by_family() {
        assert_eq!(quota_family("g4dn.xlarge"), "G and VT");
        assert_eq!(quota_family("p5.48xlarge"), "P");
        assert_eq!(quota_family("inf2.xlarge"), "Inf");
        assert_eq!(
            quota_family("t3.micro"),
            "Standard (A, C, D, H, I, M, R, T, Z)"
        );
    }
}
