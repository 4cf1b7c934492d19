//! Thin, pure builders of ECS and EventBridge requests from validated settings, plus the
//! small pieces of shared AWS plumbing (clients, error text). Keeping the builders pure lets
//! unit tests pin exactly what is sent without a network.

pub mod ecs;
pub mod events;

use std::fmt::Display;

/// Clients for the services `schedule`, `run-task` and `status` talk to, all built from the
/// same configuration chain as S3 so `AWS_ENDPOINT_URL` (moto, LocalStack) applies to all.
pub struct Clients {
    pub ecs: aws_sdk_ecs::Client,
    pub events: aws_sdk_eventbridge::Client,
    pub region: Option<String>,
}

impl Clients {
    pub async fn load() -> Clients {
        let conf = crate::storage::s3::sdk_config().await;
        Clients {
            ecs: aws_sdk_ecs::Client::new(&conf),
            events: aws_sdk_eventbridge::Client::new(&conf),
            region: conf.region().map(|r| r.to_string()),
        }
    }
}

/// The SDK's default error Display is just "service error"; the context chain carries the
/// service's code and message, which is what a user needs to act.
pub fn sdk_err<E: std::error::Error + Send + Sync + 'static>(
    op: impl Display,
    e: E,
) -> anyhow::Error {
    anyhow::anyhow!("{op}: {}", aws_sdk_ecs::error::DisplayErrorContext(e))
}

/// A request could not be assembled (a required field missing); a bug, not user input.
pub fn build_err(e: aws_sdk_ecs::error::BuildError) -> anyhow::Error {
    anyhow::anyhow!("building AWS request: {e}")
}
