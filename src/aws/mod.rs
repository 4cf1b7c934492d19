//! Thin, pure builders of ECS and EventBridge requests from validated settings, plus the
//! small pieces of shared AWS plumbing (clients, error text, names). Keeping the builders pure
//! lets unit tests pin exactly what is sent without a network.

pub mod alarms;
pub mod ecs;
pub mod error;
pub mod events;
pub mod logs;
pub mod names;
pub mod scheduler;

use aws_sdk_ecs::config::http::HttpResponse;
use aws_sdk_ecs::error::{ProvideErrorMetadata, SdkError};

use crate::config::ConfigError;

/// Clients for the services `schedule`, `run-task` and `status` talk to, all built from the
/// same configuration chain as S3 so `AWS_ENDPOINT_URL` (moto, LocalStack) applies to all.
pub struct Clients {
    pub ecs: aws_sdk_ecs::Client,
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    pub events: aws_sdk_eventbridge::Client,
    pub scheduler: aws_sdk_scheduler::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub region: String,
    conf: aws_config::SdkConfig,
}

impl Clients {
    /// Fails before any network call when no region is configured (see `sdk_config`): every
    /// ECS and EventBridge request is regional.
    pub async fn load() -> Result<Clients, ConfigError> {
        let conf = crate::storage::s3::sdk_config().await?;
        let region = conf.region().map(|r| r.to_string()).unwrap_or_default();
        Ok(Clients {
            ecs: aws_sdk_ecs::Client::new(&conf),
            cloudwatch: aws_sdk_cloudwatch::Client::new(&conf),
            events: aws_sdk_eventbridge::Client::new(&conf),
            scheduler: aws_sdk_scheduler::Client::new(&conf),
            ssm: aws_sdk_ssm::Client::new(&conf),
            region,
            conf,
        })
    }

    /// CloudWatch Logs in `region` (the task definition's awslogs-region), or the SDK's.
    pub fn logs(&self, region: &str) -> aws_sdk_cloudwatchlogs::Client {
        let mut b = aws_sdk_cloudwatchlogs::config::Builder::from(&self.conf);
        if !region.is_empty() && region != self.region {
            b = b.region(aws_sdk_cloudwatchlogs::config::Region::new(
                region.to_string(),
            ));
        }
        aws_sdk_cloudwatchlogs::Client::from_conf(b.build())
    }
}

/// One failed call as one line (see [`error::AwsError`]); `operation` is the IAM action.
pub fn sdk_err<E>(operation: &str, e: SdkError<E, HttpResponse>) -> anyhow::Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    error::from_sdk(operation, &e).into()
}

/// A request could not be assembled (a required field missing); a bug, not user input.
pub fn build_err(e: aws_sdk_ecs::error::BuildError) -> anyhow::Error {
    anyhow::anyhow!("building AWS request: {e}")
}
