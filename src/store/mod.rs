//! Storage strategies: the [`Backend`] trait the reconciler uses without knowing
//! which store is behind it, and the factory that builds one from a ConfigStore.
//!
//! Adding a backend (Secrets Manager, AppConfig, S3): a new optional field and
//! [`StoreBackend`] variant in `api::config_store`, a new module here that
//! implements [`Backend`], and its arm in [`build`]. Nothing else changes.

pub mod dynamodb;
pub mod limits;
pub mod parameter_store;
pub mod plan;
pub mod rate_limit;
pub mod routing;
pub mod shared_cache;
pub mod stats;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use aws_config::retry::RetryConfig;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use tracing::Instrument;

use crate::api::{ConfigStoreSpec, ManagementPolicy, StoreBackend};
pub use limits::LimitError;
pub use rate_limit::{Family, Limiters, RateLimits};
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
#[derive(Clone, Debug, PartialEq, Eq, Default)]
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
    /// Reads a shared path (read-only includes), flattened to `a.b.c` keys.
    /// Backends without shared paths return [`StoreError::Unsupported`].
    async fn read_shared(&self, path: &str) -> Result<BTreeMap<String, Value>, StoreError>;
}

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
    Throttled { backend: &'static str, operation: &'static str, message: String },
    /// Network failure, timeout or a 5xx answer.
    #[error("{backend} unavailable during {operation}: {message}")]
    Unavailable { backend: &'static str, operation: &'static str, message: String },
    /// Any other refusal (access denied, missing table, ...).
    #[error("{backend} {operation} failed: {message}")]
    Api { backend: &'static str, operation: &'static str, code: String, message: String },
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
        R: std::fmt::Debug,
    {
        match &err {
            SdkError::ServiceError(service) => {
                // The service's own words; the raw response stays out of status messages.
                let code = service.err().code().unwrap_or("Unknown").to_string();
                let message = format!("{code}: {}", service.err().message().unwrap_or("no message"));
                if is_throttling_code(&code) {
                    StoreError::Throttled { backend, operation, message }
                } else if is_server_fault_code(&code) {
                    StoreError::Unavailable { backend, operation, message }
                } else {
                    StoreError::Api { backend, operation, code, message }
                }
            }
            _ => StoreError::Unavailable {
                backend,
                operation,
                message: aws_sdk_dynamodb::error::DisplayErrorContext(&err).to_string(),
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

/// Every AWS call of every backend goes through here: the process-wide rate
/// limit of its API family first, then the call, then its outcome counted.
#[derive(Clone)]
pub struct CallGate {
    limiters: Arc<Limiters>,
    stats: Arc<CallStats>,
}

impl CallGate {
    pub async fn call<T, E, R>(
        &self,
        backend: &'static str,
        family: Family,
        operation: &'static str,
        request: impl std::future::Future<Output = Result<T, SdkError<E, R>>>,
    ) -> Result<T, SdkError<E, R>>
    where
        E: ProvideErrorMetadata,
    {
        self.limiters.acquire(family).await;
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
            limiters: Arc::new(Limiters::new(limits)),
            stats: Arc::new(CallStats::default()),
        }
    }

    /// The gate backends send their calls through.
    pub fn gate(&self) -> CallGate {
        CallGate { limiters: self.limiters.clone(), stats: self.stats.clone() }
    }
}

/// Builds the backend a ConfigStore describes.
pub fn build(store_name: &str, spec: &ConfigStoreSpec, ctx: &BackendContext) -> Result<Arc<dyn Backend>, StoreError> {
    match spec.backend() {
        Some(StoreBackend::DynamoDb(d)) => Ok(Arc::new(dynamodb::DynamoDbBackend::new(d, ctx))),
        Some(StoreBackend::ParameterStore(p)) => Ok(Arc::new(parameter_store::ParameterStoreBackend::new(p, ctx))),
        None => Err(LimitError::InvalidStore { store: store_name.to_string() }.into()),
    }
}
