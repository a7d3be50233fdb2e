//! The run's last line: the instance (a cluster's head and how many others), how long, its
//! fate, and what it cost.

use std::time::{Instant, SystemTime};

use super::Scene;
use crate::fleet::Machine;
use crate::fleet::end_of_life::Origin;
use crate::printer::format_duration;
use crate::settings::values::EndOfLife;

/// What the summary's time and cost cover: a run its own, `--finish` and `--down` the instance's
/// life so far (since it last started), which is what the bill shows.
#[derive(Debug, Clone, Copy)]
pub enum Span {
    Run(Instant),
    Life(Instant),
}

impl Span {
    /// The life of `machine` when it was found running, else from `started` on.
    pub fn life(machine: &Machine, started: Instant) -> Span {
        let since = machine.head().instance.running_since;
        let age = since.and_then(|since| SystemTime::now().duration_since(since).ok());
        match (
            machine.origin,
            age.and_then(|age| Instant::now().checked_sub(age)),
        ) {
            (Origin::FoundRunning, Some(since)) => Span::Life(since),
            _ => Span::Run(started),
        }
    }

    fn describe(self) -> String {
        match self {
            Span::Run(started) => format_duration(started.elapsed()),
            Span::Life(since) => format!("{} since it started", format_duration(since.elapsed())),
        }
    }

    fn elapsed(self) -> std::time::Duration {
        match self {
            Span::Run(since) | Span::Life(since) => since.elapsed(),
        }
    }
}

/// The run's last line: the instance (a cluster's head and how many others), how long, its
/// fate, and what it cost.
pub(super) async fn say_summary(scene: &Scene<'_>, ended: bool, action: EndOfLife, span: Span) {
    let Scene { cloud, machine, .. } = *scene;
    let instance = &machine.head().instance;
    let nodes = machine.nodes.len() as u32;
    let what = match nodes {
        1 => instance.id.clone(),
        2 => format!("{} and its other node", instance.id),
        n => format!("{} and its {} other nodes", instance.id, n - 1),
    };
    let elapsed = span.elapsed();
    let hourly = crate::price::hourly(
        cloud,
        &scene.store.known(),
        &instance.instance_type,
        instance.spot,
        instance.zone.as_deref(),
    )
    .await;
    let stopped = match (ended, action) {
        (true, EndOfLife::Stop) => {
            crate::price::stopped_cost(&cloud.region, machine.volume_gib, nodes)
                .map(|cost| format!("; {cost}"))
        }
        _ => None,
    };
    scene.printer.info(&format!(
        "{what} ({}, {}): {}, {}, {}{}",
        instance.instance_type,
        cloud.region,
        span.describe(),
        fate(ended, action),
        crate::price::run_cost(
            hourly.as_ref(),
            &instance.instance_type,
            &cloud.region,
            elapsed,
            machine.volume_gib,
            nodes,
        ),
        stopped.unwrap_or_default(),
    ));
}

fn fate(ended: bool, action: EndOfLife) -> &'static str {
    match (ended, action) {
        (false, _) => "end of life failed",
        (true, EndOfLife::Terminate) => "terminated",
        (true, EndOfLife::Stop) => "stopped",
        (true, EndOfLife::Leave) => "left running",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use EndOfLife::{Leave, Stop, Terminate};

    #[test]
    fn the_summary_says_the_fate() {
        assert_eq!(fate(true, Terminate), "terminated");
        assert_eq!(fate(true, Leave), "left running");
        assert_eq!(fate(false, Stop), "end of life failed");
    }
}
