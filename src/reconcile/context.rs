//! What every reconcile shares, as a few services: the Kubernetes API
//! ([`Kube`]), the watch caches ([`Caches`]), the stores ([`Stores`]), the
//! per-object memory ([`Ledgers`]) and what reconciles tell or ask the rest
//! of the process ([`Outbound`], through traits, so that this module does not
//! depend on `events` or on how workloads follow projections).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Instant,
};

use k8s_openapi::api::core::v1::{Namespace, ObjectReference};
use kube::{
    Api, Client, Resource,
    runtime::{
        events::EventType,
        reflector::{ObjectRef, Store},
    },
};
use tracing::warn;

pub use super::{ledgers::Ledgers, settings::Settings};
use crate::{
    api::{
        ConfigStore, ConfigStoreSpec, Guarded, TenantConfig,
        identity::{self, Identity, IdentityError},
    },
    metrics::Metrics,
    recorder::{Recorder, Said},
    store::{self, Backend, BackendContext, Location, StoreError, shared_cache::SharedCache},
    workloads::Projections,
};

/// Shared state of all reconciles.
pub struct Context {
    pub settings: Settings,
    pub kube: Kube,
    pub caches: Caches,
    pub stores: Stores,
    pub ledgers: Ledgers,
    pub outbound: Outbound,
    pub metrics: Arc<Metrics>,
}

impl Context {
    /// A namespace's labels, from the cache (read through on a miss: a
    /// namespace created a moment ago may not be cached yet).
    pub async fn namespace_labels(&self, ns: &str) -> Result<Option<BTreeMap<String, String>>, kube::Error> {
        if let Some(cached) = self.caches.namespaces.get(&ObjectRef::new(ns)) {
            return Ok(cached.metadata.labels.clone());
        }
        Ok(Api::<Namespace>::all(self.kube.client.clone()).get_opt(ns).await?.and_then(|n| n.metadata.labels))
    }

    /// The tenant of a namespace the cache holds (no API call: `None` also
    /// for a namespace not cached yet).
    pub fn cached_tenant(&self, ns: &str) -> Option<String> {
        let labels = self.caches.namespaces.get(&ObjectRef::new(ns))?.metadata.labels.clone();
        Some(self.identity(ns, labels.as_ref()).ok()?.tenant)
    }

    /// The tenant identity of a namespace.
    pub fn identity(&self, ns: &str, labels: Option<&BTreeMap<String, String>>) -> Result<Identity, IdentityError> {
        identity::resolve(ns, labels, &self.settings.tenant_label, &self.settings.environment_label)
    }
}

/// The Kubernetes API and the Event recorder.
pub struct Kube {
    pub client: Client,
    pub recorder: Arc<Recorder>,
}

impl Kube {
    /// Publishes a Kubernetes Event about a TenantConfig (not a store-change event).
    pub async fn publish(&self, tc: &TenantConfig, type_: EventType, reason: &str, note: String) {
        self.publish_for(&tc.object_ref(&()), type_, reason, note).await
    }

    pub async fn publish_for(&self, reference: &ObjectReference, type_: EventType, reason: &str, note: String) {
        let said = Said { regarding: reference, type_, reason, action: "Reconcile", note: &note };
        if let Err(e) = self.recorder.publish(said).await {
            warn!(error = %e, "could not publish event");
        }
    }
}

/// The watch caches a reconcile reads.
pub struct Caches {
    pub config_stores: Store<ConfigStore>,
    pub namespaces: Store<Namespace>,
    /// Every TenantConfig (a tenant's admitted objects seed its quota usage).
    pub tenant_configs: Store<Guarded>,
    /// True once every watch has listed once.
    pub synced: tokio::sync::watch::Receiver<bool>,
}

/// A backend with the spec it was built from.
type Built = (ConfigStoreSpec, Arc<dyn Backend>);

/// The stores: backends built from ConfigStores (rebuilt only when a spec
/// changes) and the shared-path cache.
pub struct Stores {
    pub backend_ctx: BackendContext,
    built: Mutex<HashMap<String, Built>>,
    pub shared_cache: Arc<SharedCache>,
}

impl Stores {
    pub fn new(backend_ctx: BackendContext, shared_cache: Arc<SharedCache>) -> Self {
        Stores { backend_ctx, built: Mutex::default(), shared_cache }
    }

    /// The backend for a store, rebuilt only when its spec changes.
    pub fn backend(&self, name: &str, spec: &ConfigStoreSpec) -> Result<Arc<dyn Backend>, StoreError> {
        let mut built = self.built.lock().unwrap();
        if let Some((built_from, backend)) = built.get(name)
            && built_from == spec
        {
            return Ok(backend.clone());
        }
        let backend = store::build(name, spec, &self.backend_ctx)?;
        self.shared_cache.invalidate_store(name);
        built.insert(name.to_string(), (spec.clone(), backend.clone()));
        Ok(backend)
    }
}

/// What reconciles tell, or ask, the rest of the process.
pub struct Outbound {
    /// The event side: which messages may be acknowledged, their lag.
    pub progress: Arc<dyn Progress>,
    /// The event side's index: who else claims a location.
    pub claims: Arc<dyn Claims>,
    /// What each object projected, for pod refresh and workload rollout.
    pub projections: Arc<Projections>,
    /// Reconcile requests for retries that had not started when due.
    pub retries_due: futures::channel::mpsc::UnboundedSender<ObjectRef<Guarded>>,
}

/// Which objects claim which locations (the event side's index answers it).
pub trait Claims: Send + Sync {
    /// Whether a TenantConfig other than `object` claims `location`.
    fn claimed_by_another(&self, location: &Location, object: &ObjectRef<Guarded>) -> bool;
}

/// What the event side learns from reconciles (to acknowledge messages and
/// measure their lag).
pub trait Progress: Send + Sync {
    /// The reconcile of `object` that started at `started` wrote its projection.
    fn projected(&self, object: &ObjectRef<Guarded>, started: Instant);
    /// The reconcile of `object` that started at `started` succeeded.
    fn succeeded(&self, object: &ObjectRef<Guarded>, started: Instant);
}
