//! An Azure Blob Storage container, through `azure_storage_blob`.
//!
//! * Listing is List Blobs with `include=metadata,snapshots,versions,
//!   uncommittedblobs,legalhold,immutabilitypolicy`, one page per request,
//!   as a stream. The base blob (or current version) is the key itself; a
//!   snapshot is version `snapshot=<time>`, a previous version
//!   `versionid=<id>`, so [`AzureStore::delete`] knows which query
//!   parameter names it. A value the service rejects (400) is dropped and
//!   the smaller set remembered; locks then come from Get Blob Properties.
//! * A blob with only uncommitted blocks (an upload that never called Put
//!   Block List) is listed as `pending`; how it is told from an empty
//!   committed blob is explained at [`Committed`].
//! * Deleting is one Blob Batch request per call (up to 256 Delete Blob
//!   sub-requests, sent by hand: `azure_storage_blob` 1.1 has no batch
//!   API), the answer read part by part. With Entra ID, or when the service
//!   refuses the batch or its answer cannot be read, items go one Delete
//!   Blob each, [`IN_FLIGHT`] at once. A base blob is deleted with
//!   `x-ms-delete-snapshots: include` (Azure refuses to delete a blob that
//!   has snapshots otherwise, and cannot keep them without their blob: a
//!   key's deletion takes its snapshots along) and `If-Unmodified-Since`
//!   its listed time, so a blob overwritten (or an upload committed) after
//!   it was listed stays. A snapshot or version is deleted by
//!   `?snapshot=` / `?versionid=`. Already gone (404) is done.
//! * Credentials, first found wins: an account key (`access_key` or
//!   `AZURE_STORAGE_KEY`) signs a service SAS for this container alone,
//!   valid one hour and re-signed before it ends (`azure_storage_blob` has
//!   no shared-key credential, azure-sdk-for-rust#2975); a SAS token
//!   (`sas_token` or `AZURE_STORAGE_SAS_TOKEN`) is used as given; else
//!   Entra ID: workload identity when `AZURE_FEDERATED_TOKEN_FILE` is set,
//!   else managed identity. Keys and signatures are never logged, and
//!   `sig=` is cut out of every error message.
//! * `expected_account` is checked against the configured account and the
//!   account the endpoint names; Azure has no owner header to send.
//!
//! Throttling (429), timeouts (408), 5xx answers and connection errors are
//! retried by the SDK pipeline (exponential backoff, 6 retries, at most a
//! minute).
//!
//! Untested against an emulator (Azurite 3.35 has no blob versioning, no
//! legal holds or immutability policies, no Entra ID): the `versionid=`
//! paths, [`lock_of`] on real holds and policies, the container legal hold,
//! and [`entra_credential`]. They follow the REST reference. Blob Batch is
//! tested against Azurite only, whose batch handler is lenient (it takes
//! any SAS for the outer request); against Azure a refusal of the batch
//! itself falls back to one request per item.

mod batch;
mod sas;

use super::blob::{flatten_pages, BlobMeta, BlobRef, BlobStore, StoreError};
use azure_core::credentials::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::http::headers::CONTENT_TYPE;
use azure_core::http::{
    new_http_client, ClientOptions, Context, ExponentialRetryOptions, HttpClientOptions, Method,
    Pipeline, Request, RetryOptions, StatusCode, Transport, Url,
};
use azure_core::time::OffsetDateTime;
use azure_storage_blob::models::{
    BlobClientDeleteOptions, BlobClientGetPropertiesOptions, BlobClientGetPropertiesResultHeaders,
    BlobContainerClientGetPropertiesResultHeaders, BlobContainerClientListBlobsOptions, BlobItem,
    DeleteSnapshotsOptionType, ListBlobsIncludeItem, ListBlobsResponse,
};
use azure_storage_blob::{
    BlobClient, BlobClientOptions, BlobContainerClient, BlobContainerClientOptions,
};
use batch::{parse_batch, query_value};
use chrono::{DateTime, Duration, Utc};
use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream, StreamExt, TryStreamExt};
use sas::{endpoint_account, redact, sign_sas};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::OnceCell;

/// How many single requests (Delete Blob without batch, Get Blob
/// Properties) one call has in flight.
const IN_FLIGHT: usize = 16;

/// The most sub-requests one Blob Batch may carry.
const BATCH_MAX: usize = 256;

/// Read (properties), delete, delete version, list: in the order Azure
/// requires.
const SAS_PERMISSIONS: &str = "rdxl";

/// How long a signed SAS is valid, and how long before its end a new one
/// is signed.
const SAS_LIFETIME: Duration = Duration::hours(1);
const SAS_RENEW_BEFORE: Duration = Duration::minutes(15);

/// Include values every listing needs: without them a rule could not see
/// snapshots or match metadata, so a service refusing them is an error.
const REQUIRED: [ListBlobsIncludeItem; 2] = [
    ListBlobsIncludeItem::Metadata,
    ListBlobsIncludeItem::Snapshots,
];

/// Optional include values, dropped in this order (newest features first)
/// while the service answers 400.
const OPTIONAL: [&[ListBlobsIncludeItem]; 3] = [
    &[
        ListBlobsIncludeItem::LegalHold,
        ListBlobsIncludeItem::ImmutabilityPolicy,
    ],
    &[ListBlobsIncludeItem::Versions],
    &[ListBlobsIncludeItem::UncommittedBlobs],
];

/// How the store authenticates (never printed).
enum Credential {
    /// The decoded account key: signs a service SAS.
    Key(Vec<u8>),
    /// A SAS query string, without the leading `?`.
    Sas(String),
    /// Entra ID (workload or managed identity).
    Entra,
}

