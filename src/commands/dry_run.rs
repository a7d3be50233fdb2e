//! `ssh-ec2 --dry-run [COMMAND]`: everything a run would decide, and its price, with nothing
//! created: read-only AWS calls, rsync's own --dry-run here, and RunInstances with EC2's DryRun
//! flag, which says whether AWS would allow the launch without launching anything.

use std::fmt::Write as _;
use std::io::Write as _;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cloud::userdata::UserData;
use crate::cloud::{AwsError, Cloud, LaunchRequest, TypeInfo};
use crate::fleet::{self, Resolved, ingress_cidr, root_volume_gib};
use crate::keys::LoginKey;
use crate::plan::{Ingress, Plan};
use crate::price::{self, Hourly};

/// Stands for the generated keys, which a dry run does not make (and would never print).
const ELIDED_HOST_KEY: &str = "(elided: the instance's ed25519 host private key, made at launch)";
const MADE_AT_LAUNCH: &str = "(made at launch)";
/// The exit status when AWS would refuse the launch.
const REFUSED: i32 = 1;

#[derive(Serialize)]
struct Report {
    region: String,
    directory: String,
    remote_dir: String,
    /// `None`: a login shell.
    command: Option<String>,
    /// This directory's instance, which the run would reuse (then nothing is launched).
    reuse: Option<Reused>,
    /// What would be launched, when there is no instance to reuse.
    launch: Option<Launch>,
    ssh_cidr: String,
    ssh_cidr_from: String,
    /// --connect: where ssh-ec2 would dial instead of the instance's address.
    connect: Option<String>,
    end_of_life: String,
    /// The dead-man switch: when the instance would stop itself.
    lifetime: String,
    /// `Some(max price)` for a spot launch (`None` inside: up to the on-demand price).
    spot: Option<Option<String>>,
    /// `None` with --no-rsync.
    sync: Option<SyncSize>,
    /// `None`: price unknown.
    price: Option<Hourly>,
}

#[derive(Serialize)]
struct Reused {
    id: String,
    state: String,
    instance_type: String,
}

#[derive(Serialize)]
struct Launch {
    image_id: String,
    image_name: String,
    user: String,
    instance_type: TypeInfo,
    fallback_types: Vec<String>,
    vpc: String,
    /// An admin-made group to launch into (`None`: one of its own, made at launch).
    security_group: Option<String>,
    /// The subnets given, tried in turn; none: the default VPC's.
    subnets: Vec<String>,
    /// Without a subnet: EC2's pick first, then these zones' default subnets.
    zones: Vec<String>,
    volume_gib: Option<u32>,
    instance_profile: Option<String>,
    /// The user-data, its secrets elided.
    user_data: String,
    /// RunInstances with DryRun: whether AWS would allow it, and else why not.
    allowed: bool,
    refusal: Option<String>,
    /// The refusal's causes, one per line, for the text form.
    #[serde(skip)]
    refusal_lines: Vec<String>,
}

#[derive(Serialize)]
struct SyncSize {
    files: u64,
    bytes: u64,
}

pub async fn dry_run(plan: &Plan, json: bool) -> Result<i32> {
    let cloud = Cloud::connect(plan.region.as_deref(), plan.aws_profile.as_deref()).await;
    let report = match survey(&cloud, plan).await {
        Ok(report) => report,
        Err(e) => return Err(cloud.explain_denial(e).await),
    };
    let out = match json {
        true => serde_json::to_string_pretty(&report).context("cannot write the report")? + "\n",
        false => text(&report),
    };
    std::io::stdout()
        .lock()
        .write_all(out.as_bytes())
        .context("cannot write to standard output")?;
    Ok(match report.launch {
        Some(Launch { allowed: false, .. }) => REFUSED,
        _ => 0,
    })
}

