//! Storage strategies: the [`Backend`] trait the reconciler uses without knowing
//! which store is behind it, and the [`registry`] of backend kinds, which
//! builds one from a ConfigStore, decodes its store changes and names its rate
//! families. Adding a backend: [`registry`] says what it touches. Nothing in
//! `reconcile` or `events` names a backend.

pub mod change;
pub mod dynamodb;
pub mod limits;
pub mod overlap;
pub mod parameter_store;
pub mod plan;
pub mod quota;
pub mod rate_limit;
pub mod registry;
pub mod routing;
pub mod shared_cache;
pub mod stats;
pub mod tenant_walks;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use aws_config::retry::RetryConfig;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use tracing::Instrument;

use crate::api::{ConfigStore, ConfigStoreSpec, ManagementPolicy};
pub use limits::LimitError;
pub use rate_limit::{Limiters, RateFamily, RateLimits, on_behalf_of};
pub use stats::CallStats;

/// The store-independent address of one TenantConfig's data.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    pub tenant: String,
    /// Optional environment dimension (namespace label `tenantconfig.io/environment`).
    pub environment: Option<String>,
    pub config_type: String,
}

/// One stored or desired value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Value {
    pub value: String,
    /// Encrypted at rest (SSM SecureString); never projected into a ConfigMap.
    pub secure: bool,
}

/// What a store holds at a location.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct StoreState {
    /// Every key at the location, including keys other writers put there.
    pub entries: BTreeMap<String, Value>,
    /// Keys the owning TenantConfig manages.
    pub managed: BTreeSet<String>,
    /// `{namespace}/{name}` of the owning TenantConfig, if any.
    pub managed_by: Option<String>,
    /// Optimistic-concurrency version (DynamoDB `version`; 0 when absent or unused).
    pub version: u64,
    /// Other writers' entries left out because another entry at the location
    /// has the same key (Parameter Store: `a/b` flattens to the `a.b` the
    /// object owns); named in the object's status.
    pub shadowed: BTreeSet<String>,
}

impl StoreState {
    /// A fingerprint of what a reconcile decides from: the entries and the
    /// version. Ownership is left out: Parameter Store reads it only when a
    /// write is due (the per-object steady-state read does not see it either),
    /// and DynamoDB writers bump `version` with every change of it.
    pub fn content_digest(&self) -> u64 {
        digest(&(&self.entries, self.version, &self.shadowed))
    }
}

/// A fingerprint of entries (a shared path as read). Stable within a process,
/// which is all it is compared within.
pub fn entries_digest(entries: &BTreeMap<String, Value>) -> u64 {
    digest(entries)
}

fn digest(value: &impl std::hash::Hash) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(value)
}

/// What a TenantConfig wants at a location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// `{namespace}/{name}` of the TenantConfig.
    pub owner: String,
    pub entries: BTreeMap<String, Value>,
    pub policy: ManagementPolicy,
    /// The object's last completed reconcile applied to this store as its
    /// owner. A backend may then take a store that already holds exactly the
    /// desired entries as in sync without reading ownership again.
    pub owned_before: bool,
    /// Nothing of this object is expected at the location: it has never
    /// completed a reconcile and no other TenantConfig claims the location. A
    /// backend may then try to create before it reads (a cold start of N
    /// objects saves N reads); when something is there after all, the create
    /// fails on its condition and it reads.
    pub expect_absent: bool,
    /// When the TenantConfig was created (the API server's clock). During the
    /// start-up pass a backend may plan the object's first apply against a
    /// bulk read taken after that instead of reading on its own
    /// ([`tenant_walks`]).
    pub created: Option<k8s_openapi::jiff::Timestamp>,
    /// Keys another writer put at the location may be taken over
    /// (`spec.adoptExisting`); otherwise they are left alone ([`plan::Plan::unclaimed`]).
    pub adopt_existing: bool,
}

/// The result of an apply.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ApplyReport {
    pub written: BTreeSet<String>,
    pub deleted: BTreeSet<String>,
    pub drift_corrected: BTreeSet<String>,
    /// The store's state after the apply (what the projection reads).
    pub state: StoreState,
}