/// A container client, and when to replace it (a signed SAS ends).
type Cached = (Arc<BlobContainerClient>, Option<DateTime<Utc>>);

/// An Azure Blob Storage container.
pub struct AzureStore {
    name: String,
    account: String,
    container: String,
    /// The blob service URL, or why it is not one.
    endpoint: Result<Url, String>,
    expected_account: Option<String>,
    credential: Result<Credential, String>,
    client: Mutex<Option<Cached>>,
    /// One HTTP connection pool for every client of this store.
    transport: OnceLock<Transport>,
    /// The pipeline Blob Batch requests go through.
    batch_pipeline: OnceLock<Pipeline>,
    /// Set when the service refused a Blob Batch (4xx): deletes are then
    /// one request per item.
    batch_off: AtomicBool,
    /// The include values the service accepted last.
    include: Mutex<Vec<ListBlobsIncludeItem>>,
    /// Why the whole container is locked (a container legal hold), when
    /// its properties could be read.
    container_lock: OnceCell<Option<String>>,
}

impl fmt::Debug for AzureStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let credential = match &self.credential {
            Ok(Credential::Key(_)) => "account key",
            Ok(Credential::Sas(_)) => "SAS token",
            Ok(Credential::Entra) => "Entra ID",
            Err(_) => "invalid",
        };
        f.debug_struct("AzureStore")
            .field("name", &self.name)
            .field("account", &self.account)
            .field("container", &self.container)
            .field("endpoint", &self.endpoint.as_ref().map(Url::as_str))
            .field("credential", &credential)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for AzureStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "store `{}` (azure://{}/{})",
            self.name, self.account, self.container
        )
    }
}