async fn survey(cloud: &Cloud, plan: &Plan) -> Result<Report> {
    let found = cloud.find_owned(&plan.ownership).await?;
    // A run opens tcp/22 only in a group of its own (and then asks checkip); an admin-made
    // group is used as it is.
    let own_group = match &found {
        Some(instance) => instance.security_group.is_some(),
        None => plan.launch.security_group.is_none(),
    };
    let (ssh_cidr, ssh_cidr_from) = match (&plan.ingress, own_group) {
        (_, false) => (
            "its security group's own rules".to_string(),
            "an admin-made group, used as it is: ssh-ec2 opens nothing".to_string(),
        ),
        (Ingress::Cidr(cidr), true) => (cidr.to_string(), "the SSH CIDR setting".to_string()),
        (Ingress::CallerIp { checkip_url }, true) => (
            ingress_cidr(&plan.ingress).await?.to_string(),
            format!("this machine's public IP, as {checkip_url} sees it"),
        ),
    };
    let sync = match &plan.sync {
        Some(sync) => {
            let (files, bytes) = crate::sync::first_push_size(sync, &plan.local_dir).await?;
            Some(SyncSize { files, bytes })
        }
        None => None,
    };
    let price = match &found {
        Some(instance) => {
            let zone = instance.zone.as_deref();
            price::hourly(cloud, &instance.instance_type, instance.spot, zone).await
        }
        None => {
            let spot = plan.launch.spot.is_some();
            price::hourly(cloud, &plan.launch.instance_type, spot, None).await
        }
    };
    let (reuse, launch) = match found {
        Some(instance) => (
            Some(Reused {
                id: instance.id.clone(),
                state: instance.state.as_str().to_string(),
                instance_type: instance.instance_type.clone(),
            }),
            None,
        ),
        None => (None, Some(preview_launch(cloud, plan).await?)),
    };
    Ok(Report {
        region: cloud.region.clone(),
        directory: plan.local_dir.display().to_string(),
        remote_dir: plan.remote_dir.to_string(),
        command: plan.command.clone(),
        reuse,
        launch,
        ssh_cidr,
        ssh_cidr_from,
        connect: plan.connect.as_ref().map(ToString::to_string),
        end_of_life: plan.end_of_life.to_string(),
        lifetime: plan.watchdog.describe(),
        spot: plan.launch.spot.as_ref().map(|spot| spot.max_price.clone()),
        sync,
        price,
    })
}

/// What `fleet::launch` would launch, resolved the same way, and whether AWS would allow it.
async fn preview_launch(cloud: &Cloud, plan: &Plan) -> Result<Launch> {
    let spec = &plan.launch;
    let resolved = fleet::resolve(cloud, spec).await?;
    let zones = resolved.zones();
    let Resolved {
        mut types,
        vpc,
        admin_group: security_group,
        ..
    } = resolved;
    let (instance_type, image) = types.swap_remove(0);
    let user = fleet::launch_user(plan, &image);
    let login_key = match &plan.login {
        LoginKey::PerRun => Some(MADE_AT_LAUNCH),
        LoginKey::KeyPair { .. } => None,
    };
    let user_data = UserData {
        host_private_openssh: ELIDED_HOST_KEY,
        host_public_openssh: MADE_AT_LAUNCH,
        authorized_key: login_key,
        extra_commands: spec.extra_boot_commands.as_deref(),
        watchdog: &plan.watchdog,
    }
    .render();
    let asked = cloud
        .may_launch(&LaunchRequest {
            image: &image,
            instance_type: &spec.instance_type,
            user_data: &user_data,
            // Without an admin-made group, the VPC's default group stands in for its own.
            security_group: security_group.as_deref(),
            own_group: false,
            login_user: &user,
            subnet_id: spec.subnets.first().map(String::as_str),
            key_name: plan.login.key_pair_name(),
            instance_profile: spec.instance_profile.as_deref(),
            volume_size: spec.volume_size,
            tags: &spec.tags,
            client_token: &format!("ssh-ec2-dry-run-{}", std::process::id()),
            launch_id: "dry-run",
            expires_at: plan.watchdog.expires_at().as_deref(),
            spot: spec.spot.as_ref().map(|spot| spot.max_price.as_deref()),
        })
        .await;
    // Throttled, failing inside AWS, or no answer: that is no verdict on the launch.
    let asked = match asked {
        Err(e)
            if e.downcast_ref::<AwsError>()
                .is_some_and(|aws| aws.inconclusive) =>
        {
            return Err(e.context("AWS gave no verdict on the launch: try again"));
        }
        asked => asked,
    };
    Ok(Launch {
        image_id: image.id.clone(),
        image_name: image.name.clone(),
        user,
        instance_type,
        fallback_types: spec.fallback_types.clone(),
        vpc,
        security_group,
        subnets: spec.subnets.clone(),
        zones,
        volume_gib: root_volume_gib(plan, &image),
        instance_profile: spec.instance_profile.clone(),
        user_data,
        allowed: asked.is_ok(),
        refusal: asked.as_ref().err().map(|e| format!("{e:#}")),
        refusal_lines: asked
            .err()
            .iter()
            .flat_map(|e| e.chain())
            .flat_map(|cause| {
                let cause = cause.to_string();
                cause
                    .lines()
                    .map(|l| l.trim().to_string())
                    .collect::<Vec<_>>()
            })
            .collect(),
    })
}