impl ApplyReport {
    pub fn wrote_anything(&self) -> bool {
        !self.written.is_empty() || !self.deleted.is_empty()
    }
}

/// A storage strategy.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// Backend kind for status, events and metric labels (`DynamoDB`, `ParameterStore`).
    fn kind(&self) -> &'static str;
    /// Human-readable address of a location (`TENANT#acme/CONFIG#payments`, `/tenant-config/acme/payments`).
    fn describe(&self, location: &Location) -> String;
    /// Reads everything at `location` (strongly consistent).
    async fn read(&self, location: &Location) -> Result<StoreState, StoreError>;
    /// Checks, without any call, the limits `desired` must meet whatever the
    /// store holds. The controller validates every store an object routes to
    /// before it writes to any, so a refused object writes nothing anywhere.
    fn validate(&self, location: &Location, desired: &Desired) -> Result<(), StoreError>;
    /// Reads, diffs and writes only the differences; retries a lost race by
    /// re-reading. Validates every limit before the first write.
    async fn apply(&self, location: &Location, desired: &Desired) -> Result<ApplyReport, StoreError>;
    /// Removes the keys `owner` manages at `location` (others' keys stay) and
    /// releases ownership. Returns the deleted keys.
    async fn delete_managed(&self, location: &Location, owner: &str) -> Result<BTreeSet<String>, StoreError>;
    /// Where this store's tenant data sits among a projection's layers: a
    /// higher number wins over a lower one (shared includes are below all).
    fn precedence(&self) -> u8;
    /// Read-only shared paths (includes), for backends that have them.
    fn shared_paths(&self) -> Option<&dyn SharedPaths> {
        None
    }
    /// Reading a tenant's locations in bulk, for backends that can.
    fn bulk_read(&self) -> Option<&dyn BulkRead> {
        None
    }
}

/// One backend kind, as the [`registry`] lists it.
pub struct Entry {
    /// Its name in status, Events and metric labels.
    pub kind: &'static str,
    /// The backend a spec describes, if the spec is of this kind.
    pub build: fn(store: &str, spec: &ConfigStoreSpec, ctx: &BackendContext) -> Option<Arc<dyn Backend>>,
    /// Where `change` lands in `store`, if the store is of this kind and owns
    /// the changed key.
    pub locate: fn(change: &change::StoreChange, store: StoreRef<'_>) -> Vec<change::Target>,
    /// The client-side budgets its calls count against.
    pub rate_families: &'static [rate_limit::RateFamily],
}

/// The capability of reading many locations of one tenant in a few calls (the
/// periodic resync reads each tenant once instead of each object).
#[async_trait::async_trait]
pub trait BulkRead: Send + Sync {
    /// The state of each of `locations` (all of `tenant`), in order, exactly as
    /// [`Backend::read`] would find each except for ownership, which only
    /// DynamoDB returns; a location with nothing stored reads as empty.
    async fn read_tenant(&self, tenant: &str, locations: &[Location]) -> Result<Vec<StoreState>, StoreError>;
}

/// The capability of serving shared paths (`sharedPaths`, read by includes).
#[async_trait::async_trait]
pub trait SharedPaths: Send + Sync {
    /// Reads a shared path, flattened to `a.b.c` keys.
    async fn read_shared(&self, path: &str) -> Result<BTreeMap<String, Value>, StoreError>;
}

/// A ConfigStore as routing and change decoding see it: its name and spec.
#[derive(Clone, Copy, Debug)]
pub struct StoreRef<'a> {
    pub name: &'a str,
    pub spec: &'a ConfigStoreSpec,
}

