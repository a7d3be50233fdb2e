//! A connection refused is an answer: AWS's endpoints never refuse one, so the endpoint is
//! wrong or nothing listens there (a stale `AWS_ENDPOINT_URL`, a proxy that is down). Retried
//! like throttling, it kept the user waiting in silence for tens of seconds before the error.

use aws_sdk_ec2::config::interceptors::InterceptorContext;
use aws_sdk_ec2::config::retry::{ClassifyRetry, RetryAction};

#[derive(Debug)]
pub(super) struct RefusedIsAnAnswer;

impl ClassifyRetry for RefusedIsAnAnswer {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        let refused = match ctx.output_or_error() {
            Some(Err(error)) => error.as_connector_error().is_some_and(|e| is_refused(e)),
            _ => false,
        };
        match refused {
            true => RetryAction::RetryForbidden,
            false => RetryAction::NoActionIndicated,
        }
    }

    fn name(&self) -> &'static str {
        "a refused connection is an answer"
    }
}

/// Whether `error`, or what caused it, is a refused connection.
fn is_refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        cause = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_connection_is_found_among_the_causes() {
        #[derive(Debug)]
        struct Wrapper(std::io::Error);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "connect failed")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let refused = Wrapper(std::io::ErrorKind::ConnectionRefused.into());
        assert!(is_refused(&refused));
        let timed_out = Wrapper(std::io::ErrorKind::TimedOut.into());
        assert!(!is_refused(&timed_out));
    }
}
