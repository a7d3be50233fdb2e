//! What the fleet is asked for: which instance this directory's is, how to launch one, who may
//! reach it, how it ends itself and how the run wants it to end. `plan` makes these from the
//! settings; the fleet only reads them.

use ipnet::IpNet;

use crate::cloud::Ownership;
use crate::remote::watchdog::Arming;
use crate::settings::values::EndOfLife;
use crate::state::keys::LoginKey;

/// This directory's instance, as the fleet finds, launches and ends it.
#[derive(Debug)]
pub struct MachineSpec {
    pub ownership: Ownership,
    pub login: LoginKey,
    pub launch: LaunchSpec,
    pub ingress: Ingress,
    /// The instance's dead-man switch, as this run arms it.
    pub watchdog: Arming,
    /// What the run asks for at its end (the fleet applies it when a start is cut short).
    pub end_of_life: EndOfLife,
}

#[derive(Debug)]
pub struct LaunchSpec {
    pub instance_type: String,
    /// Tried in order when no zone has capacity for `instance_type`.
    pub fallback_types: Vec<String>,
    pub image: ImageChoice,
    /// `None`: guessed from the image name.
    pub user: Option<String>,
    pub instance_profile: Option<String>,
    /// The subnets to try in turn (`subnet_id`, then `subnet_ids`); none: the default VPC.
    pub subnets: Vec<String>,
    /// An admin-made security group (id or name): used as it is, never changed nor deleted.
    /// `None`: a group of its own for each instance.
    pub security_group: Option<String>,
    pub volume_size: Option<u32>,
    /// Ownership, Name and user tags for everything the run creates.
    pub tags: Vec<(String, String)>,
    pub extra_boot_commands: Option<String>,
    /// `None`: on-demand.
    pub spot: Option<SpotSpec>,
    /// How many instances, launched together in one zone: more than one is a cluster.
    pub nodes: u32,
    /// With an Elastic Fabric Adapter (types that have one).
    pub efa: bool,
}

/// A one-time spot instance: interrupted (terminated) when AWS needs the capacity back.
#[derive(Debug, Clone)]
pub struct SpotSpec {
    /// USD per hour; `None`: up to the on-demand price.
    pub max_price: Option<String>,
    /// No on-demand fallback.
    pub only: bool,
}

#[derive(Debug, Clone)]
pub enum ImageChoice {
    Id(String),
    NewestNamed(String),
}

/// Who may reach the instance's sshd.
#[derive(Debug, Clone)]
pub enum Ingress {
    Cidr(IpNet),
    /// This machine's public IP, as a checkip service sees it.
    CallerIp {
        checkip_url: String,
    },
}
