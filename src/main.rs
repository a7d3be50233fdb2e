//! ssh-ec2: run a command on a throw-away AWS EC2 machine as if it were local.
//!
//! The story, from the top: `cli` (the flags, made into one mode and a settings layer) →
//! `settings` (files < preset < `.env` < environment < flags, with defaults) → `plan` (what a
//! mode needs, resolved and validated) → `commands` (one thin file per mode) → `session` (a
//! run's lifecycle on its machine: reach, lease, job, pull, end of run) → `fleet` (find,
//! launch, adopt, end of life) → `cloud` (AWS calls), `ssh` (the session, the command, forwards,
//! rsync's transport), `sync` (rsync and the manifest), `remote` (how things are spelled on the
//! instance) and `state` (what is kept on this machine). `main` maps the one `ExitStatus` to the
//! process's exit code.

mod cli;
mod cloud;
mod commands;
mod fleet;
mod interrupt;
mod plan;
mod poll;
mod price;
mod printer;
mod remote;
mod session;
mod settings;
mod ssh;
mod state;
mod status;
mod sync;

use std::io::Write;
use std::process::ExitCode;

use crate::printer::{Printer, Verbosity};
use crate::status::ExitStatus;

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == ssh::relay::TRANSPORT_FLAG) {
        return exit(ssh::transport::transport_main(&args[2..]));
    }
    if args
        .get(1)
        .is_some_and(|a| a == fleet::release::HELPER_FLAG)
    {
        return exit(fleet::release::helper_main(&args[2..]));
    }
    if args.get(1).is_some_and(|a| a == ssh::held::HOLDER_FLAG) {
        return exit(ssh::held::holder_main(&args[2..]));
    }
    let request = match cli::parse(&args) {
        Ok(request) => request,
        Err(e) => {
            let _ = e.print();
            return exit(match e.use_stderr() {
                true => ExitStatus::Failed,
                false => ExitStatus::Success,
            });
        }
    };
    init_debug_logs(request.verbosity);
    let printer = Printer::new(request.verbosity);
    let status = match commands::start(request, &printer) {
        Ok(status) => status,
        Err(e) => {
            let (status, say) = ExitStatus::of_error(&e);
            if say {
                printer.error(&e);
            }
            status
        }
    };
    exit(status)
}

/// Flushes first, so that the tail of the remote output is not lost.
fn exit(status: ExitStatus) -> ExitCode {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    ExitCode::from(status.code())
}

/// `-vv`: our debug logs and russh's info on stderr (RUST_LOG overrides).
fn init_debug_logs(verbosity: Verbosity) {
    if verbosity < Verbosity::Debug && std::env::var_os("RUST_LOG").is_none() {
        return;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("ssh_ec2=debug,russh=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
