//! The spot interruption watch on the instance: every 5 seconds it asks the instance metadata
//! service (IMDSv2, with a token) whether AWS has given notice that it takes this spot instance
//! back (about two minutes ahead). On notice, it marks each running job's record and each
//! foreground run's record `interrupted` (see `job` and `runs`), so ssh-ec2, running the
//! command, attached or at `--finish`, ends what runs, pulls what exists and says so. Installed
//! with the dead-man switch; on an on-demand instance the notice never comes.

/// The files cloud-init writes at first boot (path, mode, content).
pub fn boot_files() -> Vec<(&'static str, &'static str, String)> {
    vec![
        (SCRIPT_PATH, "0755", SCRIPT.to_string()),
        (
            "/etc/systemd/system/ssh-ec2-spot-watch.service",
            "0644",
            UNIT.to_string(),
        ),
        (
            "/etc/systemd/system/ssh-ec2-spot-watch.timer",
            "0644",
            TIMER.to_string(),
        ),
    ]
}

/// The unit that `boot_files` installs, for the first boot's start command.
pub const TIMER_UNIT: &str = "ssh-ec2-spot-watch.timer";

const SCRIPT_PATH: &str = "/usr/local/sbin/ssh-ec2-spot-watch";

const TIMER: &str = "[Unit]
Description=ssh-ec2 spot interruption watch, every 5 seconds

[Timer]
OnBootSec=30s
OnUnitActiveSec=5s
AccuracySec=1s

[Install]
WantedBy=timers.target
";

const UNIT: &str = "[Unit]
Description=ssh-ec2 spot interruption watch: mark running jobs interrupted on AWS's notice

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/ssh-ec2-spot-watch
";

/// One poll. The metadata service's address and the homes can be moved through the environment
/// (for a test of the script); the notice (AWS's JSON) goes into the mark.
const SCRIPT: &str = r#"#!/bin/sh
# ssh-ec2's spot interruption watch (ssh-ec2-spot-watch.timer): on AWS's notice that it takes
# this spot instance back, marks each running ssh-ec2 job and foreground run `interrupted`.
set -u
imds=${SSH_EC2_IMDS_URL:-http://169.254.169.254}
homes=${SSH_EC2_WATCHDOG_HOMES:-/root /home/*}
token=$(curl -sf -m 2 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' \
    "$imds/latest/api/token") || exit 0
notice=$(curl -sf -m 2 -H "X-aws-ec2-metadata-token: $token" \
    "$imds/latest/meta-data/spot/instance-action") || exit 0
for home in $homes; do
    for record in "$home"/.ssh-ec2/jobs/* "$home"/.ssh-ec2/runs/*/*; do
        [ -d "$record" ] && [ ! -f "$record/exit" ] && [ ! -f "$record/interrupted" ] || continue
        printf '%s\n' "$notice" > "$record/interrupted.new" && mv "$record/interrupted.new" "$record/interrupted"
    done
done
exit 0
"#;
