//! S3 (and any S3-compatible server) as a destination.
//!
//! A stream smaller than one part becomes a single PutObject; anything larger becomes a
//! multipart upload whose parts are sent concurrently, bounded by [`PartPlan`]. Every part
//! carries a CRC32 checksum that S3 verifies on receipt; our own SHA-256 of the whole object
//! goes in the manifest. On failure the multipart upload is aborted, so no orphaned parts keep
//! costing money.
//!
//! Objects are created with `If-None-Match: *` (PutObject and CompleteMultipartUpload), so S3
//! itself refuses to replace a key another run wrote. Each object carries our [`run_id`] in
//! its metadata: a refusal of a *retried* request whose first attempt succeeded (the answer
//! was lost) is recognised as our own object, not reported as a collision.

use std::time::Duration;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier,
    ServerSideEncryption,
};
use aws_sdk_s3::Client;
use bytes::Bytes;
use tokio::task::{JoinHandle, JoinSet};

use crate::config::ConfigError;

use super::{
    run_id, Incomplete, LockInfo, ObjectInfo, PartBudget, PartPlan, Reader, Storage, StorageError,
    Stored, Unusable, Upload,
};

/// User metadata naming the run that created an object.
const OWNER_META: &str = "backhaul-run";

/// Server-side encryption (and Object Lock retention) requested for every object we write.
#[derive(Debug, Clone, Default)]
pub struct Sse {
    pub mode: Option<String>,
    pub kms_key_id: Option<String>,
    /// Per-object retention (`BACKUP_LOCK_DAYS`); the bucket must have Object Lock enabled.
    pub lock: Option<ObjectLock>,
}

/// Object Lock retention set on each object written: `mode` for `days` from the write.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectLock {
    /// GOVERNANCE or COMPLIANCE.
    pub mode: String,
    pub days: u32,
}

impl Sse {
    fn lock_mode(&self) -> Option<aws_sdk_s3::types::ObjectLockMode> {
        self.lock
            .as_ref()
            .map(|l| aws_sdk_s3::types::ObjectLockMode::from(l.mode.as_str()))
    }

    /// Counted from the request, so an upload that takes hours is still retained in full.
    fn lock_until(&self) -> Option<aws_sdk_s3::primitives::DateTime> {
        self.lock.as_ref().map(|l| {
            let until = chrono::Utc::now() + chrono::Duration::days(i64::from(l.days));
            aws_sdk_s3::primitives::DateTime::from_secs(until.timestamp())
        })
    }
}

pub struct S3Storage {
    client: Client,
    bucket: String,
    plan: PartPlan,
    sse: Sse,
    /// Shared by every upload of this storage: parts in flight over all of them.
    budget: PartBudget,
}

/// One line per failed call: the service's code and message (never the SDK's debug dump of
/// the raw response), with the IAM action to grant when access was denied.
fn err<E>(op: &'static str, key: &str, e: SdkError<E, HttpResponse>) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let action = match op {
        "get object" | "head object" => "s3:GetObject",
        "abort multipart upload" => "s3:AbortMultipartUpload",
        "list objects" => "s3:ListBucket",
        "list multipart uploads" => "s3:ListBucketMultipartUploads",
        "list parts" => "s3:ListMultipartUploadParts",
        "delete objects" => "s3:DeleteObject",
        _ => "s3:PutObject",
    };
    let e = crate::aws::error::from_sdk(action, &e);
    StorageError::backend(op, key, e.detail())
}

/// A conditional create refused: 412 (the key exists) or 409 (a concurrent conditional write
/// to the same key is in progress; S3 lets at most one of them win).
fn refused<E>(e: &SdkError<E, HttpResponse>) -> bool {
    e.raw_response()
        .is_some_and(|r| matches!(r.status().as_u16(), 409 | 412))
}

/// What a conditional create (PutObject, CompleteMultipartUpload) stored, from its answer:
/// the object's ETag and version, or, after a failure, what [`settle`] makes of it.
async fn created<E>(
    client: &Client,
    bucket: &str,
    key: &str,
    op: &'static str,
    parts: u32,
    answer: Result<(Option<String>, Option<String>), SdkError<E, HttpResponse>>,
) -> Result<Stored, StorageError>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match answer {
        Ok((etag, version_id)) => Ok(Stored {
            parts,
            etag,
            version_id: version(version_id.as_deref()),
        }),
        Err(e) => {
            let was_refused = refused(&e);
            let failure = err(op, key, e);
            settle(client, bucket, key, parts, was_refused, failure).await
        }
    }
}

