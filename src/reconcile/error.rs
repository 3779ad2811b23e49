//! The errors a reconcile returns to the controller (each retried with
//! backoff by [`super::outcome::error_policy`]), with a low-cardinality label
//! for metrics; and the condition reason of a store failure.

use crate::{api::conditions::reason, store::StoreError};

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
    /// Not a failure: the tenant already has `--tenant-concurrency`
    /// reconciles under way; requeued shortly, without backoff.
    #[error("tenant {tenant} has {limit} reconciles under way; this one waits its turn")]
    TenantBusy { tenant: String, limit: u16 },
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
            Error::TenantBusy { .. } => "tenant_busy",
        }
    }

    /// The tenant's share of the reconcile slots is in use: wait a moment.
    pub fn is_tenant_busy(&self) -> bool {
        matches!(self.cause(), Error::TenantBusy { .. })
    }

    /// Throttling says "slower", not "broken".
    pub fn is_throttling(&self) -> bool {
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
}
