//! What AWS says an instance costs now: the on-demand price from the AWS Price List and the
//! spot price from EC2's spot price history. A price is only shown, so each question is asked
//! once, briefly, and any failure is an unknown price (logged for `-vv`), never an error.
//! (`price` keeps the answers for a while.)

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_ec2::primitives::DateTime;
use aws_sdk_ec2::types::{Filter, InstanceType};
use aws_sdk_pricing::types::{Filter as PriceFilter, FilterType};
use serde_json::Value;

use super::{AwsResultExt, Cloud};

/// The Price List API is served from this region only, whichever region the instance is in.
pub const PRICE_LIST_REGION: &str = "us-east-1";

/// A run never waits longer than this for a price.
const PRICE_TIMEOUT: Duration = Duration::from_secs(3);

/// One attempt within `PRICE_TIMEOUT`: a price that does not come at once is not worth a wait.
pub(super) fn brief() -> (RetryConfig, TimeoutConfig) {
    (
        RetryConfig::disabled(),
        TimeoutConfig::builder()
            .operation_timeout(PRICE_TIMEOUT)
            .build(),
    )
}

impl Cloud {
    /// USD per hour of `instance_type` on demand here (Linux, shared tenancy), from the AWS
    /// Price List; `None` when it does not answer or has no single price for it.
    pub async fn on_demand_price(&self, instance_type: &str) -> Option<f64> {
        let filters = [
            ("instanceType", instance_type),
            ("regionCode", self.region.as_str()),
            ("operatingSystem", "Linux"),
            ("tenancy", "Shared"),
            ("preInstalledSw", "NA"),
            ("capacitystatus", "Used"),
        ];
        let mut request = self.pricing.get_products().service_code("AmazonEC2");
        for (field, value) in filters {
            let filter = PriceFilter::builder()
                .r#type(FilterType::TermMatch)
                .field(field)
                .value(value)
                .build()
                .expect("type, field and value are set");
            request = request.filters(filter);
        }
        match request.send().await.explain(format_args!(
            "get the price of {instance_type} in {} from the AWS Price List",
            self.region
        )) {
            Ok(answer) => on_demand_usd(answer.price_list()),
            Err(e) => {
                tracing::debug!("{e}; using ssh-ec2's price table");
                None
            }
        }
    }

    /// The current spot price of `instance_type` (Linux/UNIX) in `zone`, or the lowest across
    /// the region's zones, with the zone it is in; `None` when EC2 does not say.
    pub async fn spot_price(
        &self,
        instance_type: &str,
        zone: Option<&str>,
    ) -> Option<(f64, String)> {
        // Start and end now: the price in effect now in each zone, not its history.
        let now = DateTime::from(SystemTime::now());
        let (retry, timeout) = brief();
        let answer = self
            .ec2
            .describe_spot_price_history()
            .instance_types(InstanceType::from(instance_type))
            .product_descriptions("Linux/UNIX")
            .start_time(now)
            .end_time(now)
            .set_filters(zone.map(|zone| {
                vec![
                    Filter::builder()
                        .name("availability-zone")
                        .values(zone)
                        .build(),
                ]
            }))
            .customize()
            .config_override(
                aws_sdk_ec2::config::Builder::default()
                    .retry_config(retry)
                    .timeout_config(timeout),
            )
            .send()
            .await
            .explain(format_args!(
                "get the spot price of {instance_type} in {}",
                self.region
            ));
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => {
                tracing::debug!("{e}; using the on-demand price");
                return None;
            }
        };
        // The newest price of each zone, then the lowest of those.
        let mut newest: BTreeMap<&str, (&DateTime, f64)> = BTreeMap::new();
        for price in answer.spot_price_history() {
            let (Some(zone), Some(at), Some(usd)) = (
                price.availability_zone(),
                price.timestamp(),
                price.spot_price().and_then(|p| p.parse::<f64>().ok()),
            ) else {
                continue;
            };
            if newest.get(zone).is_none_or(|(seen, _)| *seen < at) {
                newest.insert(zone, (at, usd));
            }
        }
        newest
            .into_iter()
            .map(|(zone, (_, usd))| (usd, zone.to_string()))
            .min_by(|a, b| a.0.total_cmp(&b.0))
    }
}