/// After a create failed: if the key holds an object this process created, an earlier
/// attempt succeeded and only its answer was lost, so the create did happen. Otherwise a
/// refusal means another run's object, left untouched; any other failure stands.
async fn settle(
    client: &Client,
    bucket: &str,
    key: &str,
    parts: u32,
    was_refused: bool,
    failure: StorageError,
) -> Result<Stored, StorageError> {
    let head = client.head_object().bucket(bucket).key(key).send().await;
    if let Ok(h) = &head {
        let owner = h.metadata().and_then(|m| m.get(OWNER_META));
        if owner.map(String::as_str) == Some(run_id()) {
            return Ok(Stored {
                parts,
                etag: h.e_tag().map(str::to_string),
                version_id: version(h.version_id()),
            });
        }
    }
    if was_refused {
        Err(StorageError::Exists(format!("s3://{bucket}/{key}")))
    } else {
        Err(failure)
    }
}
/// Attempts per request when the user has not chosen (`AWS_MAX_ATTEMPTS` / `AWS_RETRY_MODE`).
/// The SDK's own default is 3; a backup that has already streamed gigabytes should ride out a
/// longer throttling burst (`503 SlowDown`) before giving up and aborting.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// Connecting to the endpoint: an unreachable S3 (black-holed route, wrong VPC endpoint)
/// fails the attempt after this instead of the OS's minutes-long TCP timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One request attempt, body upload included. Parts are at most a few hundred MiB, so this
/// allows well under 2 MB/s; its job is that a stuck part upload (a half-open connection, a
/// server that stopped answering) fails, is retried, and finally aborts the multipart upload
/// instead of hanging the backup forever. `BACKHAUL_S3_ATTEMPT_TIMEOUT` overrides it for S3
/// storage (very slow links, or tests that stall a part on purpose).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(300);

const ATTEMPT_TIMEOUT_VAR: &str = "BACKHAUL_S3_ATTEMPT_TIMEOUT";

fn timeouts(attempt: Duration) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(attempt)
        .build()
}

/// [`ATTEMPT_TIMEOUT`] unless `BACKHAUL_S3_ATTEMPT_TIMEOUT` (`90s`, `10m`) says otherwise.
fn attempt_timeout() -> Result<Duration, ConfigError> {
    match std::env::var(ATTEMPT_TIMEOUT_VAR) {
        Ok(v) if !v.trim().is_empty() => humantime::parse_duration(v.trim())
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                ConfigError::invalid(
                    ATTEMPT_TIMEOUT_VAR,
                    format!("\"{v}\" is not a duration like 90s or 10m"),
                )
            }),
        _ => Ok(ATTEMPT_TIMEOUT),
    }
}

/// Loads the standard AWS configuration chain (env, profile, ECS/IMDS credentials) once.
/// `AWS_ENDPOINT_URL` is honoured by the chain itself, after we checked it parses.
///
/// Defaults we add: standard retry mode (exponential backoff with jitter) with
/// [`DEFAULT_MAX_ATTEMPTS`] unless `AWS_MAX_ATTEMPTS` or `AWS_RETRY_MODE` says otherwise; and
/// the [`CONNECT_TIMEOUT`] / [`ATTEMPT_TIMEOUT`] timeouts, which the SDK leaves unset (no
/// timeout at all) by default. The retry settings are read and checked here, not by the
/// SDK's loader, which panics on a value it cannot use (`AWS_MAX_ATTEMPTS=0`).
pub async fn sdk_config() -> Result<aws_config::SdkConfig, ConfigError> {
    let retry = retry_config()?;
    check_endpoints()?;
    // Resolved first and passed in, so no provider (the credentials chain builds its own
    // region chain when given none) goes on to ask the instance metadata service.
    let region = region_chain().region().await.ok_or_else(|| {
        ConfigError::missing(
            "AWS_REGION",
            "no AWS region configured: set AWS_REGION (or a region in the AWS profile)",
        )
    })?;
    let loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(region)
        .timeout_config(timeouts(ATTEMPT_TIMEOUT))
        .retry_config(retry);
    Ok(loader.load().await)
}

