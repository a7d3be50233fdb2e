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

/// The widest ranges opened without a warning: one site's IPv4 /24, one IPv6 /64 network.
const QUIET_PREFIX_V4: u8 = 24;
const QUIET_PREFIX_V6: u8 = 64;

/// What a CIDR wider than one site's (an IPv4 /24, an IPv6 /64) opens the instance's SSH port
/// to, said each time it is written into a security group; `None` for a narrower one.
pub fn wide_ingress_warning(cidr: &IpNet) -> Option<String> {
    let (bits, quiet) = match cidr {
        IpNet::V4(_) => (32, QUIET_PREFIX_V4),
        IpNet::V6(_) => (128, QUIET_PREFIX_V6),
    };
    let prefix = cidr.prefix_len();
    if prefix >= quiet {
        return None;
    }
    let whom = match (cidr, prefix) {
        (IpNet::V4(_), 0) => "every IPv4 address on the internet".to_string(),
        (IpNet::V6(_), 0) => "every IPv6 address on the internet".to_string(),
        (IpNet::V4(_), _) => format!("{} IPv4 addresses", 1u64 << (bits - prefix)),
        (IpNet::V6(_), _) => format!("2^{} IPv6 addresses", bits - prefix),
    };
    Some(format!(
        "--ssh-cidr {cidr} (SSH_EC2_SSH_CIDR, ssh_cidr) opens the instance's SSH port (tcp/22) to \
         {whom}, wider than a /{quiet}: anyone there can try to log in, and only the login key \
         keeps them out; without --ssh-cidr only this machine's public IP (a /{bits}) is let in"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_wider_than_one_site_is_said() {
        let warning = |cidr: &str| wide_ingress_warning(&cidr.parse().unwrap());
        let all = warning("0.0.0.0/0").unwrap();
        assert!(
            all.contains("every IPv4 address on the internet") && all.contains("tcp/22"),
            "{all}"
        );
        assert!(
            warning("10.0.0.0/16")
                .unwrap()
                .contains("65536 IPv4 addresses")
        );
        assert!(
            warning("192.0.2.0/23")
                .unwrap()
                .contains("512 IPv4 addresses")
        );
        assert!(warning("::/0").unwrap().contains("every IPv6 address"));
        assert!(
            warning("2001:db8::/48")
                .unwrap()
                .contains("2^80 IPv6 addresses")
        );
        for quiet in [
            "192.0.2.0/24",
            "192.0.2.7/32",
            "2001:db8::/64",
            "2001:db8::1/128",
        ] {
            assert_eq!(warning(quiet), None, "{quiet}");
        }
    }
}