/// The one hourly USD price in GetProducts' answer: each entry of its PriceList is a JSON
/// document of one product, whose prices are at terms.OnDemand.*.priceDimensions.*.pricePerUnit.
/// `None` when there is none, or several that differ (the filters did not pin one product).
fn on_demand_usd(price_list: &[String]) -> Option<f64> {
    let mut found: Option<f64> = None;
    for document in price_list {
        let Ok(product) = serde_json::from_str::<Value>(document) else {
            tracing::debug!("the AWS Price List answered something that is not JSON");
            return None;
        };
        let terms = product["terms"]["OnDemand"]
            .as_object()
            .into_iter()
            .flatten();
        for (_, term) in terms {
            let dimensions = term["priceDimensions"].as_object().into_iter().flatten();
            for (_, dimension) in dimensions {
                let usd = dimension["pricePerUnit"]["USD"].as_str();
                let Some(usd) = usd.and_then(|usd| usd.parse::<f64>().ok()) else {
                    continue;
                };
                // A zero price is the stub of a reservation-only or retired product.
                if usd <= 0.0 || dimension["unit"] != "Hrs" {
                    continue;
                }
                match found {
                    Some(seen) if seen != usd => {
                        tracing::debug!("the AWS Price List has several prices: {seen}, {usd}");
                        return None;
                    }
                    _ => found = Some(usd),
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One entry of GetProducts' PriceList as AWS documents it: the product, its on-demand term
    /// and a reserved one (which must not be taken for the hourly price).
    const G4DN_XLARGE: &str = r#"{
      "product": {
        "productFamily": "Compute Instance",
        "attributes": {
          "instanceType": "g4dn.xlarge",
          "regionCode": "eu-central-1",
          "location": "EU (Frankfurt)",
          "operatingSystem": "Linux",
          "tenancy": "Shared",
          "preInstalledSw": "NA",
          "capacitystatus": "Used",
          "licenseModel": "No License required",
          "vcpu": "4",
          "memory": "16 GiB",
          "gpu": "1",
          "servicecode": "AmazonEC2"
        },
        "sku": "8Y3YXD5HXUHJAXYN"
      },
      "serviceCode": "AmazonEC2",
      "terms": {
        "OnDemand": {
          "8Y3YXD5HXUHJAXYN.JRTCKXETXF": {
            "priceDimensions": {
              "8Y3YXD5HXUHJAXYN.JRTCKXETXF.6YS6EN2CT7": {
                "unit": "Hrs",
                "endRange": "Inf",
                "description": "$0.658 per On Demand Linux g4dn.xlarge Instance Hour",
                "appliesTo": [],
                "rateCode": "8Y3YXD5HXUHJAXYN.JRTCKXETXF.6YS6EN2CT7",
                "beginRange": "0",
                "pricePerUnit": { "USD": "0.6580000000" }
              }
            },
            "sku": "8Y3YXD5HXUHJAXYN",
            "effectiveDate": "2025-06-01T00:00:00Z",
            "offerTermCode": "JRTCKXETXF",
            "termAttributes": {}
          }
        },
        "Reserved": {
          "8Y3YXD5HXUHJAXYN.4NA7Y494T4": {
            "priceDimensions": {
              "8Y3YXD5HXUHJAXYN.4NA7Y494T4.6YS6EN2CT7": {
                "unit": "Hrs",
                "endRange": "Inf",
                "description": "Linux/UNIX (Amazon VPC), g4dn.xlarge reserved instance applied",
                "appliesTo": [],
                "rateCode": "8Y3YXD5HXUHJAXYN.4NA7Y494T4.6YS6EN2CT7",
                "beginRange": "0",
                "pricePerUnit": { "USD": "0.4150000000" }
              }
            },
            "sku": "8Y3YXD5HXUHJAXYN",
            "effectiveDate": "2025-06-01T00:00:00Z",
            "offerTermCode": "4NA7Y494T4",
            "termAttributes": {
              "LeaseContractLength": "1yr",
              "OfferingClass": "standard",
              "PurchaseOption": "No Upfront"
            }
          }
        }
      },
      "version": "20250601000000",
      "publicationDate": "2025-06-01T00:00:00Z"
    }"#;

    #[test]
    fn the_on_demand_hourly_price_is_read_from_the_price_list() {
        let one = vec![G4DN_XLARGE.to_string()];
        assert_eq!(on_demand_usd(&one), Some(0.658));
        let twice = vec![G4DN_XLARGE.to_string(), G4DN_XLARGE.to_string()];
        assert_eq!(on_demand_usd(&twice), Some(0.658), "the same price twice");
        let other = G4DN_XLARGE.replace("0.6580000000", "0.7000000000");
        let differing = vec![G4DN_XLARGE.to_string(), other];
        assert_eq!(on_demand_usd(&differing), None, "no single price");
        let retired = vec![G4DN_XLARGE.replace("0.6580000000", "0.0000000000")];
        assert_eq!(on_demand_usd(&retired), None);
        assert_eq!(on_demand_usd(&[]), None, "no such product");
        assert_eq!(on_demand_usd(&["<html>".to_string()]), None);
    }
}