fn env_setting(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

/// `AWS_MAX_ATTEMPTS` (1 or more) and `AWS_RETRY_MODE` (standard or adaptive), as the SDK
/// reads them, refused with exit 2 instead of the SDK's panic.
fn retry_config() -> Result<RetryConfig, ConfigError> {
    let mut retry = RetryConfig::standard().with_max_attempts(DEFAULT_MAX_ATTEMPTS);
    if let Some(v) = env_setting("AWS_MAX_ATTEMPTS") {
        let n = v
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| {
                ConfigError::invalid(
                    "AWS_MAX_ATTEMPTS",
                    format!(
                        "{} is not a number of attempts from 1 to 100 (1 = no retries)",
                        crate::config::quoted(&v)
                    ),
                )
            })?;
        retry = retry.with_max_attempts(n);
    }
    if let Some(v) = env_setting("AWS_RETRY_MODE") {
        let mode = v.parse::<aws_config::retry::RetryMode>().map_err(|_| {
            ConfigError::invalid(
                "AWS_RETRY_MODE",
                format!("{} is not standard or adaptive", crate::config::quoted(&v)),
            )
        })?;
        retry = retry.with_retry_mode(mode);
    }
    Ok(retry)
}

/// `AWS_ENDPOINT_URL` (and the per-service variables of the services backhaul calls) must be
/// an http(s) URL: a malformed one would otherwise fail only at the first request.
fn check_endpoints() -> Result<(), ConfigError> {
    for var in [
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ENDPOINT_URL_ECS",
        "AWS_ENDPOINT_URL_EVENTBRIDGE",
        "AWS_ENDPOINT_URL_SCHEDULER",
        "AWS_ENDPOINT_URL_CLOUDFORMATION",
        "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS",
    ] {
        let Some(v) = env_setting(var) else { continue };
        let ok = url::Url::parse(v.trim()).is_ok_and(|u| {
            matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
        });
        if !ok {
            return Err(ConfigError::invalid(
                var,
                format!(
                    "{} is not an http(s) URL like https://s3.eu-west-1.amazonaws.com or http://localhost:9000",
                    crate::config::quoted(&v)
                ),
            ));
        }
    }
    Ok(())
}

/// Environment, then profile: the SDK's default chain would go on to ask the EC2 instance
/// metadata service, which outside EC2 costs seconds of retries and three warnings before the
/// one line that matters ("no region"). ECS and Fargate set AWS_REGION for the task.
fn region_chain() -> aws_config::meta::region::RegionProviderChain {
    aws_config::meta::region::RegionProviderChain::first_try(
        aws_config::environment::region::EnvironmentVariableRegionProvider::new(),
    )
    .or_else(aws_config::profile::region::ProfileFileRegionProvider::new())
}

impl S3Storage {
    pub async fn connect(
        bucket: &str,
        force_path_style: bool,
        plan: PartPlan,
        sse: Sse,
    ) -> Result<S3Storage, ConfigError> {
        let attempt = attempt_timeout()?;
        let conf = sdk_config().await?;
        let s3conf = aws_sdk_s3::config::Builder::from(&conf)
            .force_path_style(force_path_style)
            .timeout_config(timeouts(attempt))
            .build();
        Ok(S3Storage {
            client: Client::from_conf(s3conf),
            bucket: bucket.to_string(),
            plan,
            sse,
            budget: PartBudget::for_plan(&plan),
        })
    }

    async fn get_object(
        &self,
        key: &str,
    ) -> Result<aws_sdk_s3::operation::get_object::GetObjectOutput, StorageError> {
        self.client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| {
                if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                    StorageError::NotFound(format!("s3://{}/{key}", self.bucket))
                } else {
                    err("get object", key, e)
                }
            })
    }

    /// HeadObject; a missing key is `None`, not an error.
    async fn head_object(
        &self,
        key: &str,
    ) -> Result<Option<aws_sdk_s3::operation::head_object::HeadObjectOutput>, StorageError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(o) => Ok(Some(o)),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(err("head object", key, e)),
        }
    }

    fn sse_mode(&self) -> Option<ServerSideEncryption> {
        self.sse.mode.as_deref().map(ServerSideEncryption::from)
    }

    /// PutObject that may replace what is under `key` (put_bytes, put_bytes_locked), with
    /// the bucket's encryption and the given Object Lock settings.
    async fn put_plain(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
        (mode, until, hold): PutLock,
        checksum: bool,
    ) -> Result<(), StorageError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .set_server_side_encryption(self.sse_mode())
            .set_ssekms_key_id(self.sse.kms_key_id.clone())
            .set_object_lock_mode(mode)
            .set_object_lock_retain_until_date(until)
            .set_object_lock_legal_hold_status(hold)
            // S3 requires an integrity header on Object Lock puts.
            .set_checksum_algorithm(checksum.then_some(ChecksumAlgorithm::Crc32))
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| err("put object", key, e))?;
        Ok(())
    }
}

