//! The value types of settings: each parses its flag, variable and config-file forms alike
//! (through `FromStr`), refuses a bad value with what to write instead, and prints itself the
//! way it is written, so that `--help`, `--show-config` and the messages spell it one way.

mod durations;
mod env;
mod lists;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;

pub use durations::{Limit, Timeout};
pub use env::{EnvEntries, EnvEntry, check_name};
pub use lists::{InstanceTypes, SubnetIds, Tag, Tags};

/// What happens to the instance once the command is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum EndOfLife {
    Terminate,
    Stop,
    Leave,
}

impl FromStr for EndOfLife {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            // "destroy" is the original bash tool's spelling.
            "terminate" | "destroy" => Ok(Self::Terminate),
            "stop" => Ok(Self::Stop),
            "leave" => Ok(Self::Leave),
            _ => Err(format!(
                "`{s}` is not an end-of-life policy: write terminate, stop or leave"
            )),
        }
    }
}

impl fmt::Display for EndOfLife {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Terminate => "terminate",
            Self::Stop => "stop",
            Self::Leave => "leave",
        })
    }
}

/// A `host:port` to dial instead of the instance's own address.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl FromStr for HostPort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let hint = || {
            format!(
                "`{}` is not HOST:PORT: write e.g. 127.0.0.1:2222 or [::1]:2222",
                s.escape_debug()
            )
        };
        let (host, port) = s.rsplit_once(':').ok_or_else(hint)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port: u16 = port.parse().map_err(|_| hint())?;
        if host.is_empty() || port == 0 {
            return Err(hint());
        }
        one_word(host, "a host")?;
        Ok(Self {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Refuses what would break out of one word in the OpenSSH config line `what` is written into
/// (`--ssh-config`): whitespace and control characters (a newline would start a directive of
/// its own), and the quotes, backslash and `#` that OpenSSH's config parser reads specially.
/// The value is shown escaped: it must not drive the terminal either.
pub fn one_word(text: &str, what: &str) -> Result<(), String> {
    let special = |c: char| c.is_whitespace() || c.is_control() || "\"'\\#".contains(c);
    match text.chars().find(|&c| special(c)) {
        Some(c) => Err(format!(
            "`{}` is not usable as {what}: it holds {}, and it is written as one word into \
             OpenSSH's config (whitespace, control characters, quotes, `\\` and `#` are \
             refused)",
            text.escape_debug(),
            match c {
                '\n' => "a newline".to_string(),
                c if c.is_whitespace() => "whitespace".to_string(),
                c => format!("`{}`", c.escape_debug()),
            }
        )),
        None => Ok(()),
    }
}

/// The user ssh-ec2 logs in as, which `--ssh-config` writes as OpenSSH's `User`: one word,
/// without `%` either (newer OpenSSH expands tokens there).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct LoginUser(String);

impl FromStr for LoginUser {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        one_word(s, "a login user")?;
        if s.is_empty() || s.contains('%') {
            return Err(format!(
                "`{}` is not usable as a login user (OpenSSH expands a `%` in it): write a \
                 user name such as ubuntu",
                s.escape_debug()
            ));
        }
        Ok(Self(s.to_string()))
    }
}

impl fmt::Display for LoginUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The original tool's session multiplexer setting (`""` is none, as its recipes set it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Multiplex {
    None,
    Tmux,
    Screen,
}

impl FromStr for Multiplex {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" | "none" => Ok(Self::None),
            "tmux" => Ok(Self::Tmux),
            "screen" => Ok(Self::Screen),
            _ => Err(format!(
                "`{s}` is not a multiplexer: write tmux, screen or none"
            )),
        }
    }
}

impl fmt::Display for Multiplex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Tmux => "tmux",
            Self::Screen => "screen",
        })
    }
}

/// Which of the instance's addresses ssh-ec2 dials (`--connect` aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Address {
    Public,
    /// From inside its VPC, over a VPN or Direct Connect.
    Private,
    /// The public one, else the private one.
    Auto,
}

impl FromStr for Address {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "public" => Ok(Self::Public),
            "private" => Ok(Self::Private),
            "auto" => Ok(Self::Auto),
            _ => Err(format!(
                "`{s}` is not an address to dial: write public, private or auto"
            )),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Public => "public",
            Self::Private => "private",
            Self::Auto => "auto",
        })
    }
}

/// Config-file values that are read like their environment-variable form, through `FromStr`.
macro_rules! deserialize_from_str {
    ($($ty:ty),*) => {$(
        impl TryFrom<String> for $ty {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                s.parse()
            }
        }
    )*};
}

deserialize_from_str!(Address, EndOfLife, HostPort, LoginUser, Multiplex, Limit);

/// A setting's value as `--show-config` and `--help` print it.
pub trait Shown {
    fn shown(&self) -> String;
}

macro_rules! shown_by_display {
    ($($ty:ty),*) => {$(
        impl Shown for $ty {
            fn shown(&self) -> String {
                self.to_string()
            }
        }
    )*};
}

shown_by_display!(
    Address,
    String,
    u32,
    EndOfLife,
    HostPort,
    ipnet::IpNet,
    LoginUser,
    Multiplex,
    Limit,
    Timeout,
    bool
);

impl Shown for InstanceTypes {
    fn shown(&self) -> String {
        self.0.join(",")
    }
}

impl Shown for SubnetIds {
    fn shown(&self) -> String {
        self.0.join(",")
    }
}

impl Shown for EnvEntries {
    fn shown(&self) -> String {
        self.names()
    }
}

impl Shown for PathBuf {
    fn shown(&self) -> String {
        self.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_values() {
        assert_eq!(
            "[::1]:22".parse::<HostPort>().unwrap(),
            HostPort {
                host: "::1".into(),
                port: 22
            }
        );
        assert!("localhost".parse::<HostPort>().is_err());
        for bad in [
            "evil host:22",
            "h\nProxyCommand x:22",
            "h\t:22",
            "\"h\":22",
            "#h:22",
        ] {
            let err = bad.parse::<HostPort>().unwrap_err();
            assert!(err.contains("not usable as a host"), "{bad:?}: {err}");
            assert!(!err.contains('\n'), "shown escaped: {err}");
        }
        assert_eq!(
            "[fe80::1%eth0]:22".parse::<HostPort>().unwrap().host,
            "fe80::1%eth0"
        );
        assert_eq!(
            "ec2-user".parse::<LoginUser>().unwrap().to_string(),
            "ec2-user"
        );
        for bad in [
            "",
            "a b",
            "ubuntu\nProxyCommand x",
            "a\u{1b}[31m",
            "a%u",
            "'a'",
            "a\\b",
        ] {
            assert!(bad.parse::<LoginUser>().is_err(), "{bad:?}");
        }
        assert!("h:0".parse::<HostPort>().is_err());
        assert!("aws:x=1".parse::<Tag>().is_err());
        assert_eq!(
            "team=data science".parse::<Tag>().unwrap().value,
            "data science"
        );
        for bad in ["a=b\nc", "a\t=b", "a=\u{1b}[2J"] {
            let err = bad.parse::<Tag>().unwrap_err();
            assert!(err.contains("control characters"), "{bad:?}: {err}");
        }
        assert_eq!("a=1, b=2".parse::<Tags>().unwrap().0.len(), 2);
        assert_eq!(
            "g5.xlarge, g6.xlarge".parse::<InstanceTypes>().unwrap().0,
            ["g5.xlarge", "g6.xlarge"]
        );
        assert!("g5.xlarge,".parse::<InstanceTypes>().is_err());
    }
}
