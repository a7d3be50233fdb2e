//! Whether EC2 has been sent a request yet: the credentials were found and it is signed. What
//! a run asks elsewhere beside its first AWS request (checkip) waits for that, so that a run
//! that cannot reach AWS (no credentials) asks nothing of anyone.

use aws_sdk_ec2::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_ec2::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_ec2::error::BoxError;
use tokio::sync::watch;

/// Set, once, by the first request that leaves.
#[derive(Debug)]
pub(super) struct Sent(watch::Sender<bool>);

impl Sent {
    /// The interceptor, and what sees it set.
    pub(super) fn new() -> (Sent, watch::Receiver<bool>) {
        let (sender, receiver) = watch::channel(false);
        (Sent(sender), receiver)
    }
}

impl Intercept for Sent {
    fn name(&self) -> &'static str {
        "Sent"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.send_replace(true);
        Ok(())
    }
}
