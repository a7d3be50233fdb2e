//! `ssh-ec2 --list [--json] [--all-regions]`: this owner's instances, from every machine and
//! directory, with their job's state when this machine can ask (it runs and its keys are here).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cloud::{Cloud, Owned, State};
use crate::fleet::{self, Skipped};
use crate::interrupt::Interrupt;
use crate::plan::FleetPlan;
use crate::price;
use crate::printer::{Printer, format_duration};
use crate::remote::job::{Job, JobState};
use crate::session::{job_state, ssh_address};
use crate::ssh::{Session, Target};
use crate::state::Store;
use crate::status::ExitStatus;

/// How long a listing waits for one instance's SSH: a listing must stay quick, and an
/// instance that does not answer by then is "unknown".
const ASK_TIMEOUT: Duration = Duration::from_secs(8);

/// One line of the listing; the JSON form is the same fields.
#[derive(Serialize)]
struct Row {
    /// The instance, or a cluster's head.
    id: String,
    /// Every instance of it: the one, or the cluster's nodes in rank order.
    instances: Vec<String>,
    region: String,
    directory: Option<String>,
    host: Option<String>,
    state: &'static str,
    #[serde(rename = "type")]
    instance_type: String,
    /// "spot" or "on-demand".
    market: &'static str,
    launched: Option<String>,
    /// While it runs: how long since it last started, and what that has cost (every node).
    running_for_seconds: Option<u64>,
    cost_usd: Option<f64>,
    expires_at: Option<String>,
    /// This machine holds its keys (so it can reach it).
    keys_here: bool,
    /// `none`, `running (tmux)`, `ended (exit N)`, `lost` or `unknown`; `null` when it is not
    /// running or its keys are not here.
    job: Option<String>,
}

pub async fn list(
    plan: &FleetPlan,
    printer: &Printer,
    json: bool,
    all_regions: bool,
) -> Result<ExitStatus> {
    let cloud = Cloud::connect(&plan.account).await;
    let store = Store::new(&plan.dirs.root);
    // It only looks: a signal ends it at once.
    let (rows, skipped) = Interrupt::install()?
        .cancel(rows(&cloud, &store, plan, printer, all_regions))
        .await?;
    if json {
        let text = serde_json::to_string_pretty(&rows).context("cannot encode the listing")?;
        printer.out(text + "\n")?;
    } else if rows.is_empty() {
        let place = match all_regions {
            true => "any enabled region".to_string(),
            false => cloud.region.clone(),
        };
        printer.info(&format!("no instance of {} in {place}", plan.owner.name));
    } else {
        printer.out(table(&rows))?;
    }
    skipped.check()?;
    Ok(ExitStatus::Success)
}

async fn rows(
    cloud: &Cloud,
    store: &Store,
    plan: &FleetPlan,
    printer: &Printer,
    all_regions: bool,
) -> Result<(Vec<Row>, Skipped)> {
    let (owned, skipped) = fleet::owner_instances(cloud, &plan.owner, all_regions, printer).await?;
    let mut rows = Vec::new();
    for nodes in fleet::machines(owned) {
        let instances: Vec<String> = nodes.iter().map(|o| o.instance.id.clone()).collect();
        let owned = nodes.into_iter().next().expect("a machine has a node");
        let keys_here = store.holds(&owned.instance.id);
        let job = match owned.instance.state == State::Running && keys_here {
            true => Some(ask_job(plan, store, &owned, printer).await),
            false => None,
        };
        let running_for = (owned.instance.state == State::Running)
            .then(|| owned.instance.running_since?.elapsed().ok())
            .flatten();
        let cost_usd = match (running_for, owned.region == cloud.region) {
            (Some(running_for), true) => {
                let instance = &owned.instance;
                let zone = instance.zone.as_deref();
                let known = store.known();
                let hourly =
                    price::hourly(cloud, &known, &instance.instance_type, instance.spot, zone);
                let nodes = instances.len() as f64;
                (hourly.await).map(|h| h.usd * running_for.as_secs_f64() / 3600.0 * nodes)
            }
            _ => None,
        };
        rows.push(Row {
            id: owned.instance.id.clone(),
            instances,
            region: owned.region,
            directory: owned.dir,
            host: owned.host,
            state: owned.instance.state.as_str(),
            instance_type: owned.instance.instance_type,
            market: if owned.instance.spot {
                "spot"
            } else {
                "on-demand"
            },
            launched: owned.launched,
            running_for_seconds: running_for.map(|d| d.as_secs()),
            cost_usd,
            expires_at: owned.expires_at,
            keys_here,
            job,
        });
    }
    Ok((rows, skipped))
}

