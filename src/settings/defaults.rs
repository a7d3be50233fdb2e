//! Every default value, spelled once: the settings table applies them, and `--help`,
//! `--show-config` and the messages show them from here.

use super::values::{EndOfLife, Limit, Timeout};

/// The region when neither the settings nor the AWS profile name one.
pub const REGION: &str = "eu-central-1";
pub const INSTANCE_TYPE: &str = "g4dn.xlarge";
pub const IMAGE_NAME: &str = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04)*";
pub const CHECKIP_URL: &str = "https://checkip.amazonaws.com";
pub const END_OF_LIFE: EndOfLife = EndOfLife::Terminate;
pub const BOOT_TIMEOUT: Timeout = Timeout::secs(600);
/// Long enough for a laptop to wake up or change networks.
pub const RECONNECT_TIMEOUT: Timeout = Timeout::secs(300);
/// A day: a forgotten instance costs at most that; a longer job asks for more.
pub const MAX_LIFETIME: Limit = Limit::hours(24);
pub const IDLE_STOP: Limit = Limit::hours(1);
/// As long as a pause between runs while one works (OpenSSH users often set ControlPersist so).
pub const KEEP_CONNECTION: Limit = Limit::minutes(10);
