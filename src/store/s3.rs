//! An S3 bucket (AWS or an S3-compatible server), through `aws-sdk-s3`.
//!
//! * Listing is ListObjectVersions (every version and delete marker), or
//!   ListObjectsV2 on a bucket that GetBucketVersioning says never had
//!   versioning (cheaper, same objects; its items have no version, and are
//!   deleted and read by key), then ListMultipartUploads, page by page, as
//!   a stream. Any doubt about versioning lists versions.
//! * The version id `null` (an object written before versioning was
//!   enabled, or while it was suspended, and a marker written while
//!   suspended) is kept as the version `null`, like any other id: a
//!   version-less delete on a versioned bucket only adds a delete marker
//!   and leaves that version's data in place, so it is deleted, and its
//!   lock and metadata read, by `VersionId=null`.
//! * Deleting is DeleteObjects, up to 1000 keys per call, several calls in
//!   flight; the reply's per-key errors become per-item errors. Incomplete
//!   uploads are aborted with AbortMultipartUpload.
//! * Object Lock is not in listings: [`S3Store::describe`] asks HeadObject
//!   for each candidate version, but only when the bucket has Object Lock
//!   enabled (or when that cannot be read: refusal on doubt). HeadObject is
//!   used rather than GetObjectRetention/GetObjectLegalHold because it
//!   answers both in one call (and moto's GetObjectRetention is broken).
//! * `expected_account` is sent as `x-amz-expected-bucket-owner` on every
//!   request, so S3 itself refuses a bucket owned by another account; the
//!   identity check also compares the owner in the bucket's ACL.
//!
//! Throttling and 5xx answers are retried by the SDK's standard retry mode
//! (exponential backoff with jitter, 5 attempts).

use super::blob::{flatten_pages, BlobMeta, BlobRef, BlobStore, StoreError};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::types::{Delete, ObjectIdentifier, ObjectLockLegalHoldStatus};
use aws_sdk_s3::Client;
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream, StreamExt};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use tokio::sync::OnceCell;

/// How many requests (DeleteObjects, HeadObject) one store has in flight.
const IN_FLIGHT: usize = 8;

/// An S3 bucket.
pub struct S3Store {
    name: String,
    bucket: String,
    region: Option<String>,
    endpoint: Option<String>,
    force_path_style: bool,
    expected_owner: Option<String>,
    client: OnceCell<Client>,
    /// Whether the bucket has Object Lock enabled (None: unknown).
    lock_enabled: OnceCell<bool>,
    /// Whether versioning was ever enabled on the bucket (None: unknown).
    ever_versioned: OnceCell<bool>,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("name", &self.name)
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "store `{}` (s3://{})", self.name, self.bucket)
    }
}

