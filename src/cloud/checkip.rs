//! This machine's public address, asked of a checkip service (not AWS's API).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use ipnet::IpNet;

/// This machine's public address as a single-host CIDR, from a checkip service (a plain-text
/// body with the caller's IP, like https://checkip.amazonaws.com).
pub async fn caller_cidr(checkip_url: &str) -> Result<IpNet> {
    let url = checkip_url.to_string();
    let body = tokio::task::spawn_blocking(move || fetch_text(&url))
        .await
        .context("the checkip request panicked")?
        .with_context(|| {
            format!(
                "cannot learn this machine's public IP from {checkip_url}: pass --ssh-cidr \
                 YOUR.PUBLIC.IP/32, or set SSH_EC2_CHECKIP_URL to a service that works from here"
            )
        })?;
    let ip: std::net::IpAddr = body.trim().parse().with_context(|| {
        format!(
            "{checkip_url} answered `{}`, not an IP address: pass --ssh-cidr",
            body.trim()
        )
    })?;
    Ok(IpNet::from(ip))
}

fn fetch_text(url: &str) -> Result<String> {
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .build();
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .tls_config(tls)
            .timeout_global(Some(Duration::from_secs(15)))
            .build(),
    );
    Ok(agent.get(url).call()?.body_mut().read_to_string()?)
}
