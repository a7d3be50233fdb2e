//! The instance's dead-man switch: it stops the instance by itself once its maximum lifetime is
//! over, or once nothing has used it for the idle time, so a laptop that is gone never leaves
//! it running (and billed). Installed at first boot through user-data (a script, a systemd timer
//! that runs it every minute, and a unit that starts the idle time at each boot); each run
//! re-arms it with its own settings, so a reused instance follows the current run's.
//!
//! The settings are small files: the launch's in `/etc/ssh-ec2/watchdog`, each directory's run
//! in `~/.ssh-ec2/watchdog/<job name>`; the one armed last wins. `shutdown -h` stops the
//! instance (it is launched with the "stop" shutdown behaviour), so unpulled results survive.

use std::time::{SystemTime, UNIX_EPOCH};

use super::job::Job;
use crate::settings::values::Limit;

/// The switch's settings as one run arms them: when, until when, and how long idle.
#[derive(Debug, Clone)]
pub struct Arming {
    /// Unix seconds.
    armed: u64,
    pub max_lifetime: Limit,
    pub idle_stop: Limit,
}

impl Arming {
    pub fn new(now: SystemTime, max_lifetime: Limit, idle_stop: Limit) -> Arming {
        Arming {
            armed: now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            max_lifetime,
            idle_stop,
        }
    }

    /// Unix seconds after which the instance stops itself, whatever it does.
    fn deadline(&self) -> Option<u64> {
        Some(self.armed + self.max_lifetime.duration()?.as_secs())
    }

    /// The deadline in ISO 8601, UTC: the `ssh-ec2:expires-at` tag.
    pub fn expires_at(&self) -> Option<String> {
        self.deadline().map(iso8601)
    }

    /// What the settings file says; the script reads nothing else.
    fn settings(&self) -> String {
        let or_off = |v: Option<u64>| v.map_or("off".to_string(), |v| v.to_string());
        format!(
            "armed={}\ndeadline={}\nidle={}\n",
            self.armed,
            or_off(self.deadline()),
            or_off(self.idle_stop.duration().map(|d| d.as_secs()))
        )
    }

    /// Re-arms the switch from a connection, in the login user's home, for this directory.
    pub fn arm_command(&self, job: &Job) -> String {
        format!(
            "d={} && mkdir -p \"$d\" && printf '%s' {} > \"$d/{name}.new\" \
             && mv \"$d/{name}.new\" \"$d/{name}\"",
            super::state_dir("watchdog"),
            super::shell_quote(&self.settings()),
            name = job.name()
        )
    }

    /// When the instance will end itself, for the launch line.
    pub fn describe(&self) -> String {
        match (self.expires_at(), self.idle_stop) {
            (Some(at), Limit::After(_)) => format!(
                "it stops itself at {at} (--max-lifetime {}), or after {} idle",
                self.max_lifetime, self.idle_stop
            ),
            (Some(at), Limit::Off) => {
                format!(
                    "it stops itself at {at} (--max-lifetime {})",
                    self.max_lifetime
                )
            }
            (None, Limit::After(_)) => format!("it stops itself after {} idle", self.idle_stop),
            (None, Limit::Off) => {
                "it never stops itself (--max-lifetime and --idle-stop are off)".to_string()
            }
        }
    }

    /// The files cloud-init writes at first boot (path, mode, content); then `UNITS` start.
    pub fn boot_files(&self) -> Vec<(&'static str, &'static str, String)> {
        vec![
            (SCRIPT_PATH, "0755", script()),
            ("/etc/ssh-ec2/watchdog", "0644", self.settings()),
            (
                "/etc/systemd/system/ssh-ec2-watchdog.service",
                "0644",
                CHECK_UNIT.to_string(),
            ),
            (
                "/etc/systemd/system/ssh-ec2-watchdog.timer",
                "0644",
                TIMER_UNIT.to_string(),
            ),
            (
                "/etc/systemd/system/ssh-ec2-watchdog-boot.service",
                "0644",
                BOOT_UNIT.to_string(),
            ),
        ]
    }
}

/// The units that `boot_files` installs, to enable and start at first boot.
pub const UNITS: &str = "ssh-ec2-watchdog-boot.service ssh-ec2-watchdog.timer";

const SCRIPT_PATH: &str = "/usr/local/sbin/ssh-ec2-watchdog";

/// Every minute; the first check comes 15 minutes after boot, so a run that started a stopped
/// instance whose deadline has passed has the time to re-arm it (the boot timeout's default
/// is 10 minutes).
const TIMER_UNIT: &str = "[Unit]
Description=ssh-ec2 dead-man switch, every minute

[Timer]
OnBootSec=15min
OnUnitActiveSec=1min
AccuracySec=10s

[Install]
WantedBy=timers.target
";

const CHECK_UNIT: &str = "[Unit]
Description=ssh-ec2 dead-man switch: stop this instance once its lifetime is over or it is idle

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/ssh-ec2-watchdog check
";

const BOOT_UNIT: &str = "[Unit]
Description=ssh-ec2 dead-man switch: the idle time starts at boot

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/ssh-ec2-watchdog boot