impl S3Store {
    /// A store for `bucket`; the client is built on first use (credentials
    /// come from the standard AWS chain: environment, profile, web
    /// identity, container or instance metadata).
    pub fn new(
        name: &str,
        bucket: &str,
        region: Option<String>,
        endpoint: Option<String>,
        force_path_style: bool,
        expected_owner: Option<String>,
    ) -> S3Store {
        S3Store {
            name: name.to_string(),
            bucket: bucket.to_string(),
            region,
            endpoint,
            force_path_style,
            expected_owner,
            client: OnceCell::new(),
            lock_enabled: OnceCell::new(),
            ever_versioned: OnceCell::new(),
        }
    }

    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| async {
                use aws_smithy_http_client::tls;
                let http = aws_smithy_http_client::Builder::new()
                    .tls_provider(tls::Provider::Rustls(
                        tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .build_https();
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .http_client(http)
                    .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(5));
                if let Some(region) = &self.region {
                    loader = loader.region(aws_config::Region::new(region.clone()));
                }
                let shared = loader.load().await;
                let mut config = aws_sdk_s3::config::Builder::from(&shared)
                    .force_path_style(self.force_path_style);
                if shared.region().is_none() {
                    // S3 needs a region to sign; us-east-1 is its global one.
                    config = config.region(aws_config::Region::new("us-east-1"));
                }
                if let Some(endpoint) = &self.endpoint {
                    config = config.endpoint_url(endpoint);
                }
                Client::from_conf(config.build())
            })
            .await
    }

    /// One page of versions and delete markers.
    async fn versions_page(
        &self,
        prefix: &str,
        key_marker: Option<String>,
        version_marker: Option<String>,
    ) -> Result<(Vec<BlobMeta>, Option<(String, Option<String>)>), StoreError> {
        let page = self
            .client()
            .await
            .list_object_versions()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_key_marker(key_marker)
            .set_version_id_marker(version_marker)
            .set_expected_bucket_owner(self.expected_owner.clone())
            .send()
            .await
            .map_err(|e| self.error("ListObjectVersions", e))?;
        let mut out = Vec::with_capacity(page.versions().len() + page.delete_markers().len());
        for v in page.versions() {
            out.push(BlobMeta {
                key: v.key().unwrap_or_default().to_string(),
                version: v.version_id().map(str::to_string),
                last_modified: time(v.last_modified()),
                size: v.size().unwrap_or(0).max(0) as u64,
                is_latest: v.is_latest().unwrap_or(false),
                delete_marker: false,
                metadata: Default::default(),
                locked: None,
                pending: false,
            });
        }
        for m in page.delete_markers() {
            out.push(BlobMeta {
                key: m.key().unwrap_or_default().to_string(),
                version: m.version_id().map(str::to_string),
                last_modified: time(m.last_modified()),
                size: 0,
                is_latest: m.is_latest().unwrap_or(false),
                delete_marker: true,
                metadata: Default::default(),
                locked: None,
                pending: false,
            });
        }
        // S3 returns versions and delete markers as two lists: one page in
        // key order (stable: a key's versions keep theirs).
        out.sort_by(|a, b| a.key.cmp(&b.key));
        let next = page
            .is_truncated()
            .unwrap_or(false)
            .then(|| page.next_key_marker().map(str::to_string))
            .flatten()
            .map(|k| (k, page.next_version_id_marker().map(str::to_string)));
        Ok((out, next))
    }

    /// One page of ListObjectsV2, for a bucket that never had versioning:
    /// cheaper for S3 than listing versions, and the same objects.
    async fn objects_page(
        &self,
        prefix: &str,
        token: Option<String>,
    ) -> Result<(Vec<BlobMeta>, Option<String>), StoreError> {
        let page = self
            .client()
            .await
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_continuation_token(token)
            .set_expected_bucket_owner(self.expected_owner.clone())
            .send()
            .await
            .map_err(|e| self.error("ListObjectsV2", e))?;
        let out = page
            .contents()
            .iter()
            .map(|o| BlobMeta {
                key: o.key().unwrap_or_default().to_string(),
                version: None,
                last_modified: time(o.last_modified()),
                size: o.size().unwrap_or(0).max(0) as u64,
                is_latest: true,
                delete_marker: false,
                metadata: Default::default(),
                locked: None,
                pending: false,
            })
            .collect();
        let next = page
            .is_truncated()
            .unwrap_or(false)
            .then(|| page.next_continuation_token().map(str::to_string))
            .flatten();
        Ok((out, next))
    }

    /// Whether the bucket has (or had) versioning: true unless S3 says it
    /// was never enabled (a suspended bucket still holds versions), so any
    /// doubt lists versions.
    async fn ever_versioned(&self) -> bool {
        *self
            .ever_versioned
            .get_or_init(|| async {
                let answer = self
                    .client()
                    .await
                    .get_bucket_versioning()
                    .bucket(&self.bucket)
                    .set_expected_bucket_owner(self.expected_owner.clone())
                    .send()
                    .await;
                match answer {
                    Ok(out) => out.status().is_some(),
                    // A reply the SDK could not read may still plainly say
                    // "never enabled" (moto names its root element
                    // GetBucketVersioningResponse).
                    Err(e) => !e.raw_response().is_some_and(|r| {
                        r.status().as_u16() == 200
                            && r.body().bytes().is_some_and(says_never_versioned)
                    }),
                }
            })
            .await
    }

    /// One page of incomplete multipart uploads.
    async fn uploads_page(
        &self,
        prefix: &str,
        key_marker: Option<String>,
        upload_marker: Option<String>,
    ) -> Result<(Vec<BlobMeta>, Option<(String, Option<String>)>), StoreError> {
        let page = self
            .client()
            .await
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_key_marker(key_marker)
            .set_upload_id_marker(upload_marker)
            .set_expected_bucket_owner(self.expected_owner.clone())
            .send()
            .await
            .map_err(|e| self.error("ListMultipartUploads", e))?;
        let out = page
            .uploads()
            .iter()
            .map(|u| BlobMeta {
                key: u.key().unwrap_or_default().to_string(),
                version: u.upload_id().map(str::to_string),
                last_modified: time(u.initiated()),
                size: 0,
                is_latest: false,
                delete_marker: false,
                metadata: Default::default(),
                locked: None,
                pending: true,
            })
            .collect();
        let next = page
            .is_truncated()
            .unwrap_or(false)
            .then(|| page.next_key_marker().map(str::to_string))
            .flatten()
            .map(|k| (k, page.next_upload_id_marker().map(str::to_string)));
        Ok((out, next))
    }

    /// Every incomplete multipart upload under `prefix`, in key order.
    async fn uploads(&self, prefix: &str) -> Result<VecDeque<BlobMeta>, StoreError> {
        let mut all = Vec::new();
        let mut at: Option<(String, Option<String>)> = None;
        loop {
            let (k, u) = at.map_or((None, None), |(k, u)| (Some(k), u));
            let (page, next) = self.uploads_page(prefix, k, u).await?;
            all.extend(page);
            match next {
                Some(next) => at = Some(next),
                None => break,
            }
        }
        all.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(all.into())
    }

    /// Whether the bucket has Object Lock enabled; true when that cannot be
    /// read for any reason but "not configured" (refusal on doubt: every
    /// candidate then gets a HeadObject).
    async fn lock_enabled(&self) -> bool {
        *self
            .lock_enabled
            .get_or_init(|| async {
                let answer = self
                    .client()
                    .await
                    .get_object_lock_configuration()
                    .bucket(&self.bucket)
                    .set_expected_bucket_owner(self.expected_owner.clone())
                    .send()
                    .await;
                match answer {
                    Ok(out) => out.object_lock_configuration().is_some_and(|c| {
                        c.object_lock_enabled()
                            .is_some_and(|e| e.as_str() == "Enabled")
                    }),
                    Err(e) => e
                        .as_service_error()
                        .and_then(|s| s.code())
                        .is_none_or(|code| code != "ObjectLockConfigurationNotFoundError"),
                }
            })
            .await
    }

    /// Lock state and (when asked) user metadata of one version, by its id
    /// (`null` included: without one, HeadObject reads the latest).
    async fn head(&self, item: &mut BlobMeta, metadata: bool) -> Result<(), StoreError> {
        let answer = self
            .client()
            .await
            .head_object()
            .bucket(&self.bucket)
            .key(&item.key)
            .set_version_id(item.version.clone())
            .set_expected_bucket_owner(self.expected_owner.clone())
            .send()
            .await;
        let head = match answer {
            Ok(head) => head,
            // Gone since it was listed: nothing left to protect or delete.
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => return Ok(()),
            Err(e) => return Err(self.error("HeadObject", e)),
        };
        if head.object_lock_legal_hold_status() == Some(&ObjectLockLegalHoldStatus::On) {
            item.locked = Some("S3 Object Lock legal hold".into());
        } else if let (Some(mode), Some(until)) = (
            head.object_lock_mode(),
            head.object_lock_retain_until_date(),
        ) {
            let until = time(Some(until));
            if until > Utc::now() {
                item.locked = Some(format!(
                    "S3 Object Lock {} retention until {}",
                    mode.as_str(),
                    until.format("%Y-%m-%dT%H:%M:%SZ")
                ));
            }
        }
        if metadata {
            item.metadata = head
                .metadata()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default();
        }
        Ok(())
    }

    /// One DeleteObjects call (at most 1000 items, none pending).
    async fn delete_objects(&self, items: &[&BlobRef]) -> Vec<Result<(), StoreError>> {
        let objects: Result<Vec<ObjectIdentifier>, _> = items
            .iter()
            .map(|i| {
                ObjectIdentifier::builder()
                    .key(&i.key)
                    .set_version_id(i.version.clone())
                    .build()
            })
            .collect();
        let delete =
            objects.and_then(|o| Delete::builder().set_objects(Some(o)).quiet(true).build());
        let delete = match delete {
            Ok(d) => d,
            Err(e) => return vec![Err(StoreError::Other(e.to_string())); items.len()],
        };
        let answer = self
            .client()
            .await
            .delete_objects()
            .bucket(&self.bucket)
            .delete(delete)
            .set_expected_bucket_owner(self.expected_owner.clone())
            .send()
            .await;
        let reply = match answer {
            Ok(reply) => reply,
            Err(e) => {
                let e = self.error("DeleteObjects", e);
                return vec![Err(e); items.len()];
            }
        };
        // Quiet mode: the reply lists only the keys that failed.
        let mut failed: HashMap<(&str, Option<&str>), StoreError> = HashMap::new();
        for e in reply.errors() {
            let code = e.code().unwrap_or("error");
            let message = format!("{code}: {}", e.message().unwrap_or_default());
            let error = match code {
                "AccessDenied" => StoreError::Refused(message),
                // Already gone is what we wanted.
                "NoSuchKey" | "NoSuchVersion" => continue,
                _ => StoreError::Other(message),
            };
            failed.insert((e.key().unwrap_or_default(), e.version_id()), error);
        }
        per_item(items, &failed)
    }

    async fn abort_upload(&self, item: &BlobRef) -> Result<(), StoreError> {
        let answer = self
            .client()
            .await
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&item.key)
            .set_upload_id(item.version.clone())
            .set_expected_bucket_owner(self.expected_owner.clone())
            .send()
            .await;
        match answer {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().and_then(|s| s.code()) == Some("NoSuchUpload") => Ok(()),
            Err(e) => Err(self.error("AbortMultipartUpload", e)),
        }
    }

    /// A store error naming the operation, from an SDK error.
    fn error<E, R>(&self, operation: &str, e: SdkError<E, R>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: fmt::Debug + Send + Sync + 'static,
    {
        let code = e.code().map(str::to_string);
        let reason = chain(&e);
        if reason.contains("no credentials found in chain")
            || reason.contains("the credential provider was not enabled")
        {
            return StoreError::Refused(self.no_credentials(&reason));
        }
        let message = format!("{operation}: {reason}");
        match code.as_deref() {
            Some("NoSuchBucket") => StoreError::Missing(format!("bucket {}", self.bucket)),
            Some("AccessDenied") | Some("Forbidden") => StoreError::Refused(message),
            _ => StoreError::Other(message),
        }
    }
}

