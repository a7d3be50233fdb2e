//! The main run, end to end: launch, sync, run, pull back, terminate. One module a theme.

mod boot_and_end;
mod command;
mod files;
mod launch;
