//! A warm run through the connection kept from the last one (see `ssh::held`): while it
//! answers, the instance is there, running, and lets this machine in, so AWS is not asked
//! where it is, nor its security group opened to this machine again. What the last run knew of
//! it (the holder's card) stands in for the lookup; its expiry tag is still kept current.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use ipnet::IpNet;

use super::end_of_life::Origin;
use super::{Ingress, Machine, MachineSpec, Node, journal, login_user};
use crate::cloud::{Cloud, Instance, State};
use crate::printer::Printer;
use crate::ssh::held;
use crate::state::Store;

/// What a run that leaves its instance knows of it, for the next run here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Known {
    dir: String,
    region: String,
    instance: Instance,
}

/// What `instance`, left running by a run of `spec` in `cloud`'s region, is known to be.
pub fn known(spec: &MachineSpec, cloud: &Cloud, instance: &Instance) -> serde_json::Value {
    let known = Known {
        dir: spec.ownership.dir.clone(),
        region: cloud.region.clone(),
        // The run kept the tag current (see `prepare`).
        instance: Instance {
            expires_at: spec.watchdog.expiry_tag(),
            ..instance.clone()
        },
    };
    serde_json::to_value(known).unwrap_or_default()
}

/// This directory's instance, when a connection kept to it answers; `None`: look it up.
pub async fn through_kept(
    cloud: &Cloud,
    spec: &MachineSpec,
    store: &Store,
    printer: &Printer,
) -> Result<Option<Machine>> {
    let dir = &spec.ownership.dir;
    // A launch an earlier run left unfinished here is settled by the lookup.
    if spec.launch.nodes != 1 || journal::unfinished(store).iter().any(|l| &l.dir == dir) {
        return Ok(None);
    }
    for id in store.instance_ids() {
        let socket = store.held_socket(&id);
        let known = held::known(&socket).and_then(|v| serde_json::from_value::<Known>(v).ok());
        let Some(mut known) = known.filter(|k| is_here(k, spec, cloud, &id)) else {
            continue;
        };
        // An admin's group (none of its own) is never changed.
        let own_group = known.instance.security_group.is_some();
        if own_group && !ingress_unchanged(&spec.ingress, store.ingress(&id)) {
            return Ok(None);
        }
        let Ok(keys) = store.load(&id, &spec.login) else {
            continue;
        };
        if !held::answers(&socket, &keys).await {
            continue;
        }
        let phase = printer.phase(format!("reusing {id} (its kept connection answers)"));
        let tag = spec.watchdog.expiry_tag();
        if known.instance.expires_at != tag {
            cloud.set_expiry(&[id.as_str()], tag.as_deref()).await?;
            known.instance.expires_at = tag;
            let _ = held::note_known(&socket, serde_json::to_value(&known)?);
        }
        let instance = known.instance;
        phase.done(format!(
            "reusing {id}; {}",
            spec.watchdog.describe(instance.spot)
        ));
        return Ok(Some(Machine {
            volume_gib: store.volume(&id),
            user: login_user(spec, &instance),
            nodes: vec![Node { instance, keys }],
            origin: Origin::FoundRunning,
        }));
    }
    Ok(None)
}

/// Whether the security group's rule is already what this run asks (`last`: the CIDR this
/// machine last opened it to), so that the lookup, which would change it, can be skipped: the
/// CIDR asked; or, for this machine's own address, a single address, which a connection from
/// this machine that answers proves to be its current one.
fn ingress_unchanged(asked: &Ingress, last: Option<IpNet>) -> bool {
    match (asked, last) {
        (Ingress::Cidr(cidr), Some(last)) => *cidr == last,
        (Ingress::CallerIp { .. }, Some(last)) => last.prefix_len() == last.max_prefix_len(),
        (_, None) => false,
    }
}

/// Whether `known` is this directory's instance `id`, in this region, left running.
fn is_here(known: &Known, spec: &MachineSpec, cloud: &Cloud, id: &str) -> bool {
    known.dir == spec.ownership.dir
        && known.region == cloud.region
        && known.instance.id == id
        && known.instance.state == State::Running
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lookup_is_skipped_only_when_the_rule_would_stay_as_it_is() {
        let cidr = |text: &str| text.parse::<IpNet>().unwrap();
        let caller = Ingress::CallerIp {
            checkip_url: "https://checkip.example".into(),
        };
        assert!(ingress_unchanged(&caller, Some(cidr("198.51.100.7/32"))));
        assert!(ingress_unchanged(&caller, Some(cidr("2001:db8::7/128"))));
        assert!(
            !ingress_unchanged(&caller, Some(cidr("198.51.100.0/24"))),
            "a wider rule narrows to this machine's address"
        );
        let asked = Ingress::Cidr(cidr("10.0.0.0/16"));
        assert!(ingress_unchanged(&asked, Some(cidr("10.0.0.0/16"))));
        assert!(!ingress_unchanged(&asked, Some(cidr("198.51.100.7/32"))));
        assert!(!ingress_unchanged(&caller, None), "never opened from here");
    }
}
