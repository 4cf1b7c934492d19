//! Every AWS name backhaul derives from a stage, checked against its service's limit up
//! front. A stage that fits the S3 key segment (200 characters) can still overflow a rule
//! name; finding that out at PutRule, after the task definition was registered, leaves a
//! half-applied schedule.

const PREFIX: &str = "backhaul-";

/// EventBridge rule names and Scheduler schedule names: at most 64 characters
/// (`[\.\-_A-Za-z0-9]+`). The tightest of the derived names, so it bounds the stage.
pub const MAX_RULE_NAME: usize = 64;

/// Longest stage whose derived names all fit: `backhaul-` + stage ≤ 64.
pub const MAX_STAGE: usize = MAX_RULE_NAME - PREFIX.len();

/// Task definition family, EventBridge rule (and Scheduler schedule), ECS cluster and
/// CloudFormation stack share one name per stage.
pub fn stage_resource(stage: &str) -> String {
    format!("{PREFIX}{stage}")
}

/// The default CloudWatch log group of a stage.
pub fn log_group(stage: &str) -> String {
    format!("/backhaul/{stage}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_stage_fits_every_name() {
        assert_eq!(stage_resource(&"a".repeat(MAX_STAGE)).len(), MAX_RULE_NAME);
    }
}