/// Installs ring as rustls's process-wide crypto provider (reqwest is built
/// without one); a provider already installed is kept.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl AzureStore {
    /// A store for `container` of `account`. Nothing is sent yet; a bad
    /// endpoint or key is reported by the first operation.
    pub fn new(
        name: &str,
        account: &str,
        container: &str,
        endpoint: Option<&str>,
        sas_token: Option<&str>,
        access_key: Option<&str>,
        expected_account: Option<String>,
    ) -> AzureStore {
        install_crypto_provider();
        let env = |var: &str| std::env::var(var).ok().filter(|v| !v.trim().is_empty());
        let credential = match (
            access_key.map(str::to_string),
            sas_token.map(str::to_string),
        ) {
            (Some(key), _) => decode_key(&key, "access_key"),
            (None, Some(sas)) => Ok(Credential::Sas(sas_query(&sas))),
            (None, None) => match (env("AZURE_STORAGE_KEY"), env("AZURE_STORAGE_SAS_TOKEN")) {
                (Some(key), _) => decode_key(&key, "AZURE_STORAGE_KEY"),
                (None, Some(sas)) => Ok(Credential::Sas(sas_query(&sas))),
                (None, None) => Ok(Credential::Entra),
            },
        };
        let endpoint = endpoint
            .map(str::to_string)
            .unwrap_or_else(|| format!("https://{account}.blob.core.windows.net"));
        let endpoint = match Url::parse(endpoint.trim_end_matches('/')) {
            Ok(url) if url.cannot_be_a_base() || url.host().is_none() => {
                Err(format!("endpoint {endpoint} is not a blob service URL"))
            }
            Ok(url) if url.query().is_some() => Err(format!(
                "endpoint {} has a query string; a SAS token belongs in `sas_token`",
                redact(url.as_str())
            )),
            Ok(url) => Ok(url),
            Err(e) => Err(format!("endpoint {}: {e}", redact(&endpoint))),
        };
        let mut include = REQUIRED.to_vec();
        include.extend(OPTIONAL.iter().flat_map(|o| o.iter().copied()));
        AzureStore {
            name: name.to_string(),
            account: account.to_string(),
            container: container.to_string(),
            endpoint,
            expected_account,
            credential,
            client: Mutex::new(None),
            transport: OnceLock::new(),
            batch_pipeline: OnceLock::new(),
            batch_off: AtomicBool::new(false),
            include: Mutex::new(include),
            container_lock: OnceCell::new(),
        }
    }

    /// The container URL, without credentials.
    fn container_url(&self) -> Result<Url, StoreError> {
        let mut url = self.endpoint.clone().map_err(StoreError::Other)?;
        url.path_segments_mut()
            .map_err(|()| StoreError::Other("endpoint is not a base URL".into()))?
            .pop_if_empty()
            .push(&self.container);
        Ok(url)
    }

    /// The container client, signing a new SAS when the last one is about
    /// to end.
    fn client(&self) -> Result<Arc<BlobContainerClient>, StoreError> {
        let mut cached = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((client, renew_at)) = cached.as_ref() {
            if renew_at.is_none_or(|at| Utc::now() < at) {
                return Ok(client.clone());
            }
        }
        install_crypto_provider();
        let mut url = self.container_url()?;
        let credential = self
            .credential
            .as_ref()
            .map_err(|e| StoreError::Other(e.clone()))?;
        let (token, renew_at) = match credential {
            Credential::Key(key) => {
                let expiry = Utc::now() + SAS_LIFETIME;
                let sas = sign_sas(
                    &self.account,
                    &self.container,
                    "c",
                    SAS_PERMISSIONS,
                    "",
                    key,
                    expiry,
                );
                url.set_query(Some(&sas));
                (None, Some(expiry - SAS_RENEW_BEFORE))
            }
            Credential::Sas(sas) => {
                url.set_query(Some(sas));
                (None, None)
            }
            Credential::Entra if url.scheme() != "https" => {
                return Err(StoreError::Refused(format!(
                    "no access_key or sas_token (nor AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN), and Entra ID \
                     needs an https endpoint, not {}",
                    self.endpoint.as_ref().map(Url::as_str).unwrap_or_default()
                )))
            }
            Credential::Entra => (
                Some(entra_credential().map_err(|e| self.error("Entra ID", e))?),
                None,
            ),
        };
        let options = BlobContainerClientOptions {
            client_options: self.client_options(),
            ..Default::default()
        };
        let client = BlobContainerClient::new(url, token, Some(options))
            .map_err(|e| self.error("container client", e))?;
        let client = Arc::new(client);
        *cached = Some((client.clone(), renew_at));
        Ok(client)
    }

    /// Retries, and the store's one connection pool.
    fn client_options(&self) -> ClientOptions {
        let transport = self.transport.get_or_init(|| {
            // As the SDK's own default: bodies are passed on as sent.
            Transport::new(new_http_client(Some(HttpClientOptions {
                automatic_decompression: false,
            })))
        });
        ClientOptions {
            retry: RetryOptions::exponential(ExponentialRetryOptions {
                max_retries: 6,
                ..Default::default()
            }),
            transport: Some(transport.clone()),
            ..Default::default()
        }
    }

    /// A client for blob `key`, or for one of its snapshots.
    ///
    /// With an account key a snapshot gets a SAS of its own (resource `bs`,
    /// the snapshot time signed): the documented way to reach a snapshot
    /// with a service SAS, and the only one Azurite accepts (it signs the
    /// request's `snapshot` into every SAS it checks, so a container SAS
    /// gets 403 AuthorizationFailure on a snapshot).
    fn blob_client(&self, key: &str, snapshot: Option<&str>) -> Result<BlobClient, StoreError> {
        let container = self.client()?;
        let (Some(snapshot), Ok(Credential::Key(account_key))) = (snapshot, &self.credential)
        else {
            return Ok(container.blob_client(key));
        };
        let mut url = self.container_url()?;
        url.path_segments_mut()
            .map_err(|()| StoreError::Other("endpoint is not a base URL".into()))?
            .push(key);
        let resource = format!("{}/{key}", self.container);
        url.set_query(Some(&sign_sas(
            &self.account,
            &resource,
            "bs",
            "rd",
            snapshot,
            account_key,
            Utc::now() + SAS_LIFETIME,
        )));
        let options = BlobClientOptions {
            client_options: self.client_options(),
            ..Default::default()
        };
        BlobClient::new(url, None, Some(options)).map_err(|e| self.error("blob client", e))
    }

    /// One List Blobs page.
    async fn list_page(
        client: &BlobContainerClient,
        prefix: &str,
        marker: Option<String>,
        include: Option<Vec<ListBlobsIncludeItem>>,
        max: Option<i32>,
    ) -> azure_core::Result<ListBlobsResponse> {
        let options = BlobContainerClientListBlobsOptions {
            include,
            marker,
            maxresults: max,
            prefix: (!prefix.is_empty()).then(|| prefix.to_string()),
            ..Default::default()
        };
        let page = client
            .list_blobs(Some(options))?
            .into_pages()
            .try_next()
            .await?;
        match page {
            Some(page) => page.into_model(),
            None => Ok(ListBlobsResponse::default()),
        }
    }

    /// One page with every include value the service accepts; a smaller
    /// set that works is remembered (and logged once).
    async fn listed_page(
        &self,
        prefix: &str,
        marker: Option<String>,
    ) -> Result<(ListBlobsResponse, Vec<ListBlobsIncludeItem>), StoreError> {
        let mut include = self
            .include
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        loop {
            let client = self.client()?;
            match Self::list_page(&client, prefix, marker.clone(), Some(include.clone()), None)
                .await
            {
                Ok(page) => {
                    let mut saved = self.include.lock().unwrap_or_else(|p| p.into_inner());
                    if saved.len() > include.len() {
                        tracing::warn!(
                            store = %self.name,
                            include = %include.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(","),
                            "List Blobs refused some include values; listing without them"
                        );
                        *saved = include.clone();
                    }
                    return Ok((page, include));
                }
                Err(e) if e.http_status() == Some(StatusCode::BadRequest) => {
                    // Drop the first optional group still present.
                    let Some(drop) = OPTIONAL
                        .iter()
                        .find(|group| group.iter().any(|i| include.contains(i)))
                    else {
                        return Err(self.error("List Blobs", e));
                    };
                    include.retain(|i| !drop.contains(i));
                }
                Err(e) => return Err(self.error("List Blobs", e)),
            }
        }
    }

    /// Why every blob of the container is locked, if it is: a container
    /// legal hold. Read once; a container whose properties cannot be read
    /// (a container SAS may not) counts as unlocked here, and Azure itself
    /// refuses the deletes.
    async fn container_lock(&self) -> Option<String> {
        self.container_lock
            .get_or_init(|| async {
                // The container SAS signed here cannot read container
                // properties (403 AuthorizationPermissionMismatch).
                if let Ok(Credential::Key(_)) = self.credential {
                    return None;
                }
                let client = self.client().ok()?;
                match client.get_properties(None).await {
                    Ok(props) => props
                        .has_legal_hold()
                        .ok()
                        .flatten()
                        .unwrap_or(false)
                        .then(|| "Azure container legal hold".to_string()),
                    Err(e) => {
                        tracing::debug!(store = %self.name, error = %redact(&e.to_string()), "container properties unreadable");
                        None
                    }
                }
            })
            .await
            .clone()
    }

    /// The next page of a listing, as blob versions.
    async fn next_page(&self, st: &mut ListState) -> Result<Vec<BlobMeta>, StoreError> {
        let container_lock = self.container_lock().await;
        let (page, include) = self.listed_page(&st.prefix, st.marker.take()).await?;
        st.marker = page.next_marker.filter(|m| !m.is_empty());
        st.done = st.marker.is_none();
        let uncommitted = include.contains(&ListBlobsIncludeItem::UncommittedBlobs);
        let now = Utc::now();
        let mut out = Vec::with_capacity(page.blob_items.len());
        for item in page.blob_items {
            let Some((mut meta, maybe_pending)) = to_meta(item, now) else {
                continue;
            };
            if uncommitted && maybe_pending {
                meta.pending = !self
                    .is_committed(&mut st.committed, &st.prefix, &meta.key)
                    .await?;
                if meta.pending {
                    meta.is_latest = false;
                }
            }
            if meta.locked.is_none() && !meta.pending {
                meta.locked = container_lock.clone();
            }
            out.push(meta);
        }
        Ok(out)
    }

    /// Whether `name` (an empty base blob of the listing with uncommitted
    /// blobs) is a committed blob. See [`Committed`].
    async fn is_committed(
        &self,
        cursor: &mut Committed,
        prefix: &str,
        name: &str,
    ) -> Result<bool, StoreError> {
        loop {
            while cursor.names.front().is_some_and(|n| n.as_str() < name) {
                cursor.names.pop_front();
            }
            if cursor.names.front().is_some_and(|n| n == name) {
                return Ok(true);
            }
            if cursor.names.front().is_some() || cursor.exhausted {
                break;
            }
            let client = self.client()?;
            let page = Self::list_page(&client, prefix, cursor.marker.take(), None, None)
                .await
                .map_err(|e| self.error("List Blobs", e))?;
            cursor
                .names
                .extend(page.blob_items.into_iter().filter_map(|b| b.name));
            cursor.marker = page.next_marker.filter(|m| !m.is_empty());
            cursor.exhausted = cursor.marker.is_none();
        }
        // Not in the committed listing: confirm, so that a listing order
        // other than byte order can only cost a request, never misfile a
        // committed blob as an upload.
        match self.blob_client(name, None)?.get_properties(None).await {
            Ok(_) => Ok(true),
            Err(e) if e.http_status() == Some(StatusCode::NotFound) => Ok(false),
            Err(e) => Err(self.error("Get Blob Properties", e)),
        }
    }

    /// Deletes one item.
    async fn delete_one(&self, item: &BlobRef) -> Result<(), StoreError> {
        let mut options = BlobClientDeleteOptions::default();
        let since = OffsetDateTime::from_unix_timestamp(item.listed_modified.timestamp())
            .map_err(|e| StoreError::Other(format!("listed time: {e}")))?;
        match item.version.as_deref() {
            // Uncommitted blocks only: deleting the name discards them. The
            // condition keeps a blob committed since it was listed.
            _ if item.pending => options.if_unmodified_since = Some(since),
            None => {
                options.delete_snapshots = Some(DeleteSnapshotsOptionType::Include);
                options.if_unmodified_since = Some(since);
            }
            Some(v) => {
                if let Some(snapshot) = v.strip_prefix("snapshot=") {
                    options.snapshot = Some(snapshot.to_string());
                } else if let Some(id) = v.strip_prefix("versionid=") {
                    // Untested against an emulator: Azurite has no versions.
                    options.version_id = Some(id.to_string());
                } else {
                    return Err(StoreError::Other(format!("unknown Azure version {v:?}")));
                }
            }
        }
        let blob = self.blob_client(&item.key, options.snapshot.as_deref())?;
        match blob.delete(Some(options)).await {
            Ok(_) => Ok(()),
            Err(e) => match http_error(&e) {
                Some((status, code, message)) => self.deleted(status, code, &message),
                None => Err(self.error("Delete Blob", e)),
            },
        }
    }

    /// Lock state and (when asked) metadata of one listed item, from Get
    /// Blob Properties.
    async fn head(&self, item: &mut BlobMeta, metadata: bool) -> Result<(), StoreError> {
        let mut options = BlobClientGetPropertiesOptions::default();
        match item.version.as_deref() {
            Some(v) if v.starts_with("snapshot=") => {
                options.snapshot = v.strip_prefix("snapshot=").map(str::to_string)
            }
            Some(v) => options.version_id = v.strip_prefix("versionid=").map(str::to_string),
            None => {}
        }
        let blob = self.blob_client(&item.key, options.snapshot.as_deref())?;
        let props = match blob.get_properties(Some(options)).await {
            Ok(props) => props,
            // Gone since it was listed: nothing left to protect or delete.
            Err(e) if e.http_status() == Some(StatusCode::NotFound) => return Ok(()),
            Err(e) => return Err(self.error("Get Blob Properties", e)),
        };
        let legal_hold = props.legal_hold().ok().flatten();
        let until = props.immutability_policy_expires_on().ok().flatten();
        let mode = props.immutability_policy_mode().ok().flatten();
        if let Some(lock) = lock_of(legal_hold, until, mode.map(|m| m.to_string()), Utc::now()) {
            item.locked = Some(lock);
        }
        if metadata {
            item.metadata = props.metadata().unwrap_or_default().into_iter().collect();
        }
        Ok(())
    }

    /// A store error for an error answer.
    fn answer(&self, operation: &str, status: u16, code: &str, message: &str) -> StoreError {
        let text = redact(&format!("{operation}: HTTP {status} {code}: {message}"));
        match (status, code) {
            (404, "ContainerNotFound") => {
                StoreError::Missing(format!("container {}", self.container))
            }
            (403, _) | (412, _) => StoreError::Refused(text),
            // Immutability policies, legal holds, leases.
            (409, c) if c.contains("Immutable") || c.contains("Lease") => StoreError::Refused(text),
            _ => StoreError::Other(text),
        }
    }

    /// What one Delete Blob answer means for its item.
    fn deleted(&self, status: u16, code: &str, message: &str) -> Result<(), StoreError> {
        match (status, code) {
            (200..=299, _) => Ok(()),
            // Already gone is what we wanted; a missing container is not.
            (404, code) if code != "ContainerNotFound" => Ok(()),
            (412, "ConditionNotMet") => {
                Err(StoreError::Refused("modified since it was listed".into()))
            }
            _ => Err(self.answer("Delete Blob", status, code, message)),
        }
    }

    /// Deletes `items` (at most [`BATCH_MAX`]) with one Blob Batch request.
    /// None for an item the batch did not answer (the request failed, or
    /// its answer could not be read): the caller deletes those one by one,
    /// which is safe because deleting what is gone succeeds.
    async fn delete_batch(&self, items: &[BlobRef]) -> Vec<Option<Result<(), StoreError>>> {
        let unanswered = || (0..items.len()).map(|_| None).collect();
        let request = match self.batch_request(items) {
            Ok(r) => r,
            Err(e) => return items.iter().map(|_| Some(Err(e.clone()))).collect(),
        };
        let (mut request, boundary) = request;
        let pipeline = self.batch_pipeline.get_or_init(|| {
            Pipeline::new(
                Some("retentiond"),
                Some(env!("CARGO_PKG_VERSION")),
                self.client_options(),
                Vec::new(),
                Vec::new(),
                None,
            )
        });
        let answer = match pipeline.send(&Context::new(), &mut request, None).await {
            Ok(answer) => answer,
            Err(e) => {
                let status = http_error(&e).map(|(status, _, _)| status);
                let error = self.error("Blob Batch", e);
                if let StoreError::Missing(_) = error {
                    return items.iter().map(|_| Some(Err(error.clone()))).collect();
                }
                // Refused as a whole (a SAS that may delete but not batch, a
                // service without batch): item by item from now on. Other
                // failures (after retries) fall back for this call only.
                if status.is_some_and(|s| (400..500).contains(&s))
                    && !self.batch_off.swap(true, Ordering::Relaxed)
                {
                    tracing::warn!(store = %self.name, %error, "Blob Batch refused; deleting one blob per request");
                }
                return unanswered();
            }
        };
        let content_type = answer
            .headers()
            .get_optional_str(&CONTENT_TYPE)
            .unwrap_or_default()
            .to_string();
        let parts = parse_batch(&content_type, answer.body(), items.len());
        if parts.iter().all(Option::is_none) {
            tracing::warn!(store = %self.name, boundary, "Blob Batch answer unreadable; deleting one blob per request");
        }
        parts
            .into_iter()
            .map(|p| p.map(|(status, code, message)| self.deleted(status, &code, &message)))
            .collect()
    }

    /// The Blob Batch request deleting `items`, and its boundary.
    ///
    /// A container-scoped batch: `POST <container>?restype=container&
    /// comp=batch`, a multipart/mixed body of one `DELETE` per item, each
    /// carrying its own SAS in its URL (as the Python SDK sends it).
    fn batch_request(&self, items: &[BlobRef]) -> Result<(Request, String), StoreError> {
        let container = self.client()?;
        let sas = container.url().query().unwrap_or_default().to_string();
        let boundary = format!("batch_{}", uuid::Uuid::new_v4());
        let mut body = String::new();
        for (id, item) in items.iter().enumerate() {
            let mut url = container.url().clone();
            url.set_query(None);
            url.path_segments_mut()
                .map_err(|()| StoreError::Other("endpoint is not a base URL".into()))?
                .push(&item.key);
            let since = item
                .listed_modified
                .format("%a, %d %b %Y %H:%M:%S GMT")
                .to_string();
            let mut query = String::new();
            let mut headers = String::new();
            let mut item_sas = sas.clone();
            match item.version.as_deref() {
                _ if item.pending => headers.push_str(&format!("If-Unmodified-Since: {since}\r\n")),
                None => headers.push_str(&format!(
                    "x-ms-delete-snapshots: include\r\nIf-Unmodified-Since: {since}\r\n"
                )),
                Some(v) => {
                    if let Some(snapshot) = v.strip_prefix("snapshot=") {
                        query = format!("snapshot={}", query_value(snapshot));
                        if let Ok(Credential::Key(key)) = &self.credential {
                            // See blob_client: a snapshot gets its own SAS.
                            item_sas = sign_sas(
                                &self.account,
                                &format!("{}/{}", self.container, item.key),
                                "bs",
                                "rd",
                                snapshot,
                                key,
                                Utc::now() + SAS_LIFETIME,
                            );
                        }
                    } else if let Some(id) = v.strip_prefix("versionid=") {
                        query = format!("versionid={}", query_value(id));
                    } else {
                        return Err(StoreError::Other(format!("unknown Azure version {v:?}")));
                    }
                }
            }
            if !item_sas.is_empty() {
                if !query.is_empty() {
                    query.push('&');
                }
                query.push_str(&item_sas);
            }
            body.push_str(&format!(
                "--{boundary}\r\nContent-Type: application/http\r\nContent-ID: {id}\r\n\
                 Content-Transfer-Encoding: binary\r\n\r\n\
                 DELETE {}?{query} HTTP/1.1\r\n{headers}Content-Length: 0\r\n\r\n\r\n",
                url.path()
            ));
        }
        body.push_str(&format!("--{boundary}--\r\n"));
        let mut url = container.url().clone();
        url.query_pairs_mut()
            .append_pair("restype", "container")
            .append_pair("comp", "batch");
        let mut request = Request::new(url, Method::Post);
        request.insert_header(
            "x-ms-version",
            BlobContainerClientOptions::default().version,
        );
        request.insert_header(
            "content-type",
            format!("multipart/mixed; boundary={boundary}"),
        );
        request.set_body(body.into_bytes());
        Ok((request, boundary))
    }

    /// Checks `expected_account` against the configured account and the
    /// account the endpoint names.
    fn check_account(&self) -> Result<(), StoreError> {
        let Some(expected) = &self.expected_account else {
            return Ok(());
        };
        if &self.account != expected {
            return Err(StoreError::WrongTarget(format!(
                "the store is configured for account {}, not the expected account {expected}",
                self.account
            )));
        }
        let endpoint = self
            .endpoint
            .as_ref()
            .map_err(|e| StoreError::Other(e.clone()))?;
        match endpoint_account(endpoint) {
            Some(named) if &named == expected => Ok(()),
            Some(named) => Err(StoreError::WrongTarget(format!(
                "endpoint {endpoint} is account {named}, not the expected account {expected}"
            ))),
            None => Err(StoreError::WrongTarget(format!(
                "cannot tell which account endpoint {endpoint} belongs to; expected {expected}"
            ))),
        }
    }

    /// A store error naming the operation, from an SDK error; never with a
    /// SAS signature in it.
    fn error(&self, operation: &str, e: azure_core::Error) -> StoreError {
        match http_error(&e) {
            Some((status, code, message)) => self.answer(operation, status, code, &message),
            None => {
                let mut text = format!("{operation}: {e}");
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    text.push_str(&format!(": {s}"));
                    source = s.source();
                }
                match e.kind() {
                    ErrorKind::Credential => StoreError::Refused(redact(&text)),
                    _ => StoreError::Other(redact(&text)),
                }
            }
        }
    }
}

