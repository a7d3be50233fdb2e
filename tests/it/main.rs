//! The integration tests, as one binary: each module is one area of ssh-ec2, run end to end
//! against the simulated cloud of `common` (tests/testbed). One binary links the AWS SDK once.

mod common;

mod admin;
mod boundaries;
mod cli;
mod cluster;
mod docs;
mod earlier;
mod env;
mod everyday;
mod examples;
mod faults;
mod fleet;
mod forward;
mod gc_keys;
mod held;
mod host_keys;
mod jobs;
mod logs;
mod machines;
mod parts;
mod policies;
mod release;
mod reuse;
mod round_trips;
mod run;
mod settings;
mod shared;
mod signals;
mod spot;
mod stalls;
mod sync;
mod terminal;
mod trust_results;
mod trust_sync;
mod tryit;
mod warm;
mod watchdog;
mod watched;
