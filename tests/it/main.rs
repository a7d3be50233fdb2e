//! The integration tests, as one binary: each module is one area of ssh-ec2, run end to end
//! against the simulated cloud of `common` (tests/testbed). One binary links the AWS SDK once.

mod common;

mod admin;
mod cli;
mod everyday;
mod examples;
mod faults;
mod fleet;
mod forward;
mod jobs;
mod machines;
mod reuse;
mod run;
mod settings;
mod shared;
mod signals;
mod spot;
mod sync;
mod terminal;
mod tryit;
mod watchdog;
