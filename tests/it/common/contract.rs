//! AWS contract checks. moto accepts requests real AWS rejects, so every test that drives an
//! AWS-touching command records what backhaul sends (through a pass-through proxy in front of
//! moto) and hands the requests to `tests/contract/check.py`, which checks each one against
//! AWS's published service models (botocore's JSON) and a table of rules the real services
//! enforce. A violation fails the test with the rule's text and source.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Command;

use base64::Engine as _;

use super::proxy::FaultProxy;
use super::{backhaul, moto, tests_dir, venv};

/// A recorder in front of the shared moto_server.
pub struct Contract {
    proxy: FaultProxy,
}

/// One recorded request, decoded from the wire.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    /// Lower-cased names.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Recorded {
    /// `AmazonEC2ContainerServiceV20141113.RegisterTaskDefinition` → `RegisterTaskDefinition`.
    pub fn json_operation(&self) -> Option<&str> {
        self.headers.get("x-amz-target")?.rsplit('.').next()
    }

    pub fn json_body(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

impl Contract {
    pub fn start() -> Contract {
        Contract {
            proxy: FaultProxy::start(&moto().endpoint, vec![]),
        }
    }

    pub fn endpoint(&self) -> String {
        self.proxy.endpoint()
    }

    /// SDK configuration pointed through the recorder, for requests a test sends itself
    /// (deploying the stack) that real AWS must accept too.
    pub fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .endpoint_url(self.endpoint())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(
                aws_sdk_s3::config::Credentials::new("test", "test", None, None, "tests"),
            ))
            .build()
    }

    /// `backhaul` pointed at moto through the recorder.
    pub fn backhaul(&self) -> assert_cmd::Command {
        let mut cmd = backhaul();
        cmd.env("AWS_ENDPOINT_URL", self.endpoint())
            .env("S3_FORCE_PATH_STYLE", "true");
        cmd
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.proxy.recorded().iter().map(|r| decode(r)).collect()
    }

    /// The recorded JSON-protocol requests of one operation, in order.
    pub fn bodies(&self, operation: &str) -> Vec<serde_json::Value> {
        self.requests()
            .iter()
            .filter(|r| r.json_operation() == Some(operation))
            .map(Recorded::json_body)
            .collect()
    }

    /// Checks every request recorded so far; `expect` names operations (`ecs:RunTask`) that
    /// must be among them, so a test cannot pass by recording nothing.
    pub fn check(&self, expect: &[&str]) {
        check_records(&self.requests(), expect);
    }
}

/// Runs the checker over `records` and fails the test with its report on any violation.
pub fn check_records(records: &[Recorded], expect: &[&str]) {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    for r in records {
        // Object bytes say nothing about the contract; their length is what rules check.
        let omit = r.method == "PUT" && r.body.len() > 64 << 10;
        let body = if omit { &[][..] } else { &r.body[..] };
        let mut line = serde_json::json!({
            "method": r.method,
            "target": r.target,
            "headers": r.headers,
            "body_b64": base64::engine::general_purpose::STANDARD.encode(body),
        });
        if omit {
            line["body_omitted"] = r.body.len().into();
        }
        writeln!(file, "{line}").unwrap();
    }
    file.flush().unwrap();
    let mut cmd = Command::new(venv().join("bin/python"));
    cmd.arg(tests_dir().join("contract/check.py"))
        .arg(file.path());
    if !expect.is_empty() {
        cmd.arg("--expect").arg(expect.join(","));
    }
    let out = cmd.output().expect("run tests/contract/check.py");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "AWS contract violations:\n{report}");
}

/// A JSON-protocol request as the SDK would send it, for checking inputs that were only
/// printed (`--dry-run`), never sent.
pub fn json_request(target: &str, input: &serde_json::Value) -> Recorded {
    Recorded {
        method: "POST".into(),
        target: "/".into(),
        headers: BTreeMap::from([
            ("x-amz-target".to_string(), target.to_string()),
            (
                "content-type".to_string(),
                "application/x-amz-json-1.1".to_string(),
            ),
        ]),
        body: serde_json::to_vec(input).unwrap(),
    }
}

fn decode(raw: &[u8]) -> Recorded {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw.get(split + 4..).unwrap_or_default().to_vec();
    let mut lines = head.split("\r\n");
    let mut start = lines.next().unwrap_or_default().split_whitespace();
    let (method, target) = (
        start.next().unwrap_or_default().to_string(),
        start.next().unwrap_or_default().to_string(),
    );
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Recorded {
        method,
        target,
        headers,
        body,
    }
}

/// HTTP/1.1 chunked transfer coding → the body it carries (trailers dropped).
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        b = &b[eol + 2..];
        if size == 0 || b.len() < size {
            break;
        }
        out.extend_from_slice(&b[..size]);
        b = b.get(size + 2..).unwrap_or_default();
    }
    out
}