impl S3Store {
    /// No credential source gave credentials: what was tried, and what to
    /// set. `tried` is the SDK's own list (one line per provider).
    fn no_credentials(&self, tried: &str) -> String {
        let endpoint = self
            .endpoint
            .clone()
            .unwrap_or_else(|| "the AWS endpoint of the region".to_string());
        let attempts: Vec<&str> = tried
            .lines()
            .skip(1)
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        format!(
            "no AWS credentials for bucket {} at {endpoint}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
             (and AWS_SESSION_TOKEN for temporary ones), or AWS_PROFILE with ~/.aws/credentials, or \
             AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN (EKS IRSA), or run where container or instance \
             metadata provides a role; tried: {}",
            self.bucket,
            if attempts.is_empty() {
                "environment, profile, web identity, container and instance metadata".to_string()
            } else {
                attempts.join("; ")
            }
        )
    }
}

/// An error and its sources, each by its Display, joined by `: ` (the SDK's
/// own DisplayErrorContext appends a Debug dump of the whole chain, which
/// buries the reason in a log line).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Whether a GetBucketVersioning reply body is one XML element, named as
/// S3 or moto name it, with no Status in it: versioning was never enabled.
/// Anything else is doubt.
fn says_never_versioned(body: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(body) else {
        return false;
    };
    let text = text.trim();
    let text = match text.strip_prefix("<?xml") {
        Some(rest) => rest.split_once("?>").map_or("", |(_, r)| r.trim_start()),
        None => text,
    };
    let root = ["VersioningConfiguration", "GetBucketVersioningResponse"]
        .iter()
        .any(|name| {
            text.strip_prefix('<')
                .and_then(|t| t.strip_prefix(name))
                .is_some_and(|t| t.starts_with([' ', '>', '/']))
        });
    root && !text.contains("<Status")
}

