//! What a run tells the outside world: one JSON line per artifact on stdout and, when asked,
//! a healthchecks.io-style ping.
//!
//! Each line is also a CloudWatch embedded-metric-format (EMF) record: ECS ships stdout to
//! CloudWatch Logs, which turns the `_aws` block into metrics (`backup_success`,
//! `backup_failure`, `backup_duration_seconds`, `backup_stored_bytes` per stage, kind and
//! database) without any agent, so an alarm can fire on a failed or missing backup.

use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use crate::config::ConfigError;
use crate::layout::Kind;

#[derive(Debug, Clone, Serialize)]
pub struct ArtifactReport {
    pub event: &'static str,
    pub status: &'static str,
    pub stage: String,
    pub kind: Kind,
    pub database: String,
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ArtifactReport {
    pub fn ok(&self) -> bool {
        self.status == "ok"
    }

    /// The stdout line: the report plus its EMF metadata and metric values.
    pub fn to_line(&self) -> String {
        let mut v = serde_json::to_value(self).expect("report serialises");
        let obj = v.as_object_mut().expect("report is an object");
        let ok = self.ok();
        obj.insert("backup_success".into(), json!(u8::from(ok)));
        obj.insert("backup_failure".into(), json!(u8::from(!ok)));
        obj.insert("backup_duration_seconds".into(), json!(self.seconds));
        if let Some(b) = self.stored_bytes {
            obj.insert("backup_stored_bytes".into(), json!(b));
        }
        let mut metrics = vec![
            json!({"Name": "backup_success", "Unit": "Count"}),
            json!({"Name": "backup_failure", "Unit": "Count"}),
            json!({"Name": "backup_duration_seconds", "Unit": "Seconds"}),
        ];
        if self.stored_bytes.is_some() {
            metrics.push(json!({"Name": "backup_stored_bytes", "Unit": "Bytes"}));
        }
        obj.insert(
            "_aws".into(),
            json!({
                "Timestamp": chrono::Utc::now().timestamp_millis(),
                "CloudWatchMetrics": [{
                    "Namespace": "backhaul",
                    // Per stage (for "any backup failed" alarms) and per database.
                    "Dimensions": [["stage"], ["stage", "kind", "database"]],
                    "Metrics": metrics,
                }],
            }),
        );
        serde_json::to_string(&v).expect("report serialises")
    }
}

/// Pings a monitoring URL: `<url>/start` when a run begins, `<url>` on success, `<url>/fail`
/// on failure (the healthchecks.io convention; also works with a plain webhook that ignores
/// the suffixes). A notification that cannot be delivered is logged, never fatal: the backup
/// itself is what matters.
pub struct Notifier {
    client: reqwest::Client,
    base: String,
    host: String,
}

const NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);

impl Notifier {
    pub fn new(raw: &str) -> Result<Notifier, ConfigError> {
        let url = url::Url::parse(raw.trim()).map_err(|e| {
            ConfigError::invalid(
                "BACKHAUL_NOTIFY_URL",
                format!("is not a valid URL ({e}); e.g. https://hc-ping.com/<uuid>"),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(ConfigError::invalid(
                "BACKHAUL_NOTIFY_URL",
                "must be an http:// or https:// URL",
            ));
        }
        let client = reqwest::Client::builder()
            .timeout(NOTIFY_TIMEOUT)
            .build()
            .map_err(|e| {
                ConfigError::invalid(
                    "BACKHAUL_NOTIFY_URL",
                    format!("cannot build an HTTP client: {e}"),
                )
            })?;
        Ok(Notifier {
            client,
            host: url.host_str().unwrap_or_default().to_string(),
            base: url.as_str().trim_end_matches('/').to_string(),
        })
    }

    pub async fn start(&self, stage: &str) {
        self.post(
            format!("{}/start", self.base),
            json!({"event": "start", "stage": stage}),
        )
        .await;
    }

    /// `other_failure`: the run failed beyond its artifacts (interrupted, verification failed).
    pub async fn finish(&self, stage: &str, reports: &[ArtifactReport], other_failure: bool) {
        let ok = !other_failure && reports.iter().all(ArtifactReport::ok);
        let url = if ok {
            self.base.clone()
        } else {
            format!("{}/fail", self.base)
        };
        let body = json!({
            "event": "finish",
            "status": if ok { "ok" } else { "failed" },
            "stage": stage,
            "artifacts": reports,
        });
        self.post(url, body).await;
    }

    async fn post(&self, url: String, body: serde_json::Value) {
        // The URL may embed a token (healthchecks' UUID): log the host only.
        match self.client.post(&url).json(&body).send().await {
            Ok(r) if r.status().is_success() => {
                tracing::debug!(host = %self.host, "notification sent")
            }
            Ok(r) => {
                tracing::warn!(host = %self.host, status = r.status().as_u16(), "notification rejected")
            }
            Err(e) => {
                tracing::warn!(host = %self.host, error = %without_url(&e), "notification failed")
            }
        }
    }
}

fn without_url(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    if let Some(u) = e.url() {
        msg = msg.replace(u.as_str(), "<notify url>");
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_is_an_emf_record() {
        let r = ArtifactReport {
            event: "artifact",
            status: "ok",
            stage: "prod".into(),
            kind: Kind::Postgres,
            database: "app".into(),
            key: "k".into(),
            raw_bytes: Some(10),
            stored_bytes: Some(4),
            sha256: Some("ab".into()),
            seconds: 1.5,
            error: None,
        };
        let v: serde_json::Value = serde_json::from_str(&r.to_line()).unwrap();
        assert_eq!(v["backup_success"], 1);
        assert_eq!(v["backup_failure"], 0);
        assert_eq!(v["backup_stored_bytes"], 4);
        let m = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(m["Namespace"], "backhaul");
        // Every dimension named must be a top-level string field.
        for dims in m["Dimensions"].as_array().unwrap() {
            for d in dims.as_array().unwrap() {
                assert!(v[d.as_str().unwrap()].is_string(), "{d}");
            }
        }
        for metric in m["Metrics"].as_array().unwrap() {
            assert!(v[metric["Name"].as_str().unwrap()].is_number());
        }
    }

    #[test]
    fn notify_url_is_validated() {
        assert!(Notifier::new("https://hc-ping.com/5a1b").is_ok());
        assert!(Notifier::new("ftp://x").is_err());
        assert!(Notifier::new("not a url").is_err());
    }
}