struct S3Upload {
    client: Client,
    bucket: String,
    key: String,
    plan: PartPlan,
    sse: Sse,
    budget: PartBudget,
    /// The first part is held back: if the stream ends within it, a single PutObject is cheaper
    /// and leaves nothing to abort.
    first: Option<Bytes>,
    upload_id: Option<String>,
    /// A CreateMultipartUpload whose answer has not been seen yet (see `start_multipart`).
    creating: Option<JoinHandle<Result<String, StorageError>>>,
    next_part: i32,
    in_flight: JoinSet<Result<CompletedPart, StorageError>>,
    done: Vec<CompletedPart>,
    closed: bool,
}

impl S3Upload {
    /// Sends CreateMultipartUpload as a task of its own and waits for its answer. A caller
    /// dropped meanwhile (a signal, the backup timeout) must not lose the upload id of an
    /// upload S3 has already created: the task lives on in `creating`, and `abort` (or `Drop`)
    /// waits for it before aborting.
    async fn start_multipart(&mut self) -> Result<(), StorageError> {
        let request = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .content_type("application/octet-stream")
            .metadata(OWNER_META, run_id())
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .set_server_side_encryption(self.sse.mode.as_deref().map(ServerSideEncryption::from))
            .set_ssekms_key_id(self.sse.kms_key_id.clone())
            .set_object_lock_mode(self.sse.lock_mode())
            .set_object_lock_retain_until_date(self.sse.lock_until());
        let key = self.key.clone();
        self.creating = Some(tokio::spawn(async move {
            let out = request
                .send()
                .await
                .map_err(|e| err("create multipart upload", &key, e))?;
            out.upload_id().map(str::to_string).ok_or_else(|| {
                StorageError::backend("create multipart upload", &key, "no upload id in response")
            })
        }));
        self.settle_create().await
    }

    /// Waits for the CreateMultipartUpload in flight, if any, and keeps its upload id.
    /// Cancel-safe: dropped while waiting, the request stays in `creating`.
    async fn settle_create(&mut self) -> Result<(), StorageError> {
        let Some(creating) = self.creating.as_mut() else {
            return Ok(());
        };
        let answer = creating.await;
        self.creating = None;
        let id = answer.map_err(|join| {
            StorageError::backend(
                "create multipart upload",
                &self.key,
                format!("task failed: {join}"),
            )
        })??;
        self.upload_id = Some(id);
        Ok(())
    }

