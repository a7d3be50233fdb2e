//! Where a node's sshd is dialled: a tunnel (`--connect`), else the instance's address that
//! `--address` chooses, port 22; refused, naming the setting, when the instance lacks it.

use anyhow::{Context, Result};

use super::Dial;
use crate::cloud::Instance;
use crate::settings::values::{Address, HostPort};

/// The instance's sshd.
pub const SSHD_PORT: u16 = 22;

/// Where the instance's sshd is reached: `connect` (a tunnel), else the address chosen, port 22.
pub fn ssh_address(dial: &Dial, instance: &Instance) -> Result<HostPort> {
    if let Some(address) = &dial.connect {
        return Ok(address.clone());
    }
    let (public, private) = (
        instance.public_ip.as_deref(),
        instance.private_ip.as_deref(),
    );
    let chosen = match dial.address {
        Address::Public => public,
        Address::Private => private,
        Address::Auto => public.or(private),
    };
    let host = chosen.with_context(|| missing_address(dial.address, &instance.id, private))?;
    Ok(HostPort {
        host: host.to_string(),
        port: SSHD_PORT,
    })
}

/// Why there is no address to dial, naming the setting and what to set instead.
fn missing_address(address: Address, id: &str, private: Option<&str>) -> String {
    let tunnel = "or --connect HOST:PORT through a tunnel (e.g. an SSM port forward)";
    match (address, private) {
        (Address::Public, Some(private)) => format!(
            "{id} has no public address (--address public, SSH_EC2_ADDRESS): from inside its \
             VPC, over a VPN or Direct Connect, --address private dials {private}; {tunnel}"
        ),
        (Address::Private, _) => format!(
            "{id} has no private address (--address private, SSH_EC2_ADDRESS): use --address \
             public or auto, {tunnel}"
        ),
        _ => format!("{id} has no IP address: pass --connect HOST:PORT ({tunnel})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::State;

    fn instance(public: Option<&str>, private: Option<&str>) -> Instance {
        Instance {
            public_ip: public.map(str::to_string),
            private_ip: private.map(str::to_string),
            ..Instance::example("i-1", State::Running)
        }
    }

    fn dial(address: Address, connect: Option<&str>) -> Dial {
        Dial {
            address,
            connect: connect.map(|c| c.parse().unwrap()),
        }
    }

    #[test]
    fn the_address_setting_chooses_which_one_is_dialled() {
        let both = instance(Some("54.1.2.3"), Some("172.31.0.5"));
        let host = |d: Dial, i: &Instance| ssh_address(&d, i).map(|a| a.to_string());
        assert_eq!(
            host(dial(Address::Auto, None), &both).unwrap(),
            "54.1.2.3:22"
        );
        assert_eq!(
            host(dial(Address::Private, None), &both).unwrap(),
            "172.31.0.5:22"
        );
        assert_eq!(
            host(dial(Address::Public, None), &both).unwrap(),
            "54.1.2.3:22"
        );
        let private_only = instance(None, Some("172.31.0.5"));
        assert_eq!(
            host(dial(Address::Auto, None), &private_only).unwrap(),
            "172.31.0.5:22"
        );
        let err = host(dial(Address::Public, None), &private_only).unwrap_err();
        assert!(err.to_string().contains("--address public"), "{err}");
        assert!(
            err.to_string()
                .contains("--address private dials 172.31.0.5"),
            "{err}"
        );
        let tunnel = dial(Address::Public, Some("127.0.0.1:2222"));
        assert_eq!(host(tunnel, &private_only).unwrap(), "127.0.0.1:2222");
    }
}
