//! What an instance costs: the hourly price of a type in a region (for a spot instance the
//! current spot price; else, or when that is unknown, on demand from the AWS Price List, else
//! from the price table shipped with ssh-ec2, `data/prices.toml`, read at build time, with its
//! date), and a run's cost from it. A price that is not known is said so; it never stops a run.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cloud::Cloud;

const TABLE: &str = include_str!("../data/prices.toml");
/// AWS prorates monthly storage prices over 730 hours.
const HOURS_PER_MONTH: f64 = 730.0;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    as_of: String,
    ebs_gp3_gb_month: BTreeMap<String, f64>,
    on_demand: BTreeMap<String, BTreeMap<String, f64>>,
}

static PRICES: LazyLock<Table> = LazyLock::new(|| {
    toml::from_str(TABLE).expect("data/prices.toml parses (a unit test checks it)")
});

/// An hourly price, and where it comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hourly {
    pub usd: f64,
    pub source: String,
}

impl fmt::Display for Hourly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/hour ({})", usd(self.usd), self.source)
    }
}

/// What an hour of `instance_type` costs in `cloud`'s region: for a `spot` instance the spot
/// price now (in `zone` when known, else the lowest across zones), else or failing that the
/// on-demand price.
pub async fn hourly(
    cloud: &Cloud,
    instance_type: &str,
    spot: bool,
    zone: Option<&str>,
) -> Option<Hourly> {
    if spot && let Some((usd, zone)) = cloud.spot_price(instance_type, zone).await {
        return Some(Hourly {
            usd,
            source: format!("spot in {zone}, EC2's current spot price"),
        });
    }
    let on_demand = match cloud.on_demand_price(instance_type).await {
        Some(usd) => Some(Hourly {
            usd,
            source: "on demand, AWS Price List".to_string(),
        }),
        None => from_table(instance_type, &cloud.region),
    };
    match spot {
        true => on_demand.map(|hourly| Hourly {
            source: format!("spot price unknown: {}", hourly.source),
            ..hourly
        }),
        false => on_demand,
    }
}

/// The on-demand price of `instance_type` in `region`, if the shipped table has it.
fn from_table(instance_type: &str, region: &str) -> Option<Hourly> {
    let prices = &*PRICES;
    let usd = *prices.on_demand.get(region)?.get(instance_type)?;
    Some(Hourly {
        usd,
        source: format!("on demand, ssh-ec2's price table of {}", prices.as_of),
    })
}

/// The line said before a launch: the type's hourly price here, or that it is unknown.
pub fn price_line(hourly: Option<&Hourly>, instance_type: &str, region: &str) -> String {
    match hourly {
        Some(hourly) => format!("{instance_type} in {region}: {hourly}"),
        None => format!("{instance_type} in {region}: {}", unknown()),
    }
}

fn unknown() -> String {
    format!(
        "price unknown (no answer from the AWS Price List, and not in ssh-ec2's price table of \
         {}; see the EC2 pricing page)",
        PRICES.as_of
    )
}

/// What an instance of `instance_type` costs for `elapsed`, with its EBS volume of
/// `volume_gib` (gp3) when known, for the summary line.
pub fn run_cost(
    hourly: Option<&Hourly>,
    instance_type: &str,
    region: &str,
    elapsed: Duration,
    volume_gib: Option<u32>,
) -> String {
    let Some(hourly) = hourly else {
        return format!("cost unknown ({instance_type} in {region}: {})", unknown());
    };
    let hours = elapsed.as_secs_f64() / 3600.0;
    let compute = hourly.usd * hours;
    let storage = volume_gib.and_then(|gib| {
        let rate = PRICES.ebs_gp3_gb_month.get(region)?;
        Some((gib, f64::from(gib) * rate * hours / HOURS_PER_MONTH))
    });
    match storage {
        Some((gib, storage)) => format!(
            "about {} ({} instance at {}/hour + {} for its {gib} GiB volume)",
            usd(compute + storage),
            usd(compute),
            usd(hourly.usd),
            usd(storage)
        ),
        None => format!(
            "about {} (instance at {}/hour; its volume not counted)",
            usd(compute),
            usd(hourly.usd)
        ),
    }
}

/// What a stopped instance goes on costing: its EBS volume (gp3), by the month.
pub fn stopped_cost(region: &str, volume_gib: Option<u32>) -> Option<String> {
    let gib = volume_gib?;
    let rate = PRICES.ebs_gp3_gb_month.get(region)?;
    Some(format!(
        "while stopped, its {gib} GiB volume costs about {}/month (`ssh-ec2 --down` here ends it)",
        usd(f64::from(gib) * rate)
    ))
}

/// Dollars, with the digits a small amount needs.
fn usd(amount: f64) -> String {
    match amount {
        a if a >= 1.0 => format!("${a:.2}"),
        a => format!("${a:.4}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_table_parses_and_prices_a_run() {
        assert!(!PRICES.as_of.is_empty());
        for (region, types) in &PRICES.on_demand {
            assert!(
                PRICES.ebs_gp3_gb_month.contains_key(region),
                "{region} has no EBS price"
            );
            assert!(types.values().all(|&p| p > 0.0));
        }
        let hourly = from_table("g4dn.xlarge", "us-east-1").unwrap();
        assert_eq!(hourly.usd, 0.526);
        assert!(hourly.to_string().starts_with("$0.5260/hour (on demand, "));
        assert_eq!(from_table("g4dn.xlarge", "mars-north-1"), None);
        assert!(price_line(None, "x9.huge", "us-east-1").contains("price unknown"));
        // Two hours of a g4dn.xlarge with 100 GiB: 1.052 + 100 * 0.08 * 2 / 730.
        let cost = run_cost(
            Some(&hourly),
            "g4dn.xlarge",
            "us-east-1",
            Duration::from_secs(7200),
            Some(100),
        );
        assert!(cost.starts_with("about $1.07 ($1.05 instance"), "{cost}");
        assert!(run_cost(None, "x9.huge", "us-east-1", Duration::ZERO, None).contains("unknown"));
        let stopped = stopped_cost("us-east-1", Some(100)).unwrap();
        assert!(
            stopped.contains("100 GiB volume costs about $8.00/month"),
            "{stopped}"
        );
        assert_eq!(stopped_cost("us-east-1", None), None);
    }
}