impl<'a> StoreRef<'a> {
    /// Every store of a cache snapshot.
    pub fn all(stores: &'a [Arc<ConfigStore>]) -> Vec<StoreRef<'a>> {
        stores
            .iter()
            .map(|s| StoreRef { name: s.metadata.name.as_deref().unwrap_or_default(), spec: &s.spec })
            .collect()
    }
}

/// The SDK's own error behind a store failure (kept for logs and debugging;
/// status messages use the service's code and message only).
pub type SdkFailure = Box<dyn std::error::Error + Send + Sync>;

/// Store failures, grouped by what the caller should do about them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Input the store would refuse (or silently accept, in an emulator): fix the spec.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// The location belongs to another TenantConfig.
    #[error("{location} is managed by {owner}")]
    Conflict { location: String, owner: String },
    /// The store throttled us beyond the retry budget.
    #[error("{backend} throttled {operation} after retries: {message}")]
    Throttled {
        backend: &'static str,
        operation: &'static str,
        message: String,
        #[source]
        source: Option<SdkFailure>,
    },
    /// Network failure, timeout or a 5xx answer.
    #[error("{backend} unavailable during {operation}: {message}")]
    Unavailable {
        backend: &'static str,
        operation: &'static str,
        message: String,
        #[source]
        source: Option<SdkFailure>,
    },
    /// Any other refusal (access denied, missing table, ...).
    #[error("{backend} {operation} failed: {message}")]
    Api {
        backend: &'static str,
        operation: &'static str,
        code: String,
        message: String,
        #[source]
        source: Option<SdkFailure>,
    },
    /// Lost the optimistic-concurrency race too many times in a row.
    #[error("{location} changed concurrently {attempts} times in a row; giving up for now")]
    Contended { location: String, attempts: u32 },
    #[error("{backend} does not support {what}")]
    Unsupported { backend: &'static str, what: &'static str },
}

impl StoreError {
    /// Low-cardinality label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            StoreError::Limit(_) => "limit",
            StoreError::Conflict { .. } => "conflict",
            StoreError::Throttled { .. } => "throttled",
            StoreError::Unavailable { .. } => "unavailable",
            StoreError::Api { .. } => "api",
            StoreError::Contended { .. } => "contended",
            StoreError::Unsupported { .. } => "unsupported",
        }
    }

    /// Worth retrying without a spec change.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Throttled { .. } | StoreError::Unavailable { .. } | StoreError::Contended { .. })
    }

    /// Classifies an SDK error. Throttling codes differ per service; SSM's is
    /// not modelled, so codes are matched as strings.
    pub(crate) fn from_sdk<E, R>(backend: &'static str, operation: &'static str, err: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        match &err {
            SdkError::ServiceError(service) => {
                // The service's own words; the raw response stays out of status messages.
                let code = service.err().code().unwrap_or("Unknown").to_string();
                let message = format!("{code}: {}", service.err().message().unwrap_or("no message"));
                let source = Some(Box::new(err) as SdkFailure);
                if is_throttling_code(&code) {
                    StoreError::Throttled { backend, operation, message, source }
                } else if is_server_fault_code(&code) {
                    StoreError::Unavailable { backend, operation, message, source }
                } else {
                    StoreError::Api { backend, operation, code, message, source }
                }
            }
            _ => StoreError::Unavailable {
                backend,
                operation,
                message: aws_sdk_dynamodb::error::DisplayErrorContext(&err).to_string(),
                source: Some(Box::new(err)),
            },
        }
    }
}

fn is_throttling_code(code: &str) -> bool {
    matches!(
        code,
        "ThrottlingException"
            | "Throttling"
            | "ThrottledException"
            | "RequestLimitExceeded"
            | "ProvisionedThroughputExceededException"
            | "TooManyUpdates"
            | "RequestThrottled"
            | "SlowDown"
    )
}

fn is_server_fault_code(code: &str) -> bool {
    matches!(code, "InternalServerError" | "InternalFailure" | "ServiceUnavailable" | "InternalServerException")
}

/// Every AWS call of one backend (or of the event queue) goes through here:
/// the process-wide rate limit of its API family first, then the call, then
/// its outcome counted under the backend's name.
#[derive(Clone)]
pub struct CallGate {
    backend: &'static str,
    family: fn(&str) -> &'static str,
    limiters: Arc<Limiters>,
    stats: Arc<CallStats>,
}

impl CallGate {
    pub async fn call<T, E, R>(
        &self,
        operation: &'static str,
        request: impl std::future::Future<Output = Result<T, SdkError<E, R>>>,
    ) -> Result<T, SdkError<E, R>>
    where
        E: ProvideErrorMetadata,
    {
        let backend = self.backend;
        let waiting = std::time::Instant::now();
        if self.limiters.acquire((self.family)(operation)).await {
            self.stats.rate_limit_wait.observe(waiting.elapsed().as_secs_f64());
        }
        let result = request.instrument(tracing::debug_span!("store_call", backend, operation)).await;
        let outcome = match &result {
            Ok(_) => stats::Outcome::Ok,
            Err(SdkError::ServiceError(e)) if is_throttling_code(e.err().code().unwrap_or_default()) => {
                stats::Outcome::Throttled
            }
            Err(_) => stats::Outcome::Error,
        };
        self.stats.record(backend, operation, outcome);
        result
    }
}