/// Status, error code and message of an HTTP error answer.
fn http_error(e: &azure_core::Error) -> Option<(u16, &str, String)> {
    let ErrorKind::HttpResponse {
        status,
        error_code,
        raw_response,
    } = e.kind()
    else {
        return None;
    };
    let body = raw_response
        .as_ref()
        .map(|r| String::from_utf8_lossy(r.body()).into_owned())
        .unwrap_or_default();
    // The first line of <Message> (the rest is a request id and a time).
    let message = body
        .split_once("<Message>")
        .and_then(|(_, rest)| rest.split_once("</Message>"))
        .map(|(m, _)| m.lines().next().unwrap_or_default().trim().to_string())
        .unwrap_or_else(|| status.canonical_reason().into_owned());
    Some((
        u16::from(*status),
        error_code.as_deref().unwrap_or_default(),
        message,
    ))
}

/// The decoded account key.
fn decode_key(key: &str, source: &str) -> Result<Credential, String> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(key.trim())
        .map(Credential::Key)
        .map_err(|_| format!("{source} is not a base64 account key"))
}

/// A SAS token as a query string.
fn sas_query(sas: &str) -> String {
    sas.trim().trim_start_matches('?').to_string()
}

/// Entra ID: workload identity (AKS and other federated tokens) when its
/// token file is set, else managed identity (`AZURE_CLIENT_ID` selects a
/// user-assigned one). Untested against an emulator: Azurite has no Entra.
fn entra_credential() -> azure_core::Result<Arc<dyn TokenCredential>> {
    use azure_identity::{
        ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
        WorkloadIdentityCredential,
    };
    if std::env::var_os("AZURE_FEDERATED_TOKEN_FILE").is_some() {
        return Ok(WorkloadIdentityCredential::new(None)?);
    }
    let options = ManagedIdentityCredentialOptions {
        user_assigned_id: std::env::var("AZURE_CLIENT_ID")
            .ok()
            .filter(|id| !id.is_empty())
            .map(UserAssignedId::ClientId),
        ..Default::default()
    };
    Ok(ManagedIdentityCredential::new(Some(options))?)
}

