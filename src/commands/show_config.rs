//! `ssh-ec2 --show-config`: every setting, its effective value and where it came from. It reads
//! the same layers as a run and stops there: no plan, no AWS call.

use std::fmt::Write as _;

use anyhow::Result;

use crate::cli::Request;
use crate::cloud::guess_user;
use crate::plan::host::Host;
use crate::plan::{here, launch};
use crate::printer::Printer;
use crate::settings::{Effective, PRESET_VARIABLE, Values};
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

    let values = settings.values.clone().resolve();
    let rows: Vec<_> = settings
        .rows()
        .into_iter()
        .map(|row| match row.value {
            Effective::Set { value, origin } => {
                // One line per setting, even for multi-line boot commands.
                (row.name, origin.to_string(), value.replace('\n', "\\n"))
            }
            Effective::Unset(fallback) => {
                let value = match resolved_here(&row.name, &values, host) {
                    Some(value) => format!("{value}  {fallback}"),
                    None => fallback.to_string(),
                };
                (row.name, "default".to_string(), value)
            }
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

/// What a default worked out from this directory comes to here, where no AWS answer is needed;
/// shown before the rule it follows.
fn resolved_here(name: &str, values: &Values, host: &Host) -> Option<String> {
    let local_dir = || here::local_dir(host).ok();
    match name {
        "remote_dir" => Some(here::remote_dir(values, &local_dir()?).ok()?.to_string()),
        "name" => {
            let owner = here::owner(values, host, String::new()).ok()?;
            let dir = local_dir()?;
            Some(launch::default_name(&owner.name, dir.to_str()?))
        }
        "user" if values.image_id.is_none() => Some(guess_user(&values.image_name).to_string()),
        _ => None,
    }
}