/// What every backend shares: the base AWS config, the retry policy, the
/// process-wide rate limiters and the call counters.
#[derive(Clone)]
pub struct BackendContext {
    pub sdk: aws_config::SdkConfig,
    pub retry: RetryConfig,
    pub limiters: Arc<Limiters>,
    pub stats: Arc<CallStats>,
    /// The start-up pass's tenant walks (Parameter Store).
    pub tenant_walks: Arc<tenant_walks::TenantWalks>,
}

/// A retry partition of its own for one backend's client, without a retry
/// quota. The SDK's default quota (500 tokens, 5 per retry, 1 back per success)
/// drains under sustained partial throttling and then fails every throttled
/// call on its first attempt; retries per call stay bounded by the attempt
/// budget and the process-wide rate limits instead.
pub(crate) fn retry_partition(name: &'static str) -> aws_sdk_dynamodb::config::retry::RetryPartition {
    use aws_sdk_dynamodb::config::retry::{RetryPartition, TokenBucket};
    RetryPartition::custom(name).token_bucket(TokenBucket::unlimited()).build()
}

/// The client config of one backend's AWS service: the base config in the
/// store's region, the retry policy, a retry partition of its own, and the
/// store's endpoint override, set on the service's config so that it wins over
/// service-specific endpoint variables, as an explicit setting should. (A
/// macro: each SDK crate has its own builder type.)
macro_rules! service_config {
    ($sdk:ident, $ctx:expr, $spec:expr, $partition:literal) => {{
        let mut config = $sdk::config::Builder::from(&$ctx.sdk_in($spec.region.as_deref()))
            .retry_config($ctx.retry.clone())
            .retry_partition($crate::store::retry_partition($partition));
        if let Some(endpoint) = &$spec.endpoint {
            config = config.endpoint_url(endpoint);
        }
        config.build()
    }};
}
pub(crate) use service_config;

/// SDK attempts per call (the first try included) before a throttle or 5xx is
/// returned as an error; the reconcile then backs off on its own.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 4;

impl BackendContext {
    /// Standard retry (exponential backoff with jitter) with the given attempt
    /// budget, and the given per-API rate limits. Not adaptive retry: its
    /// client-side rate limiter keeps cutting the send rate while throttles
    /// continue, and under a sustained 30% throttle (reliability suite) one
    /// reconcile took over two minutes; the process-wide limits, set at AWS's
    /// own, already pace the calls.
    pub fn new(sdk: aws_config::SdkConfig, limits: RateLimits, max_attempts: u32) -> Self {
        BackendContext {
            sdk,
            retry: RetryConfig::standard().with_max_attempts(max_attempts),
            limiters: Arc::new(Limiters::new(&limits)),
            stats: Arc::new(CallStats::default()),
            tenant_walks: Arc::default(),
        }
    }

    /// The base AWS config in a store's own region, when it sets one.
    pub fn sdk_in(&self, region: Option<&str>) -> aws_config::SdkConfig {
        match region {
            Some(region) => self.sdk.to_builder().region(aws_config::Region::new(region.to_string())).build(),
            None => self.sdk.clone(),
        }
    }

    /// The gate `backend` sends its calls through; `family` names the rate
    /// family each operation counts against (one without a limit is counted,
    /// never held).
    pub fn gate(&self, backend: &'static str, family: fn(&str) -> &'static str) -> CallGate {
        CallGate { backend, family, limiters: self.limiters.clone(), stats: self.stats.clone() }
    }
}

/// Builds the backend a ConfigStore describes.
pub fn build(store_name: &str, spec: &ConfigStoreSpec, ctx: &BackendContext) -> Result<Arc<dyn Backend>, StoreError> {
    registry::build(store_name, spec, ctx)
}