[Install]
WantedBy=multi-user.target
";

/// The script, with the age after which a lease no longer counts.
fn script() -> String {
    let seconds = super::lease::EXPIRES_AFTER_MINUTES * 60;
    SCRIPT.replace("@LEASE_SECONDS@", &seconds.to_string())
}

/// The switch itself, run as root. Its paths can be moved through the environment (for a test
/// of the script); the clock is `date +%s`. Active means: an SSH login (sshd names its session
/// processes `user@tty`), a run's lease that still counts (see `lease`), or a job
/// with no exit status whose wrapper lives (see `job`; a record without the wrapper's pid, from
/// an older version, counts as running).
const SCRIPT: &str = r#"#!/bin/sh
# ssh-ec2's dead-man switch: `check` (every minute, ssh-ec2-watchdog.timer) shuts this
# instance down once its deadline has passed or it has been idle for too long; it stops, and
# its disk keeps the results. `boot` starts the idle time. Settings: the newest `armed` of
# /etc/ssh-ec2/watchdog and ~/.ssh-ec2/watchdog/* (written by each ssh-ec2 run).
set -u
state=${SSH_EC2_WATCHDOG_STATE:-/var/lib/ssh-ec2}
homes=${SSH_EC2_WATCHDOG_HOMES:-/root /home/*}
launch_settings=${SSH_EC2_WATCHDOG_SETTINGS:-/etc/ssh-ec2/watchdog}
now=$(date +%s)

number() { case $1 in ''|*[!0-9]*) return 1;; esac; }
mark() {
    mkdir -p "$state" && echo "$now" > "$state/active.new" && mv "$state/active.new" "$state/active"
}

armed=0 deadline=off idle=off
consider() {
    [ -f "$1" ] || return 0
    a= d= i=
    while IFS='=' read -r key value; do
        case $key in armed) a=$value;; deadline) d=$value;; idle) i=$value;; esac
    done < "$1"
    number "$a" && [ "$a" -ge "$armed" ] || return 0
    { [ "$d" = off ] || number "$d"; } && { [ "$i" = off ] || number "$i"; } || return 0
    armed=$a deadline=$d idle=$i
}

active() {
    ps -eo args= 2>/dev/null | grep -Eq '^sshd(-session)?: [^ ]+@' && return 0
    for home in $homes; do
        for lease in "$home"/.ssh-ec2/leases/*/*; do
            [ -f "$lease" ] || continue
            touched=$(stat -c %Y "$lease" 2>/dev/null) || continue
            [ $((now - touched)) -lt @LEASE_SECONDS@ ] && return 0
        done
        for job in "$home"/.ssh-ec2/jobs/*; do
            [ -d "$job" ] && [ ! -f "$job/exit" ] || continue
            pid=$(cat "$job/pid" 2>/dev/null) || return 0
            [ -d "/proc/$pid" ] && return 0
        done
    done
    return 1
}

end() {
    echo "ssh-ec2-watchdog: $1: shutting down (the instance stops; its disk is kept)"
    shutdown -h now "ssh-ec2: $1" || systemctl poweroff
    exit 0
}

case ${1:-check} in
    boot) mark; exit 0;;
    check) ;;
    *) echo "usage: $0 check|boot" >&2; exit 2;;
esac

consider "$launch_settings"
for home in $homes; do
    for file in "$home"/.ssh-ec2/watchdog/*; do consider "$file"; done
done

if [ "$deadline" != off ] && [ "$now" -ge "$deadline" ]; then
    end "its maximum lifetime is over"
fi
if active; then
    mark
    exit 0
fi
if [ "$idle" != off ]; then
    last=$(cat "$state/active" 2>/dev/null)
    number "$last" || last=0
    [ "$armed" -gt "$last" ] && last=$armed
    if [ $((now - last)) -ge "$idle" ]; then
        end "idle for $((now - last)) seconds"
    fi
fi
exit 0
"#;

/// `2026-11-22T08:00:00Z` for Unix seconds: the form EC2 tags and `--list` show.
fn iso8601(secs: u64) -> String {
    use aws_sdk_ec2::primitives::{DateTime, DateTimeFormat};
    DateTime::from_secs(secs as i64)
        .fmt(DateTimeFormat::DateTime)
        .expect("whole seconds since 1970 always format")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_counts_leases_as_long_as_they_count() {
        assert!(script().contains("-lt 120 ]"));
        assert!(!script().contains("@LEASE"));
    }

    #[test]
    fn deadlines_are_tagged_in_utc() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(951_827_696), "2000-02-29T12:34:56Z");
        assert_eq!(iso8601(1_795_305_600), "2026-11-22T00:00:00Z");
        let arming = Arming::new(
            UNIX_EPOCH + std::time::Duration::from_secs(1_795_305_600),
            Limit::hours(1),
            Limit::Off,
        );
        assert_eq!(arming.expires_at().as_deref(), Some("2026-11-22T01:00:00Z"));
        assert_eq!(
            arming.settings(),
            "armed=1795305600\ndeadline=1795309200\nidle=off\n"
        );
    }
}
