//! AWS errors as one readable line: `<operation>: <Code>: <message>`, plus a hint where the
//! fix is known.
//!
//! Why not the SDK's own text: `DisplayErrorContext` walks the whole source chain, and for
//! unmodelled errors that chain ends in the `Debug` of the raw HTTP response (hundreds of
//! characters of `ErrorMetadata { ... raw: Response { ... } }`). The code and message the
//! service sent are what a person acts on; the rest is noise in a nightly log.

use std::fmt;

use aws_sdk_ecs::config::http::HttpResponse;
use aws_sdk_ecs::error::{ProvideErrorMetadata, SdkError};

/// One failed AWS call, reduced to what the service said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct AwsError {
    /// `service:Operation`, e.g. `ecs:RunTask` — also the IAM action it needs.
    pub operation: String,
    /// The service's error code (`AccessDeniedException`), or the transport failure's kind.
    pub code: String,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for AwsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.operation, self.code)?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        if let Some(h) = &self.hint {
            write!(f, " ({h})")?;
        }
        Ok(())
    }
}

impl AwsError {
    /// Everything but the operation, for callers that name the operation themselves.
    pub fn detail(&self) -> String {
        let full = self.to_string();
        full[self.operation.len() + 2..].to_string()
    }
}

/// Reduces an SDK error of any service to an [`AwsError`]. `operation` is the IAM action
/// spelling (`events:PutRule`).
pub fn from_sdk<E>(operation: &str, e: &SdkError<E, HttpResponse>) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let (code, message) = match e {
        SdkError::ServiceError(_) => {
            let status = e.raw_response().map(|r| r.status().as_u16()).unwrap_or(0);
            let code = e
                .code()
                .map(str::to_string)
                .unwrap_or_else(|| format!("HTTP {status}"));
            (code, e.message().unwrap_or_default().to_string())
        }
        SdkError::TimeoutError(_) => ("Timeout".to_string(), "no answer in time".to_string()),
        SdkError::DispatchFailure(d) => {
            let kind = if d.is_timeout() {
                "Timeout"
            } else if d.is_io() {
                "ConnectionFailed"
            } else {
                "DispatchFailure"
            };
            (kind.to_string(), innermost(e))
        }
        SdkError::ResponseError(_) => {
            let status = e.raw_response().map(|r| r.status().as_u16()).unwrap_or(0);
            (
                format!("HTTP {status}"),
                format!("unreadable response: {}", innermost(e)),
            )
        }
        _ => ("RequestNotSent".to_string(), innermost(e)),
    };
    let hint = hint(operation, &code, &message);
    AwsError {
        operation: operation.to_string(),
        code,
        message: one_line(&message),
        hint,
    }
}

/// The deepest cause's text ("Connection refused (os error 111)"): the layers above it only
/// say "dispatch failure" / "io error" again.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Known fixes, keyed on the code (and, for generic codes, on words of the message).
fn hint(operation: &str, code: &str, message: &str) -> Option<String> {
    let msg = message.to_ascii_lowercase();
    let h = if code.starts_with("AccessDenied")
        || code == "UnauthorizedOperation"
        || code == "UnrecognizedClientException"
        || msg.contains("not authorized to perform")
    {
        format!("the credentials in use need the IAM action {operation}; `aws sts get-caller-identity` shows whose they are")
    } else if code.contains("InvalidSubnet") || (msg.contains("subnet") && code != "HTTP 0") {
        "check --subnets: the ids must exist in the task's region and VPC".to_string()
    } else if code.contains("InvalidGroup") || msg.contains("security group") {
        "check --security-groups: the ids must exist in the subnets' VPC".to_string()
    } else if code == "ClusterNotFoundException" {
        "check --cluster, or create the cluster (infra/backhaul.yaml)".to_string()
    } else if msg.contains("role") && (msg.contains("assume") || msg.contains("passrole")) {
        "check --execution-role-arn, --task-role-arn and --events-role-arn: each must exist and trust its service".to_string()
    } else if code == "ExpiredToken" || code == "ExpiredTokenException" {
        "the session credentials have expired: log in again".to_string()
    } else if code == "ConnectionFailed" {
        "no connection to the AWS endpoint: check AWS_ENDPOINT_URL, the network and proxies"
            .to_string()
    } else {
        return None;
    };
    Some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_line_with_hint() {
        let e = AwsError {
            operation: "ecs:RunTask".into(),
            code: "AccessDeniedException".into(),
            message: "User x is not authorized".into(),
            hint: hint(
                "ecs:RunTask",
                "AccessDeniedException",
                "User x is not authorized",
            ),
        };
        assert_eq!(
            e.to_string(),
            "ecs:RunTask: AccessDeniedException: User x is not authorized (the credentials in use need the IAM action ecs:RunTask; `aws sts get-caller-identity` shows whose they are)"
        );
    }

    #[test]
    fn hints() {
        assert!(hint("ecs:RunTask", "InvalidParameterException", "Error retrieving subnet information for [subnet-1]: The subnet ID 'subnet-1' does not exist")
            .unwrap()
            .contains("--subnets"));
        assert!(hint("ecs:DescribeClusters", "ClusterNotFoundException", "")
            .unwrap()
            .contains("--cluster"));
        assert_eq!(hint("events:PutRule", "ValidationException", "bad"), None);
    }
}