/// The job's state in the instance's directory, over a pinned session; `unknown` when the
/// instance does not answer in time.
async fn ask_job(plan: &FleetPlan, store: &Store, owned: &Owned, printer: &Printer) -> String {
    let asked = async {
        let id = &owned.instance.id;
        let dir = owned.dir.as_deref().context("no directory tag")?;
        let target = Target {
            address: ssh_address(&plan.dial, &owned.instance)?,
            // Not this directory's user setting: the instance may be another directory's.
            user: fleet::recorded_user(&owned.instance),
            keys: store.load(id, &plan.login)?,
            via: None,
            held: None,
        };
        let phase = printer.phase(format!("asking {id} for its job"));
        let session = Session::connect(&target, Instant::now() + ASK_TIMEOUT, &phase).await?;
        let state = job_state(&session, &Job::for_dir(Path::new(dir))).await;
        session.close().await;
        state
    };
    match tokio::time::timeout(ASK_TIMEOUT * 2, asked).await {
        Ok(Ok(state)) => describe(&state),
        Ok(Err(e)) => {
            tracing::debug!("job of {}: {e:#}", owned.instance.id);
            "unknown".into()
        }
        Err(_) => "unknown".into(),
    }
}

fn describe(state: &JobState) -> String {
    match state {
        JobState::None => "none".into(),
        JobState::Running(multiplexer) => format!("running ({multiplexer})"),
        JobState::Ended(_, status) => format!("ended (exit {status})"),
        JobState::Lost(_) => "lost".into(),
        JobState::Interrupted(_) => "interrupted (spot)".into(),
    }
}

/// Aligned columns, the directory last (it is the longest).
fn table(rows: &[Row]) -> String {
    let dash = || "-".to_string();
    let cells: Vec<[String; 12]> = rows
        .iter()
        .map(|r| {
            [
                r.instances.join(","),
                r.region.clone(),
                r.state.into(),
                r.instance_type.clone(),
                r.market.into(),
                r.launched.clone().unwrap_or_else(dash),
                cost(r).unwrap_or_else(dash),
                r.expires_at.clone().unwrap_or_else(dash),
                if r.keys_here { "yes" } else { "no" }.into(),
                r.job.clone().unwrap_or_else(dash),
                r.host.clone().unwrap_or_else(dash),
                r.directory.clone().unwrap_or_else(dash),
            ]
        })
        .collect();
    let header = [
        "INSTANCE",
        "REGION",
        "STATE",
        "TYPE",
        "MARKET",
        "LAUNCHED",
        "COST SO FAR",
        "EXPIRES",
        "KEYS",
        "JOB",
        "HOST",
        "DIRECTORY",
    ]
    .map(str::to_string);
    let mut widths = header.clone().map(|h| h.len());
    for line in &cells {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for line in std::iter::once(&header).chain(&cells) {
        let last = line.len() - 1;
        for (i, (cell, width)) in line.iter().zip(widths).enumerate() {
            match i == last {
                true => text.push_str(cell),
                false => text.push_str(&format!("{cell:width$}  ")),
            }
        }
        text.push('\n');
    }
    text
}

/// "$1.23 (2h05m)": what a running instance (or cluster) has cost since it last started.
fn cost(row: &Row) -> Option<String> {
    let running_for = Duration::from_secs(row.running_for_seconds?);
    let usd = match row.cost_usd {
        Some(usd) => format!("${usd:.2}"),
        None => "$?".to_string(),
    };
    Some(format!("{usd} ({})", format_duration(running_for)))
}