fn text(report: &Report) -> String {
    let mut out = String::from("Dry run: nothing was created, started or changed.\n\n");
    let mut row = |label: &str, value: &str| {
        let _ = writeln!(out, "{label:<17} {value}");
    };
    row("region", &report.region);
    row("directory", &report.directory);
    row("remote directory", &report.remote_dir);
    row(
        "command",
        report.command.as_deref().unwrap_or("(a login shell)"),
    );
    if let Some(reused) = &report.reuse {
        row(
            "instance",
            &format!(
                "{} ({}, {}): this directory's, reused{}",
                reused.id,
                reused.instance_type,
                reused.state,
                match reused.state.as_str() {
                    "stopped" | "stopping" => " (started first)",
                    _ => "",
                }
            ),
        );
    }
    if let Some(launch) = &report.launch {
        row("instance", "none yet for this directory: one is launched");
        row(
            "image",
            &format!(
                "{} \"{}\" (login user {})",
                launch.image_id, launch.image_name, launch.user
            ),
        );
        row("instance type", &describe_type(&launch.instance_type));
        if !launch.fallback_types.is_empty() {
            row("fallback types", &launch.fallback_types.join(", "));
        }
        let place = match (launch.subnets.as_slice(), launch.zones.as_slice()) {
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
        };
        row("subnet", &place);
        row(
            "security group",
            &match &launch.security_group {
                Some(id) => format!("{id} (admin-made, used as it is)"),
                None => "its own, made at launch, removed with it".to_string(),
            },
        );
        row(
            "root volume",
            &launch
                .volume_gib
                .map_or("the image's".to_string(), |gib| format!("{gib} GiB gp3")),
        );
        row(
            "instance profile",
            launch
                .instance_profile
                .as_deref()
                .unwrap_or("(none: no AWS rights on the instance)"),
        );
    }
    row(
        "SSH allowed from",
        &format!("{} ({})", report.ssh_cidr, report.ssh_cidr_from),
    );
    if let Some(connect) = &report.connect {
        row("connect to", connect);
    }
    row("end of life", &report.end_of_life);
    row("lifetime", &report.lifetime);
    if let Some(max_price) = &report.spot {
        row(
            "market",
            &format!(
                "spot, up to {}",
                max_price
                    .as_deref()
                    .map_or("the on-demand price".into(), |p| format!("${p}/hour"))
            ),
        );
    }
    row(
        "sync",
        &match &report.sync {
            Some(size) => format!(
                "{} files, {} (at most: what the instance has already is not sent again)",
                size.files,
                bytes(size.bytes)
            ),
            None => "none (--no-rsync)".to_string(),
        },
    );
    row(
        "price",
        &match &report.price {
            Some(hourly) => hourly.to_string(),
            None => "price unknown".to_string(),
        },
    );
    if let Some(launch) = &report.launch {
        match launch.allowed {
            true => row(
                "AWS allows it",
                "yes (RunInstances with DryRun answered DryRunOperation)",
            ),
            false => {
                row("AWS allows it", "NO");
                for line in &launch.refusal_lines {
                    let _ = writeln!(out, "  {line}");
                }
            }
        }
        out.push_str("\nuser-data, secrets elided:\n");
        for line in launch.user_data.lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

/// "4 vCPUs, 16 GiB memory, 1 × NVIDIA T4 (16 GiB)".
fn describe_type(info: &TypeInfo) -> String {
    let mut parts = Vec::new();
    if let Some(vcpus) = info.vcpus {
        parts.push(format!("{vcpus} vCPUs"));
    }
    if let Some(mib) = info.memory_mib {
        parts.push(format!("{} memory", bytes(mib.max(0) as u64 * 1024 * 1024)));
    }
    for gpu in &info.gpus {
        let memory = gpu.memory_mib.map_or(String::new(), |mib| {
            format!(" ({} each)", bytes(mib.max(0) as u64 * 1024 * 1024))
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

fn bytes(count: u64) -> String {
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

#[cfg(test)]
mod tests {
    use super::bytes;

    #[test]
    fn sizes_read_like_sizes() {
        assert_eq!(bytes(12), "12 bytes");
        assert_eq!(bytes(16 * 1024 * 1024 * 1024), "16 GiB");
        assert_eq!(bytes(1536), "1.5 KiB");
    }
}
