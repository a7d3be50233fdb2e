//! The modes, one thin file each: `run` (also `--detach`), `attach`, `finish`, `logs` and `down`
//! on this directory's instance (their lifecycle is `session`'s); `list` and `gc` for what ssh-ec2
//! made anywhere; `dry_run` and `ssh_config`, which launch nothing; `setup`, for the admin;
//! `show_config` and `generate`, which stay local. Each resolves only what it needs (`plan`).

mod attach;
mod down;
mod dry_run;
mod finish;
mod gc;
mod generate;
mod list;
mod logs;
mod run;
mod setup;
mod show_config;
mod ssh_config;

use anyhow::{Context, Result};

use crate::cli::{FleetMode, InstanceMode, Mode, Request};
use crate::plan::{self, host::Host};
use crate::printer::Printer;
use crate::status::ExitStatus;

/// Runs the mode `request` asks for; gives the exit status to use.
pub fn start(request: Request, printer: &Printer) -> Result<ExitStatus> {
    match request.mode {
        // Works anywhere, with no settings and no rsync.
        Mode::Generate(what) => generate::generate(what, printer),
        Mode::ShowConfig => show_config::show_config(&request, &Host::detect()?, printer),
        Mode::Setup { dry_run } => {
            let values = plan::values(&request, &Host::detect()?)?;
            block_on(setup::setup(&values, dry_run, printer))
        }
        Mode::Fleet(mode) => {
            let host = Host::detect()?;
            let plan = plan::for_fleet(plan::values(&request, &host)?, &host)?;
            block_on(async {
                match mode {
                    FleetMode::List { json, all_regions } => {
                        list::list(&plan, printer, json, all_regions).await
                    }
                    FleetMode::Gc { yes, all_regions } => {
                        gc::gc(&plan, printer, yes, all_regions).await
                    }
                }
            })
        }
        Mode::Instance(mode) => {
            let host = Host::detect()?;
            let values = plan::values(&request, &host)?;
            let plan = plan::for_instance(mode, request, values, &host)?;
            block_on(async {
                match mode {
                    InstanceMode::Run => run::run(&plan, printer, false).await,
                    InstanceMode::Detach => run::run(&plan, printer, true).await,
                    InstanceMode::Attach { node } => attach::attach(&plan, printer, node).await,
                    InstanceMode::Logs { follow, node } => {
                        logs::logs(&plan, printer, follow, node).await
                    }
                    InstanceMode::Finish { attach } => finish::finish(&plan, printer, attach).await,
                    InstanceMode::Down { force } => down::down(&plan, printer, force).await,
                    InstanceMode::DryRun { json } => dry_run::dry_run(&plan, json, printer).await,
                    InstanceMode::SshConfig { install } => {
                        ssh_config::ssh_config(&plan, &host.home, install, printer).await
                    }
                }
            })
        }
    }
}

/// Runs an async mode on the process's one runtime.
fn block_on(mode: impl Future<Output = Result<ExitStatus>>) -> Result<ExitStatus> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let status = runtime.block_on(mode);
    // A blocked read of local stdin must not hold the exit.
    runtime.shutdown_background();
    status
}
