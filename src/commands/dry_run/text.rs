//! The dry run's report as text, for a person.

use std::fmt::Write as _;

use super::{Launch, Report};
use crate::cloud::TypeInfo;
use crate::printer::format_bytes;

/// The report; the user-data (long, escaped scripts) only when `verbose`.
pub(super) fn text(report: &Report, verbose: bool) -> String {
    let mut out = Rows(String::from(
        "Dry run: nothing was created, started or changed.\n\n",
    ));
    out.row("region", &report.region);
    out.row("directory", &report.directory);
    out.row("remote directory", &report.remote_dir);
    out.row(
        "command",
        report.command.as_deref().unwrap_or("(a login shell)"),
    );
    if !report.env.is_empty() {
        let names = report.env.join(", ");
        out.row("environment", &format!("{names} (values not shown)"));
    }
    if let Some(reused) = &report.reuse {
        let started = match reused.state.as_str() {
            "stopped" | "stopping" => " (started first)",
            _ => "",
        };
        out.row(
            "instance",
            &format!(
                "{} ({}, {}): this directory's, reused{started}",
                reused.id, reused.instance_type, reused.state,
            ),
        );
    }
    if let Some(launch) = &report.launch {
        launch_rows(&mut out, launch);
    }
    run_rows(&mut out, report);
    if let Some(launch) = &report.launch {
        verdict(&mut out, launch, verbose);
    }
    out.0
}

/// The report's lines: a label, then its value, aligned.
struct Rows(String);

impl Rows {
    fn row(&mut self, label: &str, value: &str) {
        let _ = writeln!(self.0, "{label:<17} {value}");
    }

    fn indented(&mut self, line: &str) {
        let _ = writeln!(self.0, "  {line}");
    }
}

/// What would be launched.
fn launch_rows(out: &mut Rows, launch: &Launch) {
    out.row("instance", "none yet for this directory: one is launched");
    out.row(
        "image",
        &format!(
            "{} \"{}\" (login user {})",
            launch.image_id, launch.image_name, launch.user
        ),
    );
    out.row("instance type", &describe_type(&launch.instance_type));
    if launch.nodes > 1 {
        out.row(
            "nodes",
            &format!("{}, one cluster in one zone", launch.nodes),
        );
    }
    if let Some(placement) = &launch.placement {
        out.row("placement", placement);
    }
    if !launch.fallback_types.is_empty() {
        out.row("fallback types", &launch.fallback_types.join(", "));
    }
    out.row("subnet", &place(launch));
    out.row(
        "security group",
        &match &launch.security_group {
            Some(id) => format!("{id} (admin-made, used as it is)"),
            None => "its own, made at launch, removed with it".to_string(),
        },
    );
    out.row(
        "root volume",
        &launch
            .volume_gib
            .map_or("the image's".to_string(), |gib| format!("{gib} GiB gp3")),
    );
    out.row(
        "instance profile",
        launch
            .instance_profile
            .as_deref()
            .unwrap_or("(none: no AWS rights on the instance)"),
    );
}

/// Where the launch would be tried.
fn place(launch: &Launch) -> String {
    match (launch.subnets.as_slice(), launch.zones.as_slice()) {
        ([subnet], _) => format!("subnet {subnet} of {}", launch.vpc),
        ([first, ..], _) => format!(
            "subnet {first} of {}, then {} in turn when one has no capacity",
            launch.vpc,
            launch.subnets[1..].join(", ")
        ),
        ([], []) => format!("the zone EC2 picks in {}", launch.vpc),
        ([], zones) => format!(
            "the zone EC2 picks in {}, then the default subnet of {} in turn when it has \
             no capacity",
            launch.vpc,
            zones.join(", ")
        ),
    }
}

/// How the run would go: who may reach the instance, its end, its market, the sync, the price.
fn run_rows(out: &mut Rows, report: &Report) {
    out.row(
        "SSH allowed from",
        &format!("{} ({})", report.ssh_cidr, report.ssh_cidr_from),
    );
    match &report.connect {
        Some(connect) => out.row("connect to", connect),
        None => out.row(
            "address",
            &format!("the instance's {} address", report.address),
        ),
    }
    out.row("end of life", &report.end_of_life);
    out.row("lifetime", &report.lifetime);
    if let Some(max_price) = &report.spot {
        let price = max_price
            .as_deref()
            .map_or("the on-demand price".into(), |p| format!("${p}/hour"));
        out.row("market", &format!("spot, up to {price}"));
    }
    out.row(
        "sync",
        &match &report.sync {
            Some(size) => format!(
                "{} files, {} (at most: what the instance has already is not sent again)",
                size.files,
                format_bytes(size.bytes)
            ),
            None => "none (--no-rsync)".to_string(),
        },
    );
    let nodes = report.launch.as_ref().map_or(1, |launch| launch.nodes);
    out.row(
        "price",
        &match (&report.price, nodes) {
            (Some(hourly), 1) => hourly.to_string(),
            (Some(hourly), n) => format!("{hourly} × {n} nodes"),
            (None, _) => "price unknown".to_string(),
        },
    );
}

/// Whether AWS would allow the launch, and the user-data it would get (when `verbose`).
fn verdict(out: &mut Rows, launch: &Launch, verbose: bool) {
    match launch.allowed {
        true => out.row(
            "AWS allows it",
            "yes (RunInstances with DryRun answered DryRunOperation)",
        ),
        false => {
            out.row("AWS allows it", "NO");
            for line in &launch.refusal_lines {
                out.indented(line);
            }
        }
    }
    if !verbose {
        let lines = launch.user_data.lines().count();
        out.row(
            "user-data",
            &format!("{lines} lines, secrets elided (-v shows them)"),
        );
        return;
    }
    out.0.push_str("\nuser-data, secrets elided:\n");
    for line in launch.user_data.lines() {
        out.indented(line);
    }
}

/// "4 vCPUs, 16 GiB memory, 1 × NVIDIA T4 (16 GiB)".
fn describe_type(info: &TypeInfo) -> String {
    let mut parts = Vec::new();
    if let Some(vcpus) = info.vcpus {
        parts.push(format!("{vcpus} vCPUs"));
    }
    if let Some(mib) = info.memory_mib {
        parts.push(format!(
            "{} memory",
            format_bytes(mib.max(0) as u64 * 1024 * 1024)
        ));
    }
    for gpu in &info.gpus {
        let memory = gpu.memory_mib.map_or(String::new(), |mib| {
            format!(" ({} each)", format_bytes(mib.max(0) as u64 * 1024 * 1024))
        });
        parts.push(format!(
            "{} × {} {}{memory}",
            gpu.count, gpu.maker, gpu.model
        ));
    }
    if info.gpus.is_empty() {
        parts.push("no GPU".to_string());
    }
    format!(
        "{}: {} ({})",
        info.name,
        parts.join(", "),
        info.architectures.join(", ")
    )
}
