//! ssh-ec2: run a command on a throw-away AWS EC2 machine as if it were local.
//!
//! The story, in order: `cli` (flags, and the mode they choose) → `config` (files < preset <
//! `.env` < environment < flags) → `plan` (validated) → `commands` (one file per mode):
//! `fleet` (find or launch the instance through `cloud`, and its end of life), `ssh` (the
//! session, the command, forwards, rsync's transport), `sync` (rsync and the manifest),
//! `remote` (how things are spelled on the instance: the command line, jobs, leases).

mod backoff;
mod cli;
mod cloud;
mod commands;
mod config;
mod dotenv;
mod fleet;
mod interrupt;
mod keys;
mod lock;
mod machine;
mod plan;
mod price;
mod printer;
mod remote;
mod ssh;
mod sync;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use crate::printer::{Printer, Verbosity};

/// ssh's convention for "ssh-ec2 itself failed", as opposed to the remote command.
const EXIT_FAILURE: u8 = 255;

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == ssh::relay::TRANSPORT_FLAG) {
        return exit(ssh::relay::transport_main(&args[2..]));
    }
    let cli = match cli::Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_FAILURE } else { 0 });
        }
    };
    let verbosity = Verbosity::from_flags(cli.quiet, cli.verbose);
    init_debug_logs(verbosity);
    let printer = Printer::new(verbosity);
    let code = match commands::start(&cli, &printer) {
        Ok(code) => code,
        Err(e) if e.is::<commands::AlreadyReported>() => EXIT_FAILURE.into(),
        Err(e) => {
            printer.error(&e);
            match e.downcast_ref::<interrupt::Interrupted>() {
                Some(interrupt::Interrupted(signal)) => signal.exit_code().into(),
                None => EXIT_FAILURE.into(),
            }
        }
    };
    exit(code)
}

/// Exit statuses are one byte; flush first so the tail of the remote output is not lost.
fn exit(code: i32) -> ExitCode {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    ExitCode::from(u8::try_from(code).unwrap_or(EXIT_FAILURE))
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