    async fn send_part(&mut self, body: Bytes) -> Result<(), StorageError> {
        let limit = self.plan.in_flight_for(body.len());
        while self.in_flight.len() >= limit {
            self.reap_one().await?;
        }
        // Held by the request task until the part is sent or failed.
        let share = self.budget.acquire(body.len()).await;
        self.next_part += 1;
        let (client, bucket, key) = (self.client.clone(), self.bucket.clone(), self.key.clone());
        let upload_id = self.upload_id.clone().expect("multipart started");
        let number = self.next_part;
        self.in_flight.spawn(async move {
            let _share = share;
            let out = client
                .upload_part()
                .bucket(&bucket)
                .key(&key)
                .upload_id(upload_id)
                .part_number(number)
                .checksum_algorithm(ChecksumAlgorithm::Crc32)
                .body(ByteStream::from(body))
                // Integrity is the signed CRC32 header S3 checks and the manifest's SHA-256;
                // SigV4's own SHA-256 of every byte was a second hashing pass (issue 32).
                .customize()
                .disable_payload_signing()
                .send()
                .await
                .map_err(|e| err("upload part", &key, e))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_string))
                .set_checksum_crc32(out.checksum_crc32().map(str::to_string))
                .build())
        });
        Ok(())
    }

    async fn reap_one(&mut self) -> Result<(), StorageError> {
        match self.in_flight.join_next().await {
            Some(Ok(Ok(part))) => {
                self.done.push(part);
                Ok(())
            }
            Some(Ok(Err(e))) => Err(e),
            Some(Err(join)) => Err(StorageError::backend(
                "upload part",
                &self.key,
                format!("task failed: {join}"),
            )),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Upload for S3Upload {
    async fn write(&mut self, part: Bytes) -> Result<(), StorageError> {
        if self.closed {
            return Err(StorageError::backend(
                "write",
                &self.key,
                "upload already closed",
            ));
        }
        if self.upload_id.is_none() {
            match self.first.take() {
                None => {
                    self.first = Some(part);
                    return Ok(());
                }
                Some(first) => {
                    self.start_multipart().await?;
                    self.send_part(first).await?;
                }
            }
        }
        self.send_part(part).await
    }

    async fn finish(&mut self) -> Result<Stored, StorageError> {
        if self.closed {
            return Err(StorageError::backend(
                "finish",
                &self.key,
                "upload already closed",
            ));
        }
        let Some(upload_id) = self.upload_id.clone() else {
            let body = self.first.take().unwrap_or_default();
            let res = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(&self.key)
                .if_none_match("*")
                .metadata(OWNER_META, run_id())
                .content_type("application/octet-stream")
                .checksum_algorithm(ChecksumAlgorithm::Crc32)
                .set_server_side_encryption(
                    self.sse.mode.as_deref().map(ServerSideEncryption::from),
                )
                .set_ssekms_key_id(self.sse.kms_key_id.clone())
                .set_object_lock_mode(self.sse.lock_mode())
                .set_object_lock_retain_until_date(self.sse.lock_until())
                .body(ByteStream::from(body))
                // As for UploadPart: the CRC32 and the manifest's SHA-256 guard these bytes.
                .customize()
                .disable_payload_signing()
                .send()
                .await;
            self.closed = true;
            let answer = res.map(|o| (o.e_tag, o.version_id));
            return created(
                &self.client,
                &self.bucket,
                &self.key,
                "put object",
                1,
                answer,
            )
            .await;
        };
        while !self.in_flight.is_empty() {
            self.reap_one().await?;
        }
        let mut parts = std::mem::take(&mut self.done);
        parts.sort_by_key(|p| p.part_number());
        let count = parts.len() as u32;
        let res = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&upload_id)
            .if_none_match("*")
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        // A refused completion leaves the upload open: the caller's abort discards it.
        let answer = res.map(|o| (o.e_tag, o.version_id));
        let stored = created(
            &self.client,
            &self.bucket,
            &self.key,
            "complete multipart upload",
            count,
            answer,
        )
        .await?;
        self.upload_id = None;
        self.closed = true;
        Ok(stored)
    }

    async fn abort(&mut self) -> Result<(), StorageError> {
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        self.first = None;
        self.closed = true;
        // A create that failed created nothing to abort.
        let _ = self.settle_create().await;
        // The id stays in `self` until S3 confirmed the abort: this future may be dropped
        // midway (main's shutdown grace ran out on a slow S3), and `Drop` can only hand on an
        // abort whose upload id it still has. Taking the id first forgot the upload then.
        if let Some(id) = self.upload_id.clone() {
            let done = abort_confirmed(&self.client, &self.bucket, &self.key, &id).await;
            self.upload_id = None;
            done?;
        }
        Ok(())
    }
}

/// Rounds of AbortMultipartUpload (each followed by a ListParts check) when a backup stops.
const ABORT_ROUNDS: u32 = 5;

/// Aborts a multipart upload and makes sure it is gone.
///
/// A stopping backup cancels its part uploads on our side, but requests already on the wire
/// are still being handled by S3. AWS documents that such parts "might or might not succeed",
/// that an upload may have to be aborted more than once, and that ListParts tells whether it
/// is gone. moto shows the same hazard another way: an abort that overlaps a part upload fails
/// with a 500 (its dispose loop iterates the parts while the other request adds one; see
/// tests/emulator/moto_abort_race.py). So: abort, retried on failure whatever the client's
/// retry setting; then ListParts; if the upload is still listed, abort again.
async fn abort_confirmed(
    client: &Client,
    bucket: &str,
    key: &str,
    id: &str,
) -> Result<(), StorageError> {
    let mut failure = None;
    for round in 1..=ABORT_ROUNDS {
        if round > 1 {
            // 0.2, 0.4, 0.8, 1.6 s: parts still landing have had time to, well inside the
            // shutdown grace.
            tokio::time::sleep(Duration::from_millis(100 << (round - 1))).await;
        }
        let res = client
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(id)
            .send()
            .await;
        match res {
            Ok(_) => failure = None,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_upload()) => failure = None,
            Err(e) => {
                failure = Some(err("abort multipart upload", key, e));
                continue;
            }
        }
        match upload_state(client, bucket, key, id).await {
            UploadState::Gone => {
                tracing::debug!(key = %key, upload_id = %id, round, "multipart upload aborted");
                return Ok(());
            }
            UploadState::Listed => {
                tracing::debug!(key = %key, upload_id = %id, round, "multipart upload still listed after its abort; aborting again");
            }
            // The abort was answered; a check that cannot be read does not undo that.
            UploadState::Unknown => return Ok(()),
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Err(StorageError::backend(
            "abort multipart upload",
            key,
            format!("upload {id} is still listed after {ABORT_ROUNDS} aborts"),
        )),
    }
}

/// What ListParts says of an upload we aborted.
enum UploadState {
    Gone,
    Listed,
    Unknown,
}

async fn upload_state(client: &Client, bucket: &str, key: &str, id: &str) -> UploadState {
    let res = client
        .list_parts()
        .bucket(bucket)
        .key(key)
        .upload_id(id)
        .max_parts(1)
        .send()
        .await;
    match res {
        Ok(_) => UploadState::Listed,
        // NoSuchUpload (not among ListParts' modelled errors, so matched by status).
        Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => UploadState::Gone,
        Err(e) => {
            tracing::debug!(key = %key, error = %err("list parts", key, e), "cannot check that the upload is gone");
            UploadState::Unknown
        }
    }
}

/// Object Lock settings of one PutObject: mode, retain-until, legal hold.
type PutLock = (
    Option<aws_sdk_s3::types::ObjectLockMode>,
    Option<aws_sdk_s3::primitives::DateTime>,
    Option<aws_sdk_s3::types::ObjectLockLegalHoldStatus>,
);

impl Drop for S3Upload {
    /// Last line of defence (a panic, or a command dropped after the shutdown grace): abort in
    /// the background, awaited by main before exit, so the lifecycle rule is not the only
    /// cleanup.
    fn drop(&mut self) {
        let creating = self.creating.take();
        let id = self.upload_id.take();
        if creating.is_none() && id.is_none() {
            return;
        }
        self.in_flight.abort_all();
        let (client, bucket, key) = (self.client.clone(), self.bucket.clone(), self.key.clone());
        crate::cleanup::defer("aborting a multipart upload", async move {
            let id = match creating {
                Some(creating) => creating.await.ok().and_then(Result::ok),
                None => id,
            };
            let Some(id) = id else { return };
            if let Err(e) = abort_confirmed(&client, &bucket, &key, &id).await {
                tracing::warn!(key = %key, error = %e, "could not abort the upload; the bucket's lifecycle rule will remove its parts");
            }
        });
    }
}

#[async_trait]
impl Storage for S3Storage {
    /// HeadBucket, then (with `--lock-days`) GetObjectLockConfiguration. A 403 does not
    /// stop the backup: the bucket exists, and a role limited to its stage prefix (the
    /// stack's) may lack the bucket-wide permission these need while writing works.
    async fn check_writable(&self) -> Result<(), Unusable> {
        let b = &self.bucket;
        if let Err(e) = self.client.head_bucket().bucket(b).send().await {
            let status = e.raw_response().map(|r| r.status().as_u16());
            let region = e
                .raw_response()
                .and_then(|r| r.headers().get("x-amz-bucket-region"))
                .map(str::to_string);
            match (status, region) {
                (Some(404), _) => {
                    return Err(Unusable::Destination(format!(
                        "\"{b}\": no such bucket: create it, or correct the name"
                    )))
                }
                (Some(301), Some(r)) => {
                    return Err(Unusable::Destination(format!(
                        "\"{b}\" is in region {r}: set AWS_REGION={r}"
                    )))
                }
                (Some(403), _) => {
                    tracing::debug!(bucket = %b, "HeadBucket denied (s3:ListBucket); the bucket exists, going on");
                }
                _ => {
                    let e = crate::aws::error::from_sdk("s3:ListBucket", &e);
                    return Err(Unusable::Service(format!(
                        "bucket \"{b}\" cannot be reached: {}",
                        e.detail()
                    )));
                }
            }
        }
        if self.sse.lock.is_none() {
            return Ok(());
        }
        let no_lock = || {
            Unusable::Lock(format!(
                "needs Object Lock, which bucket \"{b}\" does not have enabled: use a bucket created with Object Lock, or unset BACKUP_LOCK_DAYS"
            ))
        };
        match self
            .client
            .get_object_lock_configuration()
            .bucket(b)
            .send()
            .await
        {
            Ok(o) => {
                let enabled = o
                    .object_lock_configuration()
                    .and_then(|c| c.object_lock_enabled())
                    == Some(&aws_sdk_s3::types::ObjectLockEnabled::Enabled);
                if enabled {
                    Ok(())
                } else {
                    Err(no_lock())
                }
            }
            Err(e) if e.code() == Some("ObjectLockConfigurationNotFoundError") => Err(no_lock()),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 403) => {
                tracing::warn!(bucket = %b, "cannot check the bucket has Object Lock (s3:GetBucketObjectLockConfiguration denied); going on");
                Ok(())
            }
            Err(e) => {
                let e = crate::aws::error::from_sdk("s3:GetBucketObjectLockConfiguration", &e);
                Err(Unusable::Service(format!(
                    "bucket \"{b}\": cannot read its Object Lock configuration: {}",
                    e.detail()
                )))
            }
        }
    }

    fn part_size(&self, index: u32) -> usize {
        self.plan.part_size(index)
    }

    async fn begin(&self, key: &str) -> Result<Box<dyn Upload>, StorageError> {
        Ok(Box::new(S3Upload {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: key.to_string(),
            plan: self.plan,
            sse: self.sse.clone(),
            budget: self.budget.clone(),
            first: None,
            upload_id: None,
            creating: None,
            next_part: 0,
            in_flight: JoinSet::new(),
            done: Vec::new(),
            closed: false,
        }))
    }

    async fn put_bytes(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<(), StorageError> {
        let lock = (self.sse.lock_mode(), self.sse.lock_until(), None);
        let locking = self.sse.lock.is_some();
        self.put_plain(key, body, content_type, lock, locking).await
    }

    async fn put_bytes_locked(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
        lock: &LockInfo,
    ) -> Result<(), StorageError> {
        let until = lock
            .retain_until
            .filter(|t| *t > chrono::Utc::now())
            .map(|t| aws_sdk_s3::primitives::DateTime::from_secs(t.timestamp()));
        let mode = until.and(
            lock.mode
                .as_deref()
                .map(aws_sdk_s3::types::ObjectLockMode::from),
        );
        let hold = lock
            .legal_hold
            .then_some(aws_sdk_s3::types::ObjectLockLegalHoldStatus::On);
        // Always with a checksum: the object it replaces may be locked.
        self.put_plain(key, body, content_type, (mode, until, hold), true)
            .await
    }

    async fn put_new(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<Stored, StorageError> {
        let res = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .if_none_match("*")
            .metadata(OWNER_META, run_id())
            .content_type(content_type)
            .set_server_side_encryption(self.sse_mode())
            .set_ssekms_key_id(self.sse.kms_key_id.clone())
            .set_object_lock_mode(self.sse.lock_mode())
            .set_object_lock_retain_until_date(self.sse.lock_until())
            // S3 requires an integrity header on Object Lock puts.
            .set_checksum_algorithm(self.sse.lock.as_ref().map(|_| ChecksumAlgorithm::Crc32))
            .body(ByteStream::from(body))
            .send()
            .await;
        let answer = res.map(|o| (o.e_tag, o.version_id));
        created(&self.client, &self.bucket, key, "put object", 1, answer).await
    }

    async fn get(&self, key: &str) -> Result<Reader, StorageError> {
        let out = self.get_object(key).await?;
        Ok(Box::new(out.body.into_async_read()))
    }

    async fn get_bytes(&self, key: &str) -> Result<Bytes, StorageError> {
        let out = self.get_object(key).await?;
        let data = out.body.collect().await.map_err(|e| {
            StorageError::backend("read object", key, DisplayErrorContext(e).to_string())
        })?;
        Ok(data.into_bytes())
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StorageError> {
        Ok(self.head_object(key).await?.map(|o| ObjectInfo {
            key: key.to_string(),
            size: o.content_length().unwrap_or(0).max(0) as u64,
            last_modified: o.last_modified().and_then(to_chrono),
            etag: o.e_tag().map(str::to_string),
            version_id: version(o.version_id()),
            written_by_backhaul: o.metadata().is_some_and(|m| m.contains_key(OWNER_META)),
        }))
    }

    /// From HeadObject, which carries the lock headers only for callers allowed
    /// s3:GetObjectRetention and s3:GetObjectLegalHold (the stack's task role is).
    async fn lock(&self, key: &str) -> Result<Option<LockInfo>, StorageError> {
        Ok(self.head_object(key).await?.and_then(|o| {
            Some(LockInfo {
                mode: o.object_lock_mode().map(|m| m.as_str().to_string()),
                retain_until: o.object_lock_retain_until_date().and_then(to_chrono),
                legal_hold: o.object_lock_legal_hold_status()
                    == Some(&aws_sdk_s3::types::ObjectLockLegalHoldStatus::On),
            })
            .filter(|l| l.mode.is_some() || l.retain_until.is_some() || l.legal_hold)
        }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| err("list objects", prefix, e))?;
            for o in page.contents() {
                if let Some(key) = o.key() {
                    out.push(ObjectInfo {
                        key: key.to_string(),
                        size: o.size().unwrap_or(0).max(0) as u64,
                        last_modified: o.last_modified().and_then(to_chrono),
                        etag: o.e_tag().map(str::to_string),
                        version_id: None,
                        written_by_backhaul: false,
                    });
                }
            }
        }
        Ok(out)
    }

    async fn delete(&self, keys: &[String]) -> Result<(), StorageError> {
        // DeleteObjects takes at most 1,000 keys per request.
        for chunk in keys.chunks(1000) {
            let objects = chunk
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StorageError::backend("delete objects", &chunk[0], e.to_string()))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| StorageError::backend("delete objects", &chunk[0], e.to_string()))?;
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| err("delete objects", &chunk[0], e))?;
            if let Some(first) = out.errors().first() {
                return Err(StorageError::backend(
                    "delete objects",
                    first.key().unwrap_or("?"),
                    first.message().unwrap_or("failed").to_string(),
                ));
            }
        }
        Ok(())
    }

    async fn incomplete(&self, prefix: &str) -> Result<Vec<Incomplete>, StorageError> {
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (None, None);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| err("list multipart uploads", prefix, e))?;
            for u in page.uploads() {
                if let (Some(key), Some(id)) = (u.key(), u.upload_id()) {
                    out.push(Incomplete {
                        key: key.to_string(),
                        id: id.to_string(),
                        initiated: u.initiated().and_then(to_chrono),
                        bytes: None,
                    });
                }
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
            if page.is_truncated() != Some(true) || (key_marker.is_none() && id_marker.is_none()) {
                break;
            }
        }
        for u in &mut out {
            u.bytes = self.uploaded_bytes(u).await;
        }
        out.sort_by(|a, b| (a.initiated, &a.key).cmp(&(b.initiated, &b.key)));
        Ok(out)
    }

    async fn abort_incomplete(&self, upload: &Incomplete) -> Result<(), StorageError> {
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&upload.key)
            .upload_id(&upload.id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_upload()) => Ok(()),
            Err(e) => Err(err("abort multipart upload", &upload.key, e)),
        }
    }
}

