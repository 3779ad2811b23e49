//! Reconcile errors and what the controller does about them: back off per
//! object, briefly for throttling, and re-request a retry that did not start.

use std::{sync::Arc, time::Duration};

use k8s_openapi::jiff::Timestamp;
use kube::runtime::{controller::Action, reflector::ObjectRef};
use tracing::{info, warn};

use super::context::Context;
use crate::{
    api::{Guarded, conditions::reason},
    store::StoreError,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("TenantConfig has no namespace")]
    MissingNamespace,
    #[error("the ConfigStore, Namespace and TenantConfig caches have not listed yet")]
    CachesNotSynced,
    #[error("ConfigStore {store} is named in status but does not exist")]
    StoreMissing { store: String },
}

impl Error {
    /// The cause, also when the finalizer helper wraps it (every apply and
    /// cleanup runs inside it).
    fn cause(&self) -> &Error {
        use kube::runtime::finalizer::Error as Finalizer;
        match self {
            Error::Finalizer(e) => match &**e {
                Finalizer::ApplyFailed(inner) | Finalizer::CleanupFailed(inner) => inner.cause(),
                _ => self,
            },
            _ => self,
        }
    }

    /// Low-cardinality label for metrics: the cause's.
    pub fn metric_label(&self) -> &'static str {
        match self.cause() {
            Error::Store(e) => e.metric_label(),
            Error::Kube(_) => "kube",
            Error::Finalizer(_) => "finalizer",
            Error::MissingNamespace => "missing_namespace",
            Error::CachesNotSynced => "caches_not_synced",
            Error::StoreMissing { .. } => "store_missing",
        }
    }

    /// Throttling says "slower", not "broken".
    fn is_throttling(&self) -> bool {
        matches!(self.cause(), Error::Store(StoreError::Throttled { .. }))
    }
}

/// The condition reason a store failure is reported with.
pub fn store_failure_reason(e: &StoreError) -> &'static str {
    match e {
        StoreError::Conflict { .. } => reason::CONFLICT,
        StoreError::Limit(_) | StoreError::Unsupported { .. } => reason::VALIDATION_FAILED,
        StoreError::Throttled { .. } => reason::THROTTLED,
        StoreError::Unavailable { .. } | StoreError::Api { .. } | StoreError::Contended { .. } => {
            reason::STORE_UNAVAILABLE
        }
    }
}

/// The delay before retry number `failures` (1-based): exponential from 1 s,
/// capped at 30 s for throttling (a short cap keeps objects moving under
/// sustained partial throttling; the rate limits pace the calls) and at 5 min
/// otherwise, before jitter.
pub fn backoff(failures: u32, throttling: bool) -> Duration {
    let base = Duration::from_secs(1) * 2u32.saturating_pow(failures.saturating_sub(1).min(9));
    base.min(Duration::from_secs(if throttling { 30 } else { 300 }))
}

/// Per-object exponential backoff with jitter for failures.
pub fn error_policy(tc: Arc<Guarded>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = ObjectRef::from_obj(&*tc);
    let failures = ctx.retries.failed(&key);
    ctx.metrics.objects_backing_off.set(ctx.retries.backing_off() as i64);
    let capped = backoff(failures, error.is_throttling());
    // Jitter up to +25% so objects that failed together do not retry together.
    let jitter = capped.mul_f64(f64::from(Timestamp::now().subsec_nanosecond().unsigned_abs() % 1000) / 4000.0);
    warn!(error = %error, label = error.metric_label(), failures, retry_in = ?capped + jitter, "reconcile failed; backing off");
    watch_retry(&ctx, key, capped + jitter);
    Action::requeue(capped + jitter)
}

/// A second path for a retry. kube-runtime 5's scheduler was seen not to run
/// an error-policy requeue (reliability suite, 30% throttling: one object
/// stayed `Throttled` with nothing scheduled until the resync, ten minutes
/// later). If no reconcile of the object has started a second after its
/// retry was due (its start count is unchanged; a success removes it), it is
/// requested again from here. That also happens when the retry is merely late
/// (every reconcile slot busy); the scheduler then merges the two requests.
fn watch_retry(ctx: &Arc<Context>, key: ObjectRef<Guarded>, due_in: Duration) {
    let Some(attempts) = ctx.retries.attempts(&key) else { return };
    let ctx = Arc::downgrade(ctx);
    tokio::spawn(async move {
        tokio::time::sleep(due_in + Duration::from_secs(1)).await;
        let Some(ctx) = ctx.upgrade() else { return };
        if ctx.retries.attempts(&key) == Some(attempts) {
            info!(object = %key, attempts, "the retry has not started a second after it was due; requesting it again");
            ctx.metrics.count_retry_requested_again();
            let _ = ctx.retries_due.unbounded_send(key);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::finalizer::Error as Finalizer;

    #[test]
    fn metric_label_names_the_cause_inside_the_finalizer() {
        let throttled =
            StoreError::Throttled { backend: "DynamoDB", operation: "UpdateItem", message: "x".into(), source: None };
        let apply = Error::Finalizer(Box::new(Finalizer::ApplyFailed(Error::Store(throttled))));
        assert_eq!(apply.metric_label(), "throttled");
        assert!(apply.is_throttling(), "the kind is read through the finalizer too");
        let cleanup = Error::Finalizer(Box::new(Finalizer::CleanupFailed(Error::MissingNamespace)));
        assert_eq!(cleanup.metric_label(), "missing_namespace");
        assert!(!cleanup.is_throttling());
        assert_eq!(Error::Finalizer(Box::new(Finalizer::UnnamedObject)).metric_label(), "finalizer");
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(1, false), Duration::from_secs(1));
        assert_eq!(backoff(4, false), Duration::from_secs(8));
        assert_eq!(backoff(6, true), Duration::from_secs(30), "throttling caps at 30 s");
        assert_eq!(backoff(60, false), Duration::from_secs(300));
    }
}
