//! Durations: the instance's lifetimes (`off` or `24h`, `1h30m`…) and the timeouts of waits.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// A duration setting that `off` disables: `--max-lifetime`, `--idle-stop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Limit {
    Off,
    After(Duration),
}

impl Limit {
    pub const fn hours(n: u64) -> Limit {
        Limit::After(Duration::from_secs(n * 3_600))
    }

    pub const fn minutes(n: u64) -> Limit {
        Limit::After(Duration::from_secs(n * 60))
    }

    pub fn duration(self) -> Option<Duration> {
        match self {
            Limit::Off => None,
            Limit::After(d) => Some(d),
        }
    }
}

impl FromStr for Limit {
    type Err = String;
    /// `off`, or a sum of `<number><unit>` with units d, h, m, s: `24h`, `90m`, `1h30m`.
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(Limit::Off);
        }
        let hint = "24h, 90m, 1h30m, 2d or 45s, or off";
        let total = parse_duration(s)
            .ok_or_else(|| format!("`{s}` is not a duration: write e.g. {hint}"))?;
        if total == 0 {
            return Err(format!(
                "`{s}` would stop the instance at once: give a longer duration, or off"
            ));
        }
        Ok(Limit::After(Duration::from_secs(total)))
    }
}

/// Seconds in `<number><unit>…` (units d, h, m, s); `None` when it is not that.
fn parse_duration(s: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        let n: u64 = number.parse().ok()?;
        total = n
            .checked_mul(unit)
            .and_then(|secs| total.checked_add(secs))?;
        number.clear();
    }
    (number.is_empty() && !s.trim().is_empty()).then_some(total)
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Off => f.write_str("off"),
            Limit::After(d) => write_duration(f, *d),
        }
    }
}

/// `24h`, `1h30m`, `45s`, `3d`: as people write lifetimes, and as they are read back. Days only
/// for several whole ones: a day is "24h" to most.
fn write_duration(f: &mut fmt::Formatter<'_>, d: Duration) -> fmt::Result {
    let mut secs = d.as_secs();
    let days = match secs.is_multiple_of(86_400) && secs >= 2 * 86_400 {
        true => 86_400,
        false => u64::MAX,
    };
    for (unit, size) in [("d", days), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= size {
            write!(f, "{}{unit}", secs / size)?;
            secs %= size;
        }
    }
    Ok(())
}

/// How long to wait for something (`--boot-timeout`, `--reconnect-timeout`): a number of
/// seconds, never zero, which could not work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "u64")]
pub struct Timeout(Duration);

impl Timeout {
    pub const fn secs(secs: u64) -> Timeout {
        Timeout(Duration::from_secs(secs))
    }

    pub fn duration(self) -> Duration {
        self.0
    }
}

impl TryFrom<u64> for Timeout {
    type Error = String;
    fn try_from(secs: u64) -> Result<Self, String> {
        match secs {
            0 => Err("a timeout of 0 seconds cannot work: give a number of seconds".into()),
            secs => Ok(Timeout::secs(secs)),
        }
    }
}

impl FromStr for Timeout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let secs: u64 = s
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a number of seconds: write e.g. 600"))?;
        secs.try_into()
    }
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_written_as_they_are_read() {
        let after = |s: u64| Limit::After(Duration::from_secs(s));
        assert_eq!("24h".parse(), Ok(after(86_400)));
        assert_eq!("1h30m".parse(), Ok(after(5_400)));
        assert_eq!("OFF".parse(), Ok(Limit::Off));
        for bad in ["", "0m", "24", "h", "1x", "-1h", "99999999999999999999d"] {
            assert!(bad.parse::<Limit>().is_err(), "{bad}");
        }
        assert_eq!(after(5_400).to_string(), "1h30m");
        assert_eq!(after(86_400).to_string(), "24h");
        assert_eq!(after(3 * 86_400).to_string(), "3d");
        assert_eq!(after(90_000).to_string(), "25h");
        let err = "0m".parse::<Limit>().unwrap_err();
        assert!(err.contains("at once"), "{err}");
    }

    #[test]
    fn timeouts_are_seconds_and_never_zero() {
        assert_eq!("600".parse(), Ok(Timeout::secs(600)));
        assert_eq!(Timeout::secs(600).to_string(), "600");
        assert!("0".parse::<Timeout>().unwrap_err().contains("cannot work"));
        assert!("10m".parse::<Timeout>().is_err());
        #[derive(Deserialize)]
        struct File {
            t: Timeout,
        }
        let file: File = toml::from_str("t = 300").unwrap();
        assert_eq!(file.t, Timeout::secs(300));
        assert!(toml::from_str::<File>("t = 0").is_err());
    }
}