/// Why a blob cannot be deleted: a legal hold, or an immutability policy
/// that has not ended (locked or not, Azure enforces it until then).
fn lock_of(
    legal_hold: Option<bool>,
    until: Option<OffsetDateTime>,
    mode: Option<String>,
    now: DateTime<Utc>,
) -> Option<String> {
    if legal_hold == Some(true) {
        return Some("Azure legal hold".into());
    }
    let until = time(until)?;
    (until > now).then(|| {
        format!(
            "Azure immutability policy ({}) until {}",
            mode.as_deref().unwrap_or("unknown mode"),
            until.format("%Y-%m-%dT%H:%M:%SZ")
        )
    })
}

fn time(t: Option<OffsetDateTime>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond()))
}

/// One listed item as a blob version, and whether it may be an upload
/// with uncommitted blocks only (an empty base blob). None for what is
/// not a live version (soft-deleted items, nameless entries).
fn to_meta(item: BlobItem, now: DateTime<Utc>) -> Option<(BlobMeta, bool)> {
    if item.deleted == Some(true) {
        return None;
    }
    let key = item.name?;
    let props = item.properties.unwrap_or_default();
    let (version, is_latest) = match (item.snapshot, item.version_id) {
        (Some(snapshot), _) => (Some(format!("snapshot={snapshot}")), false),
        // The current version is the blob itself.
        (None, Some(_)) if item.is_current_version == Some(true) => (None, true),
        (None, Some(id)) => (Some(format!("versionid={id}")), false),
        (None, None) => (None, true),
    };
    let size = props.content_length.unwrap_or(0);
    let maybe_pending = version.is_none() && size == 0;
    // A missing time is "now": it never expires (refusal on doubt).
    let last_modified = time(props.last_modified)
        .or(time(props.creation_time))
        .unwrap_or(now);
    let locked = lock_of(
        props.legal_hold,
        props.immutability_policy_expires_on,
        props.immutability_policy_mode.map(|m| m.to_string()),
        now,
    );
    let metadata: BTreeMap<String, String> = item
        .metadata
        .and_then(|m| m.values)
        .map(|v| v.into_iter().collect())
        .unwrap_or_default();
    Some((
        BlobMeta {
            key,
            version,
            last_modified,
            size,
            is_latest,
            delete_marker: false,
            metadata,
            locked,
            pending: false,
        },
        maybe_pending,
    ))
}

