//! The instance's dead-man switch: it stops the instance by itself once its maximum lifetime is
//! over, or once nothing has used it for the idle time, so a laptop that is gone never leaves
//! it running (and billed). Installed at first boot through user-data (a script, a systemd timer
//! that runs it every minute, and a unit that starts the idle time at each boot); each run
//! re-arms it with its own settings, so a reused instance follows the current run's.
//!
//! The settings are small files of durations: the launch's in `/etc/ssh-ec2/watchdog`, each
//! directory's run in `~/.ssh-ec2/watchdog/<job name>`; the one armed last wins. When a file was
//! armed is its modification time, by the instance's own clock (cloud-init writes the launch's
//! at first boot; a run's is written on the instance), so a laptop whose clock is off can
//! neither end the instance early nor keep it past its lifetime. `shutdown -h` stops the
//! instance (it is launched with the "stop" shutdown behaviour), so unpulled results survive.
//!
//! sshd drops a client that no longer answers within a minute or so (a drop-in in
//! `/etc/ssh/sshd_config.d/`): a vanished laptop's session does not count as activity for the
//! hours TCP would take to notice.

use std::time::{SystemTime, UNIX_EPOCH};

use super::job::Job;
use crate::settings::values::Limit;

/// The switch's settings as one run arms them: how long at most, and how long idle.
#[derive(Debug, Clone)]
pub struct Arming {
    /// This machine's clock as the run began, in Unix seconds: only for the
    /// `ssh-ec2:expires-at` tag and the launch line. The switch counts by the instance's clock.
    began: u64,
    pub max_lifetime: Limit,
    pub idle_stop: Limit,
}

impl Arming {
    pub fn new(now: SystemTime, max_lifetime: Limit, idle_stop: Limit) -> Arming {
        Arming {
            began: now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            max_lifetime,
            idle_stop,
        }
    }

    /// The deadline in ISO 8601, UTC, by this machine's clock, for the launch line. The
    /// instance's own deadline is its clock's.
    pub fn expires_at(&self) -> Option<String> {
        let lifetime = self.max_lifetime.duration()?.as_secs();
        Some(iso8601(self.began + lifetime))
    }

    /// The `ssh-ec2:expires-at` tag (for `--list` and `--gc`): the deadline rounded up to the
    /// next `TAG_STEP`, so that the runs of the same few minutes leave it as it is (no AWS
    /// call), and `--gc` never takes an instance for expired before it is.
    pub fn expiry_tag(&self) -> Option<String> {
        let lifetime = self.max_lifetime.duration()?.as_secs();
        Some(iso8601((self.began + lifetime).next_multiple_of(TAG_STEP)))
    }

    /// What the settings file says: durations in seconds, no time of day.
    fn settings(&self) -> String {
        let seconds = |limit: Limit| {
            limit
                .duration()
                .map_or("off".into(), |d| d.as_secs().to_string())
        };
        format!(
            "lifetime={}\nidle={}\n",
            seconds(self.max_lifetime),
            seconds(self.idle_stop)
        )
    }

    /// Re-arms the switch from a connection, in the login user's home, for this directory. The
    /// file written now is armed now, by the instance's clock.
    pub fn arm_command(&self, job: &Job) -> String {
        format!(
            "d={} && mkdir -p \"$d\" && printf '%s' {} > \"$d/{name}.new\" \
             && mv \"$d/{name}.new\" \"$d/{name}\"",
            super::state_dir("watchdog"),
            super::shell_quote(&self.settings()),
            name = job.name()
        )
    }

