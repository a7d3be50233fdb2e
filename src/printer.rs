//! All of ssh-ec2's own output goes through here, to stderr: stdout belongs to the remote command.
//! On a terminal each phase is a spinner with its elapsed time; otherwise plain lines; with `-q`
//! nothing but errors.

use std::io::Write;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    Quiet,
    Normal,
    /// `-v`: also list the files rsync transfers.
    ListFiles,
    /// `-vv`: also debug logs.
    Debug,
}

impl Verbosity {
    pub fn from_flags(quiet: bool, verbose: u8) -> Self {
        match (quiet, verbose) {
            (true, _) => Verbosity::Quiet,
            (false, 0) => Verbosity::Normal,
            (false, 1) => Verbosity::ListFiles,
            (false, _) => Verbosity::Debug,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Printer {
    verbosity: Verbosity,
    spinners: bool,
}

impl Printer {
    pub fn new(verbosity: Verbosity) -> Self {
        use std::io::IsTerminal;
        // Debug logs interleave badly with redrawn spinners.
        let spinners = verbosity < Verbosity::Debug && std::io::stderr().is_terminal();
        Self {
            verbosity,
            spinners,
        }
    }

    /// Starts a phase ("launching instance"); finish it with [`Phase::done`].
    pub fn phase(&self, what: impl Into<String>) -> Phase {
        let what = what.into();
        let bar = match self.verbosity {
            Verbosity::Quiet => None,
            _ if self.spinners => {
                let bar = ProgressBar::new_spinner().with_style(
                    ProgressStyle::with_template("{spinner:.cyan} {msg} {elapsed:.dim}")
                        .expect("static template"),
                );
                bar.set_message(what.clone());
                bar.enable_steady_tick(Duration::from_millis(100));
                Some(bar)
            }
            _ => {
                self.line(&format!("{what}…"));
                None
            }
        };
        Phase {
            printer: *self,
            bar,
            started: Instant::now(),
        }
    }

    /// A line of information (hidden by `-q`).
    pub fn info(&self, message: &str) {
        if self.verbosity > Verbosity::Quiet {
            self.line(message);
        }
    }

    /// A warning: shown even with `-q`, since it means something needs the user's attention.
    pub fn warn(&self, message: &str) {
        self.line(&format!("warning: {message}"));
    }

    /// An error with its causes, one per line, most general first.
    pub fn error(&self, error: &anyhow::Error) {
        let mut text = format!("error: {error}");
        for cause in error.chain().skip(1) {
            text.push_str(&format!("\n  {cause}"));
        }
        self.line(&text);
    }

    fn line(&self, message: &str) {
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(stderr, "ssh-ec2: {message}");
    }
}

/// A phase in progress. Dropping it unfinished (an error path) clears its spinner.
pub struct Phase {
    printer: Printer,
    bar: Option<ProgressBar>,
    started: Instant,
}

impl Phase {
    /// Replaces the phase's message (e.g. "waiting for SSH: connection refused").
    pub fn update(&self, message: impl Into<String>) {
        if let Some(bar) = &self.bar {
            bar.set_message(message.into());
        }
    }

    /// Ends the phase with its outcome and elapsed time.
    pub fn done(mut self, outcome: impl AsRef<str>) {
        let line = format!(
            "{} ({})",
            outcome.as_ref(),
            format_duration(self.started.elapsed())
        );
        match self.bar.take() {
            Some(bar) => {
                bar.finish_and_clear();
                self.printer.line(&line);
            }
            None => self.printer.info(&line),
        }
    }
}

impl Drop for Phase {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// `4.2s`, `3m12s`, `1h05m`: short enough for a summary line.
pub fn format_duration(elapsed: Duration) -> String {
    let secs = elapsed.as_secs();
    match secs {
        0..60 => format!("{:.1}s", elapsed.as_secs_f64()),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(format_duration(Duration::from_millis(4200)), "4.2s");
        assert_eq!(format_duration(Duration::from_secs(192)), "3m12s");
        assert_eq!(format_duration(Duration::from_secs(3900)), "1h05m");
    }
}
