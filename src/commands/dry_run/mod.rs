//! `ssh-ec2 --dry-run [COMMAND]`: everything a run would decide, and its price, with nothing
//! created: read-only AWS calls, rsync's own --dry-run here, and RunInstances with EC2's DryRun
//! flag, which says whether AWS would allow the launch without launching anything.

mod text;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cloud::userdata::UserData;
use crate::cloud::{AwsError, Cloud, LaunchRequest, TypeInfo};
use crate::fleet::{self, Ingress, Resolved, ingress_cidr, root_volume_gib};
use crate::price::{self, Hourly};
use crate::printer::Printer;
use crate::session::Plan;
use crate::state::keys::LoginKey;
use crate::state::known::Known;
use crate::status::ExitStatus;

/// Stands for the generated keys, which a dry run does not make (and would never print).
const ELIDED_HOST_KEY: &str = "(elided: the instance's ed25519 host private key, made at launch)";
const MADE_AT_LAUNCH: &str = "(made at launch)";
#[derive(Serialize)]
pub(super) struct Report {
    region: String,
    directory: String,
    remote_dir: String,
    /// `None`: a login shell.
    command: Option<String>,
    /// The names of the variables the command would get (never their values).
    env: Vec<String>,
    /// This directory's instance, which the run would reuse (then nothing is launched).
    reuse: Option<Reused>,
    /// What would be launched, when there is no instance to reuse.
    launch: Option<Launch>,
    ssh_cidr: String,
    ssh_cidr_from: String,
    /// --connect: where ssh-ec2 would dial instead of the instance's address.
    connect: Option<String>,
    /// Which of the instance's addresses it would dial (without --connect).
    address: String,
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
pub(super) struct Reused {
    id: String,
    state: String,
    instance_type: String,
}

#[derive(Serialize)]
pub(super) struct Launch {
    /// How many instances: more than one is a cluster, in one zone.
    nodes: u32,
    /// A cluster's placement: a cluster placement group, or none (and why).
    placement: Option<String>,
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
pub(super) struct SyncSize {
    files: u64,
    bytes: u64,
}

pub async fn dry_run(plan: &Plan, json: bool, printer: &Printer) -> Result<ExitStatus> {
    let cloud = Cloud::connect(&plan.account).await;
    let report = match survey(&cloud, plan, printer).await {
        Ok(report) => report,
        Err(e) => return Err(cloud.explain_denial(e).await),
    };
    let out = match json {
        true => serde_json::to_string_pretty(&report).context("cannot write the report")? + "\n",
        false => text::text(&report, printer.verbose()),
    };
    printer.out(out)?;
    Ok(match report.launch {
        Some(Launch { allowed: false, .. }) => ExitStatus::Refused,
        _ => ExitStatus::Success,
    })
}

async fn survey(cloud: &Cloud, plan: &Plan, printer: &Printer) -> Result<Report> {
    let spec = &plan.machine;
    let known = Known::in_dir(&plan.dirs.root);
    let nodes = cloud.find_owned(&spec.ownership).await?;
    let found = nodes.first();
    // A run opens tcp/22 only in a group of its own (and then asks checkip); an admin-made
    // group is used as it is.
    let own_group = match found {
        Some(instance) => instance.security_group.is_some(),
        None => spec.launch.security_group.is_none(),
    };
    let (ssh_cidr, ssh_cidr_from) = match (&spec.ingress, own_group) {
        (_, false) => (
            "its security group's own rules".to_string(),
            "an admin-made group, used as it is: ssh-ec2 opens nothing".to_string(),
        ),
        (ingress, true) => {
            let from = match ingress {
                Ingress::Cidr(_) => "the SSH CIDR setting".to_string(),
                Ingress::CallerIp { checkip_url } => {
                    format!("this machine's public IP, as {checkip_url} sees it")
                }
            };
            (ingress_cidr(ingress, printer).await?.to_string(), from)
        }
    };
    let sync = match &plan.sync {
        Some(sync) => {
            let (files, bytes) = crate::sync::first_push_size(sync, &plan.local_dir).await?;
            Some(SyncSize { files, bytes })
        }
        None => None,
    };
    let price = match found {
        Some(instance) => {
            let zone = instance.zone.as_deref();
            price::hourly(cloud, &known, &instance.instance_type, instance.spot, zone).await
        }
        None => {
            let spot = spec.launch.spot.is_some();
            price::hourly(cloud, &known, &spec.launch.instance_type, spot, None).await
        }
    };
    let (reuse, launch) = match found {
        Some(instance) => (
            Some(Reused {
                id: (nodes.iter().map(|n| n.id.as_str()))
                    .collect::<Vec<_>>()
                    .join(", "),
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
        env: plan.env.names(),
        reuse,
        launch,
        ssh_cidr,
        ssh_cidr_from,
        connect: plan.reach.dial.connect.as_ref().map(ToString::to_string),
        address: plan.reach.dial.address.to_string(),
        end_of_life: spec.end_of_life.to_string(),
        lifetime: spec.watchdog.describe(spec.launch.spot.is_some()),
        spot: spec.launch.spot.as_ref().map(|spot| spot.max_price.clone()),
        sync,
        price,
    })
}

/// What `fleet::launch` would launch, resolved the same way, and whether AWS would allow it.
async fn preview_launch(cloud: &Cloud, plan: &Plan) -> Result<Launch> {
    let spec = &plan.machine.launch;
    let resolved = fleet::resolve(cloud, &Known::in_dir(&plan.dirs.root), spec).await?;
    let zones = resolved.zones();
    let Resolved {
        mut types,
        vpc,
        admin_group: security_group,
        ..
    } = resolved;
    let (instance_type, image) = types.swap_remove(0);
    let user = fleet::launch_user(&plan.machine, &image);
    let user_data = preview_user_data(plan);
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
            key_name: plan.machine.login.key_pair_name(),
            instance_profile: spec.instance_profile.as_deref(),
            volume_size: spec.volume_size,
            tags: &spec.tags,
            client_token: &format!("ssh-ec2-dry-run-{}", std::process::id()),
            launch_id: "dry-run",
            expires_at: plan.machine.watchdog.expiry_tag().as_deref(),
            spot: spec.spot.as_ref().map(|spot| spot.max_price.as_deref()),
            count: spec.nodes,
            // Neither exists before the launch: the request is asked without them.
            node_group: None,
            placement_group: None,
            efa: spec.efa,
        })
        .await;
    let asked = verdict(asked)?;
    let placement = (spec.nodes > 1).then(|| placement(&instance_type));
    Ok(Launch {
        nodes: spec.nodes,
        placement,
        image_id: image.id.clone(),
        image_name: image.name.clone(),
        user,
        instance_type,
        fallback_types: spec.fallback_types.clone(),
        vpc,
        security_group,
        subnets: spec.subnets.clone(),
        zones,
        volume_gib: root_volume_gib(&plan.machine, &image),
        instance_profile: spec.instance_profile.clone(),
        user_data,
        allowed: asked.is_ok(),
        refusal: asked.as_ref().err().map(|e| format!("{e:#}")),
        refusal_lines: asked.err().as_ref().map_or(Vec::new(), lines_of),
    })
}

/// The user-data a launch would pass, with the keys it would make elided.
fn preview_user_data(plan: &Plan) -> String {
    let login_key = match &plan.machine.login {
        LoginKey::PerRun => Some(MADE_AT_LAUNCH),
        LoginKey::KeyPair { .. } => None,
    };
    UserData {
        host_private_openssh: ELIDED_HOST_KEY,
        host_public_openssh: MADE_AT_LAUNCH,
        authorized_key: login_key,
        extra_commands: plan.machine.launch.extra_boot_commands.as_deref(),
        watchdog: &plan.machine.watchdog,
    }
    .render()
}

/// The DryRun launch's answer: allowed (`Ok`) or refused (`Err` inside), or an error when
/// AWS gave no verdict: throttled, failing inside AWS, or no answer.
fn verdict(asked: Result<()>) -> Result<Result<()>> {
    match asked {
        Err(e)
            if e.downcast_ref::<AwsError>()
                .is_some_and(|aws| aws.inconclusive) =>
        {
            Err(e.context("AWS gave no verdict on the launch: try again"))
        }
        asked => Ok(asked),
    }
}

/// A cluster's placement, for a cluster of `instance_type`.
fn placement(instance_type: &TypeInfo) -> String {
    match instance_type.cluster_placement {
        true => "a cluster placement group, made at launch".to_string(),
        false => format!(
            "none: {} takes no cluster placement group",
            instance_type.name
        ),
    }
}

/// An error's causes, one line each.
fn lines_of(error: &anyhow::Error) -> Vec<String> {
    error
        .chain()
        .flat_map(|cause| {
            let cause = cause.to_string();
            cause
                .lines()
                .map(|l| l.trim().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}