    /// When the instance will end itself, for the launch line: a spot instance, which cannot
    /// be stopped, is terminated instead.
    pub fn describe(&self, spot: bool) -> String {
        let ends = if spot { "terminates" } else { "stops" };
        match (self.expires_at(), self.idle_stop) {
            (Some(at), Limit::After(_)) => format!(
                "it {ends} itself at {at} (--max-lifetime {}), or after {} idle",
                self.max_lifetime, self.idle_stop
            ),
            (Some(at), Limit::Off) => {
                format!(
                    "it {ends} itself at {at} (--max-lifetime {})",
                    self.max_lifetime
                )
            }
            (None, Limit::After(_)) => format!("it {ends} itself after {} idle", self.idle_stop),
            (None, Limit::Off) => {
                "it never ends itself (--max-lifetime and --idle-stop are off)".to_string()
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
            // Written before sshd first starts (cloud-init's init stage): no reload needed.
            (SSHD_DROP_IN_PATH, "0644", SSHD_DROP_IN.to_string()),
        ]
    }
}

/// The units that `boot_files` installs, to enable and start at first boot.
pub const UNITS: &str = "ssh-ec2-watchdog-boot.service ssh-ec2-watchdog.timer";

const SCRIPT_PATH: &str = "/usr/local/sbin/ssh-ec2-watchdog";

const SSHD_DROP_IN_PATH: &str = "/etc/ssh/sshd_config.d/ssh-ec2.conf";

/// As ssh-ec2's own client gives up on a silent server: a probe every 15 s, 4 unanswered.
const SSHD_DROP_IN: &str =
    "# ssh-ec2: a client that no longer answers (a closed laptop, a lost network) is
# dropped after about a minute, so that its session does not keep the instance from being idle.
ClientAliveInterval 15
ClientAliveCountMax 4
";

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

/// The script, with the age after which a lease no longer counts, and how a foreground run's
/// command is seen running (see `runs`).
fn script() -> String {
    let seconds = super::lease::EXPIRES_AFTER_MINUTES * 60;
    SCRIPT
        .replace("@LEASE_SECONDS@", &seconds.to_string())
        .replace("@RUNNING@", &super::runs::running_functions())
}

/// The switch itself, run as root. Its paths can be moved through the environment (for a test
/// of the script); the clock is `date +%s`, and a settings file was armed at its modification
/// time, both the instance's. Active means: an SSH login running something (a process under
/// the session process sshd names `user@tty`: a shell, a command; a connection kept open with
/// nothing running, as ssh-ec2's held connection, does not count, though sshd keeps the name
/// once a command ran), a run's lease that still counts (see `lease`), a foreground run's command that
/// still runs, its client gone or not (see `runs`), or a job with no exit status whose wrapper
/// lives (see `job`; a record without the wrapper's pid, from an older version, counts as
/// running).
const SCRIPT: &str = r#"#!/bin/sh
# ssh-ec2's dead-man switch: `check` (every minute, ssh-ec2-watchdog.timer) shuts this
# instance down once its deadline has passed or it has been idle for too long; it stops, and
# its disk keeps the results. `boot` starts the idle time. Settings: the newest (by modification
# time) of /etc/ssh-ec2/watchdog and ~/.ssh-ec2/watchdog/* (written by each ssh-ec2 run), in
# seconds: `lifetime` from when it was written, and `idle`.
set -u
state=${SSH_EC2_WATCHDOG_STATE:-/var/lib/ssh-ec2}
homes=${SSH_EC2_WATCHDOG_HOMES:-/root /home/*}
launch_settings=${SSH_EC2_WATCHDOG_SETTINGS:-/etc/ssh-ec2/watchdog}
now=$(date +%s)

number() { case $1 in ''|*[!0-9]*) return 1;; esac; }
mark() {
    mkdir -p "$state" && echo "$now" > "$state/active.new" && mv "$state/active.new" "$state/active"
}

armed=0 lifetime=off idle=off
consider() {
    [ -f "$1" ] || return 0
    a=$(stat -c %Y "$1" 2>/dev/null) l= i=
    while IFS='=' read -r key value; do
        case $key in lifetime) l=$value;; idle) i=$value;; esac
    done < "$1"
    number "$a" && [ "$a" -ge "$armed" ] || return 0
    { [ "$l" = off ] || number "$l"; } && { [ "$i" = off ] || number "$i"; } || return 0
    armed=$a lifetime=$l idle=$i
}

@RUNNING@

active() {
    ps -eo pid=,ppid=,args= 2>/dev/null | awk '
        $3 ~ /^sshd(-session)?:$/ && $4 ~ /@/ { login[$1] = 1 }
        { parent[NR] = $2 }
        END { for (i in parent) if (parent[i] in login) exit 0; exit 1 }' && return 0
    for home in $homes; do
        for lease in "$home"/.ssh-ec2/leases/*/*; do
            [ -f "$lease" ] || continue
            touched=$(stat -c %Y "$lease" 2>/dev/null) || continue
            [ $((now - touched)) -lt @LEASE_SECONDS@ ] && return 0
        done
        for run in "$home"/.ssh-ec2/runs/*/*; do
            [ -f "$run/pid" ] && running "$run" && return 0
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

if [ "$lifetime" != off ] && [ "$now" -ge $((armed + lifetime)) ]; then
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
/// What the expiry tag is rounded up to, in seconds.
const TAG_STEP: u64 = 600;

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
    fn the_tag_is_a_utc_deadline_and_the_settings_only_durations() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(951_827_696), "2000-02-29T12:34:56Z");
        assert_eq!(iso8601(1_795_305_600), "2026-11-22T00:00:00Z");
        let arming = Arming::new(
            UNIX_EPOCH + std::time::Duration::from_secs(1_795_305_600),
            Limit::hours(1),
            Limit::Off,
        );
        assert_eq!(arming.expires_at().as_deref(), Some("2026-11-22T01:00:00Z"));
        assert_eq!(arming.expiry_tag().as_deref(), Some("2026-11-22T01:00:00Z"));
        let later = Arming::new(
            UNIX_EPOCH + std::time::Duration::from_secs(1_795_305_601),
            Limit::hours(1),
            Limit::Off,
        );
        assert_eq!(later.expires_at().as_deref(), Some("2026-11-22T01:00:01Z"));
        assert_eq!(
            later.expiry_tag().as_deref(),
            Some("2026-11-22T01:10:00Z"),
            "rounded up, never down"
        );
        // No time of day: the instance counts from when it stored them, by its own clock.
        assert_eq!(arming.settings(), "lifetime=3600\nidle=off\n");
    }

    #[test]
    fn sshd_drops_a_silent_client_within_about_a_minute() {
        let files = Arming::new(SystemTime::now(), Limit::Off, Limit::Off).boot_files();
        let (_, _, drop_in) = files
            .iter()
            .find(|(path, _, _)| path.starts_with("/etc/ssh/sshd_config.d/"))
            .expect("an sshd drop-in");
        assert!(drop_in.contains("\nClientAliveInterval 15\nClientAliveCountMax 4\n"));
    }
}
