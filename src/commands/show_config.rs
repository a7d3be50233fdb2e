//! `ssh-ec2 --show-config`: every setting, its effective value and where it came from. It reads
//! the same layers as a run and stops there: no plan, no AWS call.

use std::fmt::Write as _;

use anyhow::Result;

use crate::cli::Request;
use crate::plan::host::Host;
use crate::printer::Printer;
use crate::settings::{Effective, PRESET_VARIABLE};
use crate::status::ExitStatus;

pub fn show_config(request: &Request, host: &Host, printer: &Printer) -> Result<ExitStatus> {
    let sources = host.sources();
    let settings = sources.load(request.preset.as_deref(), crate::plan::flags(request)?)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Layers, each over the one before: defaults < user file < project file < preset < .env \
         < environment < flags."
    );
    for (layer, path) in [
        ("user file", &sources.user_config),
        ("project file", &sources.project_config),
        (".env", &sources.dot_env),
    ] {
        let absent = if path.exists() { "" } else { " (absent)" };
        let _ = writeln!(out, "{layer:<13} {}{absent}", path.display());
    }
    let _ = match &settings.preset {
        Some((name, chosen_by)) => writeln!(out, "{:<13} {name}, chosen by {chosen_by}", "preset"),
        None => writeln!(
            out,
            "{:<13} none (--preset NAME or {PRESET_VARIABLE} chooses one)",
            "preset"
        ),
    };
    out.push('\n');

    let rows: Vec<_> = settings
        .rows()
        .into_iter()
        .map(|row| match row.value {
            Effective::Set { value, origin } => {
                // One line per setting, even for multi-line boot commands.
                (row.name, origin.to_string(), value.replace('\n', "\\n"))
            }
            Effective::Unset(fallback) => (row.name, "default".to_string(), fallback.to_string()),
        })
        .collect();
    let name_width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let origin_width = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let _ = writeln!(
        out,
        "{:name_width$}  {:origin_width$}  VALUE",
        "SETTING", "FROM"
    );
    for (name, origin, value) in rows {
        let _ = writeln!(out, "{name:name_width$}  {origin:origin_width$}  {value}");
    }
    printer.out(out)?;
    Ok(ExitStatus::Success)
}
