//! What an instance costs: the hourly price of a type in a region (for a spot instance the
//! current spot price; else, or when that is unknown, on demand from the AWS Price List, else
//! from the price table shipped with ssh-ec2, `data/prices.toml`, read at build time, with its
//! date), and a run's cost from it. A price that is not known is said so; it never stops a run.
//! What AWS answered is kept in the state directory for a while (`state::known`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cloud::Cloud;
use crate::state::known::{Known, PRICE_AGE, SPOT_PRICE_AGE};

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
/// on-demand price. What AWS said is kept (`Known`): a price is asked once a day (a spot price
/// once an hour), not before and after every run.
pub async fn hourly(
    cloud: &Cloud,
    known: &Known,
    instance_type: &str,
    spot: bool,
    zone: Option<&str>,
) -> Option<Hourly> {
    if spot && let Some((usd, zone)) = spot_price(cloud, known, instance_type, zone).await {
        return Some(Hourly {
            usd,
            source: format!("spot in {zone}, EC2's current spot price"),
        });
    }
    let on_demand = match on_demand_price(cloud, known, instance_type).await {
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

/// The Price List's answer (`None`: no price from it, for a day too), kept or asked.
async fn on_demand_price(cloud: &Cloud, known: &Known, instance_type: &str) -> Option<f64> {
    let key = format!("price/{}/{instance_type}", cloud.region);
    if let Some(usd) = known.get(&key, PRICE_AGE) {
        return usd;
    }
    let usd = cloud.on_demand_price(instance_type).await;
    known.put(&key, &usd);
    usd
}

/// EC2's spot price and its zone (`None`: it did not say), kept or asked.
async fn spot_price(
    cloud: &Cloud,
    known: &Known,
    instance_type: &str,
    zone: Option<&str>,
) -> Option<(f64, String)> {
    let key = format!(
        "spot/{}/{instance_type}/{}",
        cloud.region,
        zone.unwrap_or("any zone")
    );
    if let Some(price) = known.get(&key, SPOT_PRICE_AGE) {
        return price;
    }
    let price = cloud.spot_price(instance_type, zone).await;
    known.put(&key, &price);
    price
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

/// What `nodes` instances of `instance_type` (one, or a cluster's) cost for `elapsed`, with
/// each one's EBS volume of `volume_gib` (gp3) when known, for the summary line.
pub fn run_cost(
    hourly: Option<&Hourly>,
    instance_type: &str,
    region: &str,
    elapsed: Duration,
    volume_gib: Option<u32>,
    nodes: u32,
) -> String {
    let Some(hourly) = hourly else {
        return format!("cost unknown ({instance_type} in {region}: {})", unknown());
    };
    let hours = elapsed.as_secs_f64() / 3600.0 * f64::from(nodes);
    let compute = hourly.usd * hours;
    let storage = volume_gib.and_then(|gib| {
        let rate = PRICES.ebs_gp3_gb_month.get(region)?;
        Some((gib, f64::from(gib) * rate * hours / HOURS_PER_MONTH))
    });
    let (instances, each, volumes) = match nodes {
        1 => ("instance".to_string(), "", "its"),
        n => (format!("for {n} instances"), " each", "their"),
    };
    match storage {
        Some((gib, storage)) => format!(
            "about {} ({} {instances} at {}/hour{each} + {} for {volumes} {gib} GiB volume{})",
            usd(compute + storage),
            usd(compute),
            usd(hourly.usd),
            usd(storage),
            if nodes == 1 { "" } else { "s" }
        ),
        None => format!(
            "about {} ({instances} at {}/hour{each}; {volumes} volumes not counted)",
            usd(compute),
            usd(hourly.usd)
        ),
    }
}

/// What `nodes` stopped instances go on costing: their EBS volumes (gp3), by the month.
pub fn stopped_cost(region: &str, volume_gib: Option<u32>, nodes: u32) -> Option<String> {
    let gib = volume_gib?;
    let rate = PRICES.ebs_gp3_gb_month.get(region)?;
    let volumes = match nodes {
        1 => format!("its {gib} GiB volume costs"),
        n => format!("their {n} volumes of {gib} GiB cost"),
    };
    Some(format!(
        "while stopped, {volumes} about {}/month (`ssh-ec2 --down` here ends {})",
        usd(f64::from(gib) * rate * f64::from(nodes)),
        if nodes == 1 { "it" } else { "them" }
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
            1,
        );
        assert!(cost.starts_with("about $1.07 ($1.05 instance"), "{cost}");
        let unknown = run_cost(None, "x9.huge", "us-east-1", Duration::ZERO, None, 1);
        assert!(unknown.contains("unknown"));
        let stopped = stopped_cost("us-east-1", Some(100), 1).unwrap();
        assert!(
            stopped.contains("100 GiB volume costs about $8.00/month"),
            "{stopped}"
        );
        assert_eq!(stopped_cost("us-east-1", None, 1), None);
    }

    #[test]
    fn a_cluster_costs_its_nodes_together() {
        let hourly = from_table("g4dn.xlarge", "us-east-1").unwrap();
        let hours = Duration::from_secs(7200);
        let cost = run_cost(
            Some(&hourly),
            "g4dn.xlarge",
            "us-east-1",
            hours,
            Some(100),
            4,
        );
        assert!(
            cost.starts_with("about $4.30 ($4.21 for 4 instances at $0.5260/hour each")
                && cost.ends_with("for their 100 GiB volumes)"),
            "{cost}"
        );
        let stopped = stopped_cost("us-east-1", Some(100), 4).unwrap();
        assert!(
            stopped.contains("their 4 volumes of 100 GiB cost about $32.00/month"),
            "{stopped}"
        );
    }
}