/// The result of each item of one DeleteObjects call, from the errors its
/// reply named by key and version id (`null` is a version id like any
/// other). An error that names no version (moto's do not) counts against
/// every item of its key in the call, and one that names `null` also
/// against a version-less item of its key (the object of an unversioned
/// bucket is its version `null`): never report a success that may not have
/// happened.
fn per_item(
    items: &[&BlobRef],
    failed: &HashMap<(&str, Option<&str>), StoreError>,
) -> Vec<Result<(), StoreError>> {
    items
        .iter()
        .map(|i| {
            let key = i.key.as_str();
            let error = failed
                .get(&(key, i.version.as_deref()))
                .or_else(|| failed.get(&(key, None)))
                .or_else(|| {
                    i.version
                        .is_none()
                        .then(|| failed.get(&(key, Some("null"))))
                        .flatten()
                });
            match error {
                Some(e) => Err(e.clone()),
                None => Ok(()),
            }
        })
        .collect()
}

/// An S3 timestamp as chrono; a missing one is "now", so it never expires
/// (refusal on doubt).
fn time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> DateTime<Utc> {
    t.and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
        .unwrap_or_else(Utc::now)
}

/// Where a listing stands: which kind of page comes next, from where.
enum Cursor {
    Start,
    Objects(Option<String>),
    Versions(Option<(String, Option<String>)>),
    /// The uploads after the last listed key.
    Rest,
    Done,
}

