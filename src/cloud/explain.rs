//! Turns AWS SDK errors into messages that say what went wrong and what to do, by root cause.

use std::any::Any;
use std::error::Error as StdError;
use std::fmt;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};

use super::Cloud;

/// An AWS call that failed, with the user's next step when the cause is a known one.
#[derive(Debug)]
pub struct AwsError {
    doing: String,
    detail: String,
    hint: Option<&'static str>,
    /// The AWS error code, for callers that handle some codes themselves.
    pub code: Option<String>,
    /// AWS gave no decision on the request: throttled, failed inside, or never answered (after
    /// the SDK's retries). It may have happened, and asking again later may work.
    pub inconclusive: bool,
    /// Why AWS refused, encoded (UnauthorizedOperation): sts:DecodeAuthorizationMessage reads it.
    pub denial: Option<String>,
}

/// What precedes the encoded reason in an UnauthorizedOperation message.
const ENCODED_DENIAL: &str = "Encoded authorization failure message:";

/// Codes that are no answer to the request itself: AWS was busy or failed inside.
const INCONCLUSIVE_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "EC2ThrottledException",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
];

impl fmt::Display for AwsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "could not {}: {}", self.doing, self.detail)?;
        if let Some(hint) = self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl StdError for AwsError {}

pub trait AwsResultExt<T> {
    /// `doing` completes "could not …", e.g. "launch the instance in eu-central-1".
    fn explain(self, doing: impl fmt::Display) -> Result<T, AwsError>;
}

impl<T, E, R> AwsResultExt<T> for Result<T, SdkError<E, R>>
where
    E: ProvideErrorMetadata + StdError + 'static,
    R: fmt::Debug + 'static,
{
    fn explain(self, doing: impl fmt::Display) -> Result<T, AwsError> {
        self.map_err(|err| explain(&err, doing.to_string()))
    }
}

fn explain<E, R>(err: &SdkError<E, R>, doing: String) -> AwsError
where
    E: ProvideErrorMetadata + StdError + 'static,
    R: fmt::Debug + 'static,
{
    let code = err.code().map(str::to_string);
    if let SdkError::ServiceError(_) = err {
        // The encoded reason is a long blob: kept aside, to be decoded.
        let (message, denial) = match err.message().map(|m| m.split_once(ENCODED_DENIAL)) {
            Some(Some((plain, encoded))) => (Some(plain.trim()), Some(encoded.trim().to_string())),
            Some(None) => (err.message(), None),
            None => (None, None),
        };
        let detail = match (message, &code) {
            (Some(message), _) => format!("{} ({message})", code.as_deref().unwrap_or("error")),
            (None, Some(code)) => code.clone(),
            (None, None) => unreadable_answer(err.raw_response()),
        };
        let hint = code.as_deref().and_then(hint_for_code);
        let inconclusive = code
            .as_deref()
            .is_none_or(|c| INCONCLUSIVE_CODES.contains(&c));
        return AwsError {
            doing,
            detail,
            hint,
            code,
            inconclusive,
            denial,
        };
    }
    if let Some(problem) = credentials_problem(err) {
        let detail = match problem {
            CredentialsError::CredentialsNotLoaded(_) => "no AWS credentials found".to_string(),
            other => format!("could not load AWS credentials ({})", innermost(other)),
        };
        return AwsError {
            doing,
            detail,
            hint: Some(
                "run `aws configure` (or `aws sso login`), or set AWS_PROFILE or \
                 AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            ),
            code,
            inconclusive: false,
            denial: None,
        };
    }
    let (detail, hint) = match err {
        SdkError::TimeoutError(_) => ("the request timed out".to_string(), NETWORK_HINT),
        SdkError::DispatchFailure(failure) if failure.is_io() || failure.is_timeout() => (
            format!("cannot reach the AWS API ({})", innermost(err)),
            NETWORK_HINT,
        ),
        _ => (innermost(err), "run again with -vv for the details"),
    };
    AwsError {
        doing,
        detail,
        hint: Some(hint),
        code,
        // Only a request that could not even be built was surely never sent.
        inconclusive: !matches!(err, SdkError::ConstructionFailure(_)),
        denial: None,
    }
}

/// An error answer the SDK could not read (an endpoint or proxy that is not quite AWS): shown
/// as it came, so the user sees what it says.
fn unreadable_answer<R: 'static>(raw: Option<&R>) -> String {
    let Some(response) = raw.and_then(|r| (r as &dyn Any).downcast_ref::<HttpResponse>()) else {
        return "unknown service error".into();
    };
    let body = response.body().bytes().unwrap_or_default();
    let body = String::from_utf8_lossy(body);
    let body: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    let cut: String = body.chars().take(400).collect();
    let more = if cut.len() < body.len() { "…" } else { "" };
    format!(
        "an answer ssh-ec2 cannot read (HTTP {}: {cut}{more})",
        response.status().as_u16()
    )
}

const NETWORK_HINT: &str = "check your network connection and proxy settings, the region (--region, AWS_REGION) and AWS_ENDPOINT_URL";