impl S3Storage {
    /// Sum of the part sizes of one open upload (0 if it ended meanwhile); `None` if ListParts
    /// fails (moto 5.2.5 answers it with a root element the SDK rejects): the count and age
    /// of leftovers matter more than their size, so that is not an error.
    async fn uploaded_bytes(&self, u: &Incomplete) -> Option<u64> {
        let mut pages = self
            .client
            .list_parts()
            .bucket(&self.bucket)
            .key(&u.key)
            .upload_id(&u.id)
            .into_paginator()
            .send();
        let mut total = 0u64;
        while let Some(page) = pages.next().await {
            match page {
                Ok(p) => {
                    total += p
                        .parts()
                        .iter()
                        .map(|p| p.size().unwrap_or(0).max(0) as u64)
                        .sum::<u64>()
                }
                // NoSuchUpload (not in ListParts' modelled errors): aborted or completed since.
                Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {
                    return Some(0)
                }
                Err(e) => {
                    tracing::warn!(key = %u.key, error = %err("list parts", &u.key, e), "cannot size an incomplete upload");
                    return None;
                }
            }
        }
        Some(total)
    }
}

/// A version id worth recording: `null` is what S3 (and moto) call the one object of an
/// unversioned key, so it says nothing a later HeadObject could contradict.
fn version(v: Option<&str>) -> Option<String> {
    v.filter(|v| *v != "null").map(str::to_string)
}

fn to_chrono(t: &aws_sdk_s3::primitives::DateTime) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}