/// Which names of a prefix are committed blobs.
///
/// A listing with `uncommittedblobs` shows a blob that has only uncommitted
/// blocks like an empty committed blob (Content-Length 0: its committed
/// block list is empty), with nothing in the entry to tell them apart; a
/// listing without it shows committed blobs only. So the candidates (empty
/// base blobs) are looked up in a second listing of the same prefix
/// without includes, walked in step with the first: both come in name
/// order, so it is read lazily, page by page, only as far as the last
/// candidate, and costs one request per 5000 names at most (a Get Blob
/// Properties per empty blob would cost one per blob, and empty marker
/// blobs can be numerous). A candidate absent from it is confirmed with
/// Get Blob Properties (404: uncommitted only) before it counts as an
/// upload, so an ordering the walk does not expect costs a request but
/// never turns a committed blob into an upload.
#[derive(Default)]
struct Committed {
    names: VecDeque<String>,
    marker: Option<String>,
    exhausted: bool,
}

/// Where a listing stands.
struct ListState {
    prefix: String,
    marker: Option<String>,
    done: bool,
    committed: Committed,
}

impl BlobStore for AzureStore {
    fn list(&self, prefix: &str) -> BoxStream<'_, Result<BlobMeta, StoreError>> {
        let state = ListState {
            prefix: prefix.to_string(),
            marker: None,
            done: false,
            committed: Committed::default(),
        };
        flatten_pages(stream::unfold(state, move |mut st| async move {
            if st.done {
                return None;
            }
            let page = self.next_page(&mut st).await;
            if page.is_err() {
                st.done = true;
            }
            Some((page, st))
        }))
    }

    fn delete<'a>(&'a self, items: &'a [BlobRef]) -> BoxFuture<'a, Vec<Result<(), StoreError>>> {
        Box::pin(async move {
            // A key the URL builders would change is never sent: it would
            // address (and delete) another blob.
            if items.iter().any(|i| unaddressable(&i.key)) {
                let safe: Vec<BlobRef> = items
                    .iter()
                    .filter(|i| !unaddressable(&i.key))
                    .cloned()
                    .collect();
                let mut done = self.delete(&safe).await.into_iter();
                return items
                    .iter()
                    .map(|i| {
                        if unaddressable(&i.key) {
                            Err(unaddressable_error(&i.key))
                        } else {
                            done.next()
                                .unwrap_or_else(|| Err(StoreError::Other("not attempted".into())))
                        }
                    })
                    .collect();
            }
            // Blob Batch when the credential is a SAS: each sub-request
            // carries it in its URL. With Entra ID every sub-request would
            // need its own bearer token; those go one by one.
            let batch = matches!(self.credential, Ok(Credential::Key(_) | Credential::Sas(_)))
                && !self.batch_off.load(Ordering::Relaxed);
            let mut results: Vec<Option<Result<(), StoreError>>> = Vec::with_capacity(items.len());
            if batch {
                for chunk in items.chunks(BATCH_MAX) {
                    results.extend(self.delete_batch(chunk).await);
                }
            } else {
                results.resize_with(items.len(), || None);
            }
            let mut singles: Vec<BoxFuture<'_, (usize, Result<(), StoreError>)>> = Vec::new();
            for (at, (item, result)) in items.iter().zip(&results).enumerate() {
                if result.is_none() {
                    singles.push(Box::pin(async move { (at, self.delete_one(item).await) }));
                }
            }
            let singles: Vec<(usize, Result<(), StoreError>)> = stream::iter(singles)
                .buffer_unordered(IN_FLIGHT)
                .collect()
                .await;
            for (at, result) in singles {
                results[at] = Some(result);
            }
            results
                .into_iter()
                .map(|r| r.unwrap_or_else(|| Err(StoreError::Other("not attempted".into()))))
                .collect()
        })
    }

    fn check_identity(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.check_account()?;
            // List Blobs rather than Get Container Properties: a container
            // SAS (ours, or one given) may list but not read container
            // properties.
            let client = self.client()?;
            match Self::list_page(&client, "", None, None, Some(1)).await {
                Ok(_) => Ok(()),
                Err(e) => Err(
                    match (self.error("List Blobs", e), &self.expected_account) {
                        (StoreError::Refused(why), Some(expected)) => StoreError::Refused(format!(
                            "{why} (is the credential for account {expected}?)"
                        )),
                        (e, _) => e,
                    },
                ),
            }
        })
    }

    fn batch_limit(&self) -> usize {
        256
    }

    fn parallelism(&self) -> usize {
        4
    }

    fn describe<'a>(
        &'a self,
        items: &'a mut [BlobMeta],
        metadata: bool,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let include = self
                .include
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let locks_listed = include.contains(&ListBlobsIncludeItem::LegalHold)
                && include.contains(&ListBlobsIncludeItem::ImmutabilityPolicy);
            let metadata_listed = include.contains(&ListBlobsIncludeItem::Metadata);
            if locks_listed && (metadata_listed || !metadata) {
                return Ok(());
            }
            let mut heads: Vec<BoxFuture<'_, Result<(), StoreError>>> = Vec::new();
            for m in items.iter_mut() {
                if unaddressable(&m.key) {
                    // Never asked about, never deleted: kept, as locked.
                    m.locked = Some(unaddressable_error(&m.key).to_string());
                } else if !m.pending {
                    heads.push(Box::pin(self.head(m, metadata)));
                }
            }
            let results: Vec<Result<(), StoreError>> = stream::iter(heads)
                .buffer_unordered(IN_FLIGHT)
                .collect()
                .await;
            results.into_iter().collect()
        })
    }
}