impl Cloud {
    /// Adds why AWS refused to an error that holds an encoded UnauthorizedOperation reason:
    /// decoded, when the user may (sts:DecodeAuthorizationMessage), else how an admin can.
    pub async fn explain_denial(&self, error: anyhow::Error) -> anyhow::Error {
        // Several layers ask (a launch and the end of life it may apply): once is enough.
        if error.downcast_ref::<DenialExplained>().is_some() {
            return error;
        }
        let encoded = error
            .chain()
            .find_map(|e| e.downcast_ref::<AwsError>())
            .and_then(|e| e.denial.clone());
        let Some(encoded) = encoded else {
            return error;
        };
        let decoded = self
            .sts
            .decode_authorization_message()
            .encoded_message(&encoded)
            .send()
            .await;
        let why = match decoded.ok().as_ref().and_then(|d| d.decoded_message()) {
            Some(decoded) => match denial_summary(decoded) {
                Some(summary) => summary,
                None => format!("AWS says why: {decoded}"),
            },
            None => format!(
                "to see why, an admin runs `aws sts decode-authorization-message \
                 --encoded-message {encoded}` (ssh-ec2 does it itself if you are allowed \
                 sts:DecodeAuthorizationMessage)"
            ),
        };
        error.context(DenialExplained(why))
    }
}

/// Why AWS refused, as the context of the refusal: it is explained once.
#[derive(Debug)]
struct DenialExplained(String);

impl std::fmt::Display for DenialExplained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The action and resource refused, from a decoded authorization message.
fn denial_summary(decoded: &str) -> Option<String> {
    let message: serde_json::Value = serde_json::from_str(decoded).ok()?;
    let context = &message["context"];
    let action = context["action"].as_str()?;
    let resource = context["resource"].as_str().unwrap_or("*");
    let why = match message["explicitDeny"].as_bool() {
        Some(true) => "a policy denies it explicitly",
        _ => "no policy allows it",
    };
    Some(format!("AWS refused {action} on {resource}: {why}"))
}

fn credentials_problem<'e>(err: &'e (dyn StdError + 'static)) -> Option<&'e CredentialsError> {
    let mut source: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(problem) = e.downcast_ref::<CredentialsError>() {
            return Some(problem);
        }
        source = e.source();
    }
    None
}

/// The last message of the error chain: the SDK's outer layers only say "dispatch failure".
fn innermost(err: &(dyn StdError + 'static)) -> String {
    let mut last = err;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

fn hint_for_code(code: &str) -> Option<&'static str> {
    Some(match code {
        "UnauthorizedOperation" | "AccessDenied" | "AccessDeniedException" => {
            "your AWS user is not allowed to do this: ask your AWS admin to run `ssh-ec2 \
             --setup` and add you to the group SshEc2, which carries policies/ssh-ec2-user.json \
             (see docs/admin.md)"
        }
        "AuthFailure"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "UnrecognizedClientException" => {
            "AWS rejected your credentials: check AWS_PROFILE, or run `aws configure` again"
        }
        "ExpiredToken" | "ExpiredTokenException" | "RequestExpired" => {
            "your AWS session has expired: log in again (`aws sso login`) or refresh your keys"
        }
        "OptInRequired" => {
            "this region is not enabled for your account: pick another with --region"
        }
        "InsufficientInstanceCapacity" | "InsufficientCapacity" => {
            "AWS has no spare capacity for this instance type in this availability zone right now"
        }
        "VcpuLimitExceeded" | "InstanceLimitExceeded" | "MaxSpotInstanceCountExceeded" => {
            "your account's vCPU quota for this instance family is used up: terminate idle \
             instances or request a quota increase (Service Quotas console)"
        }
        "RequestLimitExceeded" | "Throttling" | "ThrottlingException" => {
            "AWS is throttling requests from your account: wait a minute and run again"
        }
        "InvalidAMIID.NotFound" | "InvalidAMIID.Malformed" | "InvalidAMIID.Unavailable" => {
            "no such image in this region: check --image-id (AMI ids are per region)"
        }
        "InvalidParameterValue" | "Unsupported" => {
            "check the instance type, image and subnet settings (is the type offered in this \
             region and availability zone?)"
        }
        "InvalidSubnetID.NotFound" => "no such subnet in this region: check --subnet-id",
        "InvalidInstanceType" => "no such instance type in this region: check --instance-type",
        "NoSuchEntity" => {
            "no such IAM instance profile: check --instance-profile / AWS_IAM_INSTANCE_PROFILE \
             (`ssh-ec2 --setup` makes ssh-ec2-s3-read-only and ssh-ec2-s3-read-write; see \
             docs/admin.md)"
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::{DenialExplained, denial_summary};

    #[test]
    fn an_explained_denial_is_seen_under_later_contexts() {
        let explained = anyhow::anyhow!("refused")
            .context(DenialExplained("AWS refused ec2:RunInstances".into()))
            .context("launch an instance");
        assert!(explained.downcast_ref::<DenialExplained>().is_some());
        assert!(
            anyhow::anyhow!("refused")
                .downcast_ref::<DenialExplained>()
                .is_none()
        );
    }

    #[test]
    fn a_decoded_denial_names_the_action_and_resource() {
        let decoded = r#"{"allowed":false,"explicitDeny":false,"matchedStatements":{"items":[]},
            "failures":{"items":[]},"context":{"principal":{"id":"AIDA","name":"me"},
            "action":"ec2:RunInstances","resource":"arn:aws:ec2:eu-central-1:1:instance/*"}}"#;
        assert_eq!(
            denial_summary(decoded).as_deref(),
            Some(
                "AWS refused ec2:RunInstances on arn:aws:ec2:eu-central-1:1:instance/*: no policy \
                 allows it"
            )
        );
        assert_eq!(denial_summary("not json"), None);
    }
}