/// `page` (in key order) with the `uploads` (in key order) whose keys sort
/// at or before its last key merged in, each before its key's versions.
fn merge_uploads(page: Vec<BlobMeta>, uploads: &mut VecDeque<BlobMeta>) -> Vec<BlobMeta> {
    if uploads.is_empty() {
        return page;
    }
    let mut out = Vec::with_capacity(page.len());
    for item in page {
        while uploads.front().is_some_and(|u| u.key <= item.key) {
            out.extend(uploads.pop_front());
        }
        out.push(item);
    }
    out
}

impl BlobStore for S3Store {
    fn list(&self, prefix: &str) -> BoxStream<'_, Result<BlobMeta, StoreError>> {
        let prefix = prefix.to_string();
        let start = (Cursor::Start, VecDeque::new());
        flatten_pages(stream::unfold(start, move |(cursor, mut uploads)| {
            let prefix = prefix.clone();
            async move {
                let (page, next) = match cursor {
                    Cursor::Done => return None,
                    // Incomplete uploads are a separate listing: read them
                    // first (there are few), to merge them into key order.
                    Cursor::Start => match self.uploads(&prefix).await {
                        Ok(all) => {
                            uploads = all;
                            let next = if self.ever_versioned().await {
                                Cursor::Versions(None)
                            } else {
                                Cursor::Objects(None)
                            };
                            (Ok(Vec::new()), next)
                        }
                        Err(e) => (Err(e), Cursor::Done),
                    },
                    Cursor::Objects(token) => match self.objects_page(&prefix, token).await {
                        Ok((page, Some(token))) => (Ok(page), Cursor::Objects(Some(token))),
                        Ok((page, None)) => (Ok(page), Cursor::Rest),
                        Err(e) => (Err(e), Cursor::Done),
                    },
                    Cursor::Versions(at) => {
                        let (k, v) = at.map_or((None, None), |(k, v)| (Some(k), v));
                        match self.versions_page(&prefix, k, v).await {
                            Ok((page, Some(at))) => (Ok(page), Cursor::Versions(Some(at))),
                            Ok((page, None)) => (Ok(page), Cursor::Rest),
                            Err(e) => (Err(e), Cursor::Done),
                        }
                    }
                    Cursor::Rest => (Ok(uploads.drain(..).collect()), Cursor::Done),
                };
                let page = page.map(|page| merge_uploads(page, &mut uploads));
                Some((page, (next, uploads)))
            }
        }))
    }

    fn delete<'a>(&'a self, items: &'a [BlobRef]) -> BoxFuture<'a, Vec<Result<(), StoreError>>> {
        Box::pin(async move {
            let mut results: Vec<Option<Result<(), StoreError>>> = vec![None; items.len()];
            let (uploads, objects): (Vec<_>, Vec<_>) =
                items.iter().enumerate().partition(|(_, i)| i.pending);
            for (at, item) in uploads {
                results[at] = Some(self.abort_upload(item).await);
            }
            for chunk in objects.chunks(1000) {
                let refs: Vec<&BlobRef> = chunk.iter().map(|(_, i)| *i).collect();
                for ((at, _), result) in chunk.iter().zip(self.delete_objects(&refs).await) {
                    results[*at] = Some(result);
                }
            }
            results
                .into_iter()
                .map(|r| r.unwrap_or_else(|| Err(StoreError::Other("not attempted".into()))))
                .collect()
        })
    }

    fn check_identity(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let client = self.client().await;
            let head = client
                .head_bucket()
                .bucket(&self.bucket)
                .set_expected_bucket_owner(self.expected_owner.clone())
                .send()
                .await;
            if let Err(e) = head {
                let status = e.raw_response().map(|r| r.status().as_u16());
                return Err(match status {
                    Some(404) => StoreError::Missing(format!("bucket {}", self.bucket)),
                    Some(403) if self.expected_owner.is_some() => StoreError::WrongTarget(format!(
                        "bucket {} is not owned by {} (or access is denied)",
                        self.bucket,
                        self.expected_owner.as_deref().unwrap_or_default()
                    )),
                    _ => self.error("HeadBucket", e),
                });
            }
            let Some(expected) = &self.expected_owner else {
                return Ok(());
            };
            // Not every server enforces x-amz-expected-bucket-owner (moto
            // does not): compare the owner S3 reports, too.
            let acl = client
                .get_bucket_acl()
                .bucket(&self.bucket)
                .set_expected_bucket_owner(self.expected_owner.clone())
                .send()
                .await
                .map_err(|e| self.error("GetBucketAcl", e))?;
            match acl.owner().and_then(|o| o.id()) {
                Some(owner) if owner == expected => Ok(()),
                Some(owner) => Err(StoreError::WrongTarget(format!(
                    "bucket {} belongs to {owner}, not to the expected account {expected}",
                    self.bucket
                ))),
                None => Err(StoreError::WrongTarget(format!(
                    "bucket {}: S3 did not say who owns it; expected {expected}",
                    self.bucket
                ))),
            }
        })
    }

    fn batch_limit(&self) -> usize {
        1000
    }

    fn parallelism(&self) -> usize {
        IN_FLIGHT
    }

    fn describe<'a>(
        &'a self,
        items: &'a mut [BlobMeta],
        metadata: bool,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            if !metadata && !self.lock_enabled().await {
                return Ok(());
            }
            // A loop, not a closure: the borrow of each item must outlive
            // the future that fills it in.
            let mut heads: Vec<BoxFuture<'_, Result<(), StoreError>>> = Vec::new();
            for m in items.iter_mut() {
                if !m.delete_marker && !m.pending {
                    heads.push(Box::pin(self.head(m, metadata)));
                }
            }
            let results: Vec<Result<(), StoreError>> = stream::iter(heads)
                .buffer_unordered(IN_FLIGHT * 4)
                .collect()
                .await;
            results.into_iter().collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(key: &str, version: Option<&str>) -> BlobRef {
        BlobRef {
            key: key.into(),
            version: version.map(str::to_string),
            size: 1,
            listed_modified: Utc::now(),
            pending: false,
        }
    }

    fn outcome(results: Vec<Result<(), StoreError>>) -> Vec<bool> {
        results.iter().map(Result::is_ok).collect()
    }

    #[test]
    fn uploads_merge_into_key_order_before_their_keys_versions() {
        let meta = |key: &str, pending: bool| BlobMeta {
            key: key.into(),
            version: None,
            last_modified: Utc::now(),
            size: 0,
            is_latest: !pending,
            delete_marker: false,
            metadata: Default::default(),
            locked: None,
            pending,
        };
        let mut uploads: VecDeque<BlobMeta> =
            ["a", "b", "d", "z"].iter().map(|k| meta(k, true)).collect();
        let keys = |page: Vec<BlobMeta>| -> Vec<String> {
            page.iter()
                .map(|m| format!("{}{}", m.key, if m.pending { "*" } else { "" }))
                .collect()
        };
        let first = merge_uploads(vec![meta("b", false), meta("c", false)], &mut uploads);
        assert_eq!(keys(first), ["a*", "b*", "b", "c"]);
        let second = merge_uploads(vec![meta("c", false), meta("e", false)], &mut uploads);
        assert_eq!(keys(second), ["c", "d*", "e"]);
        assert_eq!(uploads.len(), 1, "z waits for the end of the listing");
    }

    #[test]
    fn a_versioning_reply_without_status_is_never_versioned() {
        let never = [
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<GetBucketVersioningResponse xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"/>",
            "<VersioningConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"></VersioningConfiguration>",
        ];
        for body in never {
            assert!(says_never_versioned(body.as_bytes()), "{body}");
        }
        let doubt = [
            "<?xml version=\"1.0\"?><GetBucketVersioningResponse><Status>Enabled</Status></GetBucketVersioningResponse>",
            "<VersioningConfiguration><Status>Suspended</Status></VersioningConfiguration>",
            "<html><body>proxy error</body></html>",
            "<VersioningConfigurationX/>",
            "",
        ];
        for body in doubt {
            assert!(!says_never_versioned(body.as_bytes()), "{body}");
        }
    }

    #[test]
    fn per_item_errors_name_the_null_version_like_any_other() {
        let items = [
            item("a", Some("null")),
            item("a", Some("v2")),
            item("b", Some("null")),
            item("b", Some("v2")),
        ];
        let refs: Vec<&BlobRef> = items.iter().collect();
        let mut failed = HashMap::new();
        failed.insert(
            ("a", Some("null")),
            StoreError::Other("InternalError".into()),
        );
        failed.insert(("b", Some("v2")), StoreError::Other("InternalError".into()));
        assert_eq!(
            outcome(per_item(&refs, &failed)),
            [false, true, true, false],
            "an error on a's null version is a's null version's alone"
        );
    }

    #[test]
    fn per_item_errors_without_a_version_fail_every_item_of_the_key() {
        let items = [
            item("a", Some("null")),
            item("a", Some("v2")),
            item("b", Some("null")),
        ];
        let refs: Vec<&BlobRef> = items.iter().collect();
        let mut failed = HashMap::new();
        failed.insert(("a", None), StoreError::Other("InternalError".into()));
        assert_eq!(outcome(per_item(&refs, &failed)), [false, false, true]);
    }

    #[test]
    fn per_item_errors_on_null_fail_a_versionless_delete_of_the_key() {
        // An unversioned bucket's object is its version `null`: an error a
        // server names so is still the plain delete's.
        let items = [item("a", None), item("b", None)];
        let refs: Vec<&BlobRef> = items.iter().collect();
        let mut failed = HashMap::new();
        failed.insert(
            ("a", Some("null")),
            StoreError::Refused("AccessDenied".into()),
        );
        assert_eq!(outcome(per_item(&refs, &failed)), [false, true]);
    }
}