/// True for a key with a tab, line feed or carriage return: the `url`
/// crate's path-segment builder (ours and the SDK's) silently drops those,
/// so a request for `a<TAB>b` would address the blob `ab`.
fn unaddressable(key: &str) -> bool {
    key.contains(['\t', '\n', '\r'])
}

fn unaddressable_error(key: &str) -> StoreError {
    StoreError::Skipped {
        reason: "bad_key",
        detail: format!(
            "key {key:?} has a tab or line break, which the Azure client would drop from the URL (addressing another blob); never touched"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_account_must_match_config_and_endpoint() {
        let store = |account: &str, endpoint: &str, expected: &str| {
            AzureStore::new(
                "s",
                account,
                "c",
                Some(endpoint),
                Some("sv=x&sig=y"),
                None,
                Some(expected.to_string()),
            )
            .check_account()
        };
        assert!(store("a1", "https://a1.blob.core.windows.net", "a1").is_ok());
        assert!(matches!(
            store("a1", "https://a1.blob.core.windows.net", "a2"),
            Err(StoreError::WrongTarget(_))
        ));
        assert!(matches!(
            store("a1", "https://a2.blob.core.windows.net", "a1"),
            Err(StoreError::WrongTarget(_))
        ));
        assert!(matches!(
            store("a1", "https://files.example.com", "a1"),
            Err(StoreError::WrongTarget(_))
        ));
        assert!(store(
            "devstoreaccount1",
            "http://127.0.0.1:1/devstoreaccount1",
            "devstoreaccount1"
        )
        .is_ok());
    }

    #[test]
    fn listed_items_map_to_versions() {
        use azure_core::xml;
        let page: ListBlobsResponse = xml::from_xml(
            br#"<?xml version="1.0" encoding="utf-8"?>
<EnumerationResults ServiceEndpoint="http://h/a/" ContainerName="c"><Blobs>
<Blob><Name>a.txt</Name><Snapshot>2026-11-23T07:46:56.0990000Z</Snapshot><Properties><Last-Modified>Mon, 23 Nov 2026 07:46:56 GMT</Last-Modified><Content-Length>5</Content-Length></Properties><Metadata><owner>alice</owner></Metadata></Blob>
<Blob><Name>a.txt</Name><Properties><Last-Modified>Mon, 23 Nov 2026 07:47:00 GMT</Last-Modified><Content-Length>6</Content-Length><LegalHold>true</LegalHold></Properties></Blob>
<Blob><Name>v.txt</Name><VersionId>2026-11-01T00:00:00.0000000Z</VersionId><Properties><Last-Modified>Sun, 01 Nov 2026 00:00:00 GMT</Last-Modified><Content-Length>1</Content-Length><ImmutabilityPolicyUntilDate>Fri, 01 Jan 2100 00:00:00 GMT</ImmutabilityPolicyUntilDate><ImmutabilityPolicyMode>locked</ImmutabilityPolicyMode></Properties></Blob>
<Blob><Name>v.txt</Name><VersionId>2026-11-02T00:00:00.0000000Z</VersionId><IsCurrentVersion>true</IsCurrentVersion><Properties><Last-Modified>Mon, 02 Nov 2026 00:00:00 GMT</Last-Modified><Content-Length>0</Content-Length><ImmutabilityPolicyUntilDate>Thu, 01 Jan 2026 00:00:00 GMT</ImmutabilityPolicyUntilDate></Properties></Blob>
<Blob><Name Encoded="true">odd%EF%BF%BEname</Name><Properties><Last-Modified>Mon, 02 Nov 2026 00:00:00 GMT</Last-Modified><Content-Length>0</Content-Length></Properties></Blob>
</Blobs><NextMarker/></EnumerationResults>"#,
        )
        .unwrap();
        let now = DateTime::parse_from_rfc3339("2026-11-24T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let items: Vec<(BlobMeta, bool)> = page
            .blob_items
            .into_iter()
            .filter_map(|i| to_meta(i, now))
            .collect();
        let brief: Vec<String> = items
            .iter()
            .map(|(m, p)| {
                format!(
                    "{} {:?} latest={} size={} locked={:?} candidate={p}",
                    m.key, m.version, m.is_latest, m.size, m.locked
                )
            })
            .collect();
        assert_eq!(
            brief,
            [
                "a.txt Some(\"snapshot=2026-11-23T07:46:56.0990000Z\") latest=false size=5 locked=None candidate=false",
                "a.txt None latest=true size=6 locked=Some(\"Azure legal hold\") candidate=false",
                "v.txt Some(\"versionid=2026-11-01T00:00:00.0000000Z\") latest=false size=1 locked=Some(\"Azure immutability policy (locked) until 2100-01-01T00:00:00Z\") candidate=false",
                "v.txt None latest=true size=0 locked=None candidate=true",
                "odd\u{FFFE}name None latest=true size=0 locked=None candidate=true",
            ]
        );
        assert_eq!(
            items[0].0.metadata.get("owner").map(String::as_str),
            Some("alice")
        );
        assert_eq!(
            items[1].0.last_modified,
            DateTime::parse_from_rfc3339("2026-11-23T07:47:00Z").unwrap()
        );
    }
}
