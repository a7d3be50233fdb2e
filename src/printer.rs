//! All of ssh-ec2's own output goes through here. What it says goes to stderr, since stdout
//! belongs to the remote command: on a terminal each phase is a spinner with its elapsed time;
//! otherwise plain lines; with `-q` nothing but errors and warnings. What a mode prints as its
//! result (a listing, a report, a completion script) goes to stdout, through `out`.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
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

#[derive(Clone)]
pub struct Printer {
    verbosity: Verbosity,
    spinners: bool,
    /// The spinner on screen, which other lines must be printed around.
    spinning: Arc<Mutex<Option<ProgressBar>>>,
}

impl Printer {
    pub fn new(verbosity: Verbosity) -> Self {
        use std::io::IsTerminal;
        // rsync's file list and debug logs are written past the printer: no redrawn spinner
        // may cut through them.
        let spinners = verbosity == Verbosity::Normal && std::io::stderr().is_terminal();
        Self {
            verbosity,
            spinners,
            spinning: Arc::default(),
        }
    }

    /// The same printer, each phase a line instead of a spinner: for phases under way at once
    /// (a cluster's nodes), whose spinners would draw over each other on one line.
    pub fn lines_only(&self) -> Printer {
        Printer {
            spinners: false,
            ..self.clone()
        }
    }

    /// `-v`: rsync lists the files it transfers, `--dry-run` shows the user-data.
    pub fn verbose(&self) -> bool {
        self.verbosity >= Verbosity::ListFiles
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
                bar.set_message(what);
                bar.enable_steady_tick(Duration::from_millis(100));
                *self.spinning.lock().expect("not poisoned") = Some(bar.clone());
                Some(bar)
            }
            _ => {
                self.line(&format!("{what}…"));
                None
            }
        };
        Phase {
            printer: self.clone(),
            bar,
            started: Instant::now(),
        }
    }

    /// A mode's result on stdout (not hidden by `-q`: it was asked for). A reader that closed
    /// the pipe (`ssh-ec2 --list | head -1`) gives `StdoutClosed`, which ends ssh-ec2 quietly.
    pub fn out(&self, text: impl AsRef<[u8]>) -> anyhow::Result<()> {
        let mut stdout = std::io::stdout().lock();
        match stdout
            .write_all(text.as_ref())
            .and_then(|()| stdout.flush())
        {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
            written => written
                .map_err(|e| anyhow::Error::new(e).context("cannot write to standard output")),
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
        let raw = std::io::stderr().is_terminal()
            && crossterm::terminal::is_raw_mode_enabled().unwrap_or(false);
        // Whatever a message quotes (rsync's errors, a remote answer), it cannot drive the
        // terminal; its own line breaks stay.
        let text = terminal_text(&escape_controls(message, &['\n']), raw);
        let print = || {
            let _ = std::io::stderr().lock().write_all(text.as_bytes());
        };
        match &*self.spinning.lock().expect("not poisoned") {
            Some(bar) => bar.suspend(print),
            None => print(),
        }
    }
}

/// Whoever reads ssh-ec2's stdout has closed it: nothing more is wanted.
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output was closed by its reader")
    }
}

impl std::error::Error for StdoutClosed {}

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
        self.clear();
        let elapsed = format_duration(self.started.elapsed());
        self.printer
            .info(&format!("{} ({elapsed})", outcome.as_ref()));
    }

    fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            *self.printer.spinning.lock().expect("not poisoned") = None;
        }
    }
}

impl Drop for Phase {
    fn drop(&mut self) {
        self.clear();
    }
}

/// A name from the instance (a file, a link's target) as ssh-ec2 prints it: control characters
/// escaped (`\n`, `\t`, `\x1b`…) and backslashes doubled, so a name can neither drive the user's
/// terminal (move the cursor, recolour, retitle) nor start a line that looks like ssh-ec2's own.
pub fn escape(text: &str) -> String {
    escape_controls(&text.replace('\\', "\\\\"), &[])
}

/// A path as [`escape`] shows it; bytes that are not UTF-8 as `\xNN`.
pub fn escape_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str()
        .as_bytes()
        .utf8_chunks()
        .map(|chunk| {
            let invalid: String = (chunk.invalid().iter())
                .map(|byte| format!("\\x{byte:02x}"))
                .collect();
            escape(chunk.valid()) + &invalid
        })
        .collect()
}

/// `text` with its control characters (C0, DEL, C1) escaped, but those in `kept`.
fn escape_controls(text: &str, kept: &[char]) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            _ if !c.is_control() || kept.contains(&c) => out.push(c),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            _ => out.push_str(&format!("\\x{:02x}", c as u32)),
        }
    }
    out
}

/// A message as written to stderr. A terminal in raw mode (during a PTY session) does not go
/// back to the first column on `\n`, so each line then ends with `\r\n`.
fn terminal_text(message: &str, raw: bool) -> String {
    let text = format!("ssh-ec2: {message}\n");
    match raw {
        true => text.replace('\n', "\r\n"),
        false => text,
    }
}

/// `12 bytes`, `1.5 KiB`, `16 GiB`.
pub fn format_bytes(count: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if count < 1024 {
        return format!("{count} bytes");
    }
    let mut value = count as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    let value = match value.fract() {
        0.0 => format!("{value}"),
        _ => format!("{value:.1}"),
    };
    format!("{value} {}", UNITS[unit])
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
    fn sizes_read_like_sizes() {
        assert_eq!(format_bytes(12), "12 bytes");
        assert_eq!(format_bytes(16 * 1024 * 1024 * 1024), "16 GiB");
        assert_eq!(format_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn lines_return_to_the_first_column_in_raw_mode() {
        assert_eq!(terminal_text("a\n  b", false), "ssh-ec2: a\n  b\n");
        assert_eq!(terminal_text("a\n  b", true), "ssh-ec2: a\r\n  b\r\n");
    }

    #[test]
    fn names_cannot_drive_the_terminal() {
        assert_eq!(escape("a\x1b[2Jb\nc\td"), "a\\x1b[2Jb\\nc\\td");
        assert_eq!(
            escape("\u{9b}31m \u{7f}"),
            "\\x9b31m \\x7f",
            "C1 and DEL too"
        );
        assert_eq!(
            escape(r"a\nb"),
            r"a\\nb",
            "a literal backslash reads as one"
        );
        assert_eq!(escape("été 🚀"), "été 🚀", "printable text as is");
        use std::os::unix::ffi::OsStrExt;
        let odd = Path::new(std::ffi::OsStr::from_bytes(b"x\xff\x1by"));
        assert_eq!(escape_path(odd), "x\\xff\\x1by");
        assert_eq!(
            escape_controls("line\n\x1b]0;title\x07", &['\n']),
            "line\n\\x1b]0;title\\x07",
            "a message keeps its line breaks, nothing else"
        );
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(format_duration(Duration::from_millis(4200)), "4.2s");
        assert_eq!(format_duration(Duration::from_secs(192)), "3m12s");
        assert_eq!(format_duration(Duration::from_secs(3900)), "1h05m");
    }
}
