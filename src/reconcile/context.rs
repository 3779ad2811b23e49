//! What every reconcile shares: settings, clients, caches, built backends, and
//! the two things it tells or asks the event side (through [`Claims`] and
//! [`Progress`], so that this module does not depend on `events`).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
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

use super::{echo::OwnWrites, error::Error, last_read::LastReads};
use crate::{
    api::{
        ConfigStore, ConfigStoreSpec, Guarded, TenantConfig,
        identity::{self, Identity, IdentityError},
        names,
    },
    metrics::Metrics,
    recorder::{Recorder, Said},
    store::{self, Backend, BackendContext, Location, StoreError, shared_cache::SharedCache},
    workloads::Projections,
};

/// Controller settings: command-line flags (with environment variables),
/// flattened into `tenant-config-controller run`. [`Settings::default`] gives
/// the flags' defaults, so they are written once, here.
#[derive(Clone, Debug, clap::Args)]
pub struct Settings {
    /// Namespace label whose value is the tenant. Namespaces without it get nothing written.
    #[arg(long, env = "TENANT_CONFIG_TENANT_LABEL", default_value = names::TENANT_LABEL)]
    pub tenant_label: String,
    /// Namespace label whose value adds an environment dimension to store keys.
    #[arg(long, env = "TENANT_CONFIG_ENVIRONMENT_LABEL", default_value = names::ENVIRONMENT_LABEL)]
    pub environment_label: String,
    /// The stores are compared with what every object last projected this often
    /// (lost events, out-of-band drift); objects that differ are reconciled. E.g. 10m, 30s.
    #[arg(long, env = "TENANT_CONFIG_RESYNC_INTERVAL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub resync_interval: Duration,
    /// How the resync reads the stores: `bulk` reads each tenant once per store and
    /// reconciles only what changed; `per-object` reconciles every object (one read of
    /// each of its stores per object; the behaviour before bulk reads, kept for comparison).
    #[arg(long, env = "TENANT_CONFIG_RESYNC_MODE", value_enum, default_value_t = ResyncMode::Bulk)]
    pub resync_mode: ResyncMode,
    /// Reconciles running at once. 16 and 32 measured side by side
    /// (BENCHMARKS.md): 16 is faster for a shared fan-out to 1,000 objects and
    /// for a cold start of 10,000.
    #[arg(long, env = "TENANT_CONFIG_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
    /// Project secure entries into Secrets (the ServiceAccount then needs to write Secrets).
    #[arg(long, env = "TENANT_CONFIG_SECURE_PROJECTION", default_value_t = false)]
    pub secure_projection: bool,
    /// A cached read of an included shared path is refreshed after this long even without an event.
    #[arg(long, env = "TENANT_CONFIG_SHARED_CACHE_MAX_AGE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub shared_cache_max_age: Duration,
}

/// How the periodic resync finds the objects to reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ResyncMode {
    /// One bulk read per tenant and store; only objects whose stores changed.
    Bulk,
    /// Every object, each reading its own stores.
    PerObject,
}

impl Default for Settings {
    /// The flags' defaults, ignoring the environment.
    fn default() -> Self {
        use clap::{Args, FromArgMatches};
        let command = Settings::augment_args(clap::Command::new("defaults")).mut_args(|arg| arg.env(None));
        let matches = command.try_get_matches_from(["defaults"]).expect("every setting has a default");
        Settings::from_arg_matches(&matches).expect("defaults parse")
    }
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

/// A backend with the spec it was built from.
type Built = (ConfigStoreSpec, Arc<dyn Backend>);

/// Built backends by store name.
#[derive(Default)]
pub struct Backends(Mutex<HashMap<String, Built>>);

/// Shared state of all reconciles.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub backend_ctx: BackendContext,
    pub stores: Store<ConfigStore>,
    pub namespaces: Store<Namespace>,
    pub backends: Backends,
    pub recorder: Arc<Recorder>,
    pub retries: Retries,
    /// Requested reconciles that have not started (the queue depth).
    pub requests: Arc<Requests>,
    pub progress: Arc<dyn Progress>,
    pub claims: Arc<dyn Claims>,
    pub shared_cache: Arc<SharedCache>,
    pub metrics: Arc<Metrics>,
    /// ConfigMap writes of this controller whose watch event is still to come.
    pub own_writes: Arc<OwnWrites>,
    /// True once every watch has listed once.
    pub caches_synced: tokio::sync::watch::Receiver<bool>,
    /// Reconcile requests for retries that had not started when due.
    pub retries_due: futures::channel::mpsc::UnboundedSender<ObjectRef<Guarded>>,
    /// What each object's last successful reconcile read (for the resync).
    pub last_reads: Arc<LastReads>,
    /// What each object projected, for pod refresh and workload rollout.
    pub projections: Arc<Projections>,
}

impl Context {
    /// The backend for a store, rebuilt only when its spec changes.
    pub fn backend(&self, name: &str, spec: &ConfigStoreSpec) -> Result<Arc<dyn Backend>, StoreError> {
        let mut cache = self.backends.0.lock().unwrap();
        if let Some((cached_spec, backend)) = cache.get(name)
            && cached_spec == spec
        {
            return Ok(backend.clone());
        }
        let backend = store::build(name, spec, &self.backend_ctx)?;
        self.shared_cache.invalidate_store(name);
        cache.insert(name.to_string(), (spec.clone(), backend.clone()));
        Ok(backend)
    }

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

    /// A namespace's labels, from the cache (read through on a miss: a
    /// namespace created a moment ago may not be cached yet).
    pub async fn namespace_labels(&self, ns: &str) -> Result<Option<BTreeMap<String, String>>, Error> {
        if let Some(cached) = self.namespaces.get(&ObjectRef::new(ns)) {
            return Ok(cached.metadata.labels.clone());
        }
        Ok(Api::<Namespace>::all(self.client.clone()).get_opt(ns).await?.and_then(|n| n.metadata.labels))
    }

    /// The tenant identity of a namespace.
    pub fn identity(&self, ns: &str, labels: Option<&BTreeMap<String, String>>) -> Result<Identity, IdentityError> {
        identity::resolve(ns, labels, &self.settings.tenant_label, &self.settings.environment_label)
    }
}

/// Objects whose reconcile was requested (a watch change, an owned ConfigMap,
/// a namespace or store change, an event, the resync, a re-requested retry)
/// and has not started: the reconcile queue's depth. A retry waiting for its
/// backoff is not in it (see `objects_backing_off`).
pub struct Requests {
    requested: Mutex<HashMap<ObjectRef<Guarded>, Request>>,
    depth: prometheus_client::metrics::gauge::Gauge,
}

/// A pending request: since when, and whether only shared-path changes asked.
struct Request {
    since: Instant,
    shared_only: bool,
}

impl Requests {
    pub fn new(depth: prometheus_client::metrics::gauge::Gauge) -> Self {
        Requests { requested: Mutex::default(), depth }
    }

    /// A reconcile of `object` was requested now (repeats merge, as in the queue).
    pub fn requested(&self, object: &ObjectRef<Guarded>) {
        self.request(object, false)
    }

    /// A reconcile was requested by a change under a shared path only: unless
    /// anything else asks too before it starts, it may reuse the object's last
    /// read of its own stores.
    pub fn requested_by_shared_change(&self, object: &ObjectRef<Guarded>) {
        self.request(object, true)
    }

    fn request(&self, object: &ObjectRef<Guarded>, shared_only: bool) {
        let mut requested = self.requested.lock().unwrap();
        let request = requested.entry(object.clone()).or_insert(Request { since: Instant::now(), shared_only });
        request.shared_only &= shared_only;
        self.depth.set(requested.len() as i64);
    }

    /// A reconcile of `object` started at `at`: it serves every request made
    /// before. Returns whether only shared-path changes asked for it (a
    /// reconcile nobody asked for through here, e.g. a retry, did not).
    pub fn started(&self, object: &ObjectRef<Guarded>, at: Instant) -> bool {
        let mut requested = self.requested.lock().unwrap();
        let served = requested.get(object).is_some_and(|r| r.since <= at);
        let shared_only = if served { requested.remove(object).is_some_and(|r| r.shared_only) } else { false };
        self.depth.set(requested.len() as i64);
        shared_only
    }

    /// The object is gone: nothing will start for it.
    pub fn forget(&self, object: &ObjectRef<Guarded>) {
        let mut requested = self.requested.lock().unwrap();
        requested.remove(object);
        self.depth.set(requested.len() as i64);
    }

    pub fn depth(&self) -> usize {
        self.requested.lock().unwrap().len()
    }
}

/// Per-object failure and attempt counts, for backoff and for re-requesting
/// retries that did not start.
#[derive(Default)]
pub struct Retries {
    failures: Mutex<HashMap<ObjectRef<Guarded>, u32>>,
    /// Reconciles started per object since its last success.
    attempts: Mutex<HashMap<ObjectRef<Guarded>, u64>>,
}

impl Retries {
    pub fn started(&self, key: &ObjectRef<Guarded>) {
        *self.attempts.lock().unwrap().entry(key.clone()).or_insert(0) += 1;
    }

    /// A success: the backoff starts over.
    pub fn succeeded(&self, key: &ObjectRef<Guarded>) {
        self.failures.lock().unwrap().remove(key);
        self.attempts.lock().unwrap().remove(key);
    }

    /// Counts a failure; returns how many in a row.
    pub fn failed(&self, key: &ObjectRef<Guarded>) -> u32 {
        let mut map = self.failures.lock().unwrap();
        let n = map.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    /// Whether the object's last reconcile failed.
    pub fn failing(&self, key: &ObjectRef<Guarded>) -> bool {
        self.failures.lock().unwrap().contains_key(key)
    }

    /// Objects whose last reconcile failed.
    pub fn backing_off(&self) -> usize {
        self.failures.lock().unwrap().len()
    }

    pub fn attempts(&self, key: &ObjectRef<Guarded>) -> Option<u64> {
        self.attempts.lock().unwrap().get(key).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_merge_and_a_start_serves_those_before_it() {
        let requests = Requests::new(Default::default());
        let (a, b) = (ObjectRef::new("a").within("ns"), ObjectRef::new("b").within("ns"));
        requests.requested(&a);
        requests.requested(&a);
        requests.requested(&b);
        assert_eq!(requests.depth(), 2, "a repeated request is one entry, as in the queue");
        let before = Instant::now() - Duration::from_secs(60);
        requests.started(&a, before);
        assert_eq!(requests.depth(), 2, "a reconcile that started before the request does not serve it");
        requests.started(&a, Instant::now());
        assert_eq!(requests.depth(), 1);
        requests.forget(&b);
        assert_eq!(requests.depth(), 0);
    }

    #[test]
    fn only_a_reconcile_that_nothing_but_shared_changes_asked_for_may_reuse_reads() {
        let requests = Requests::new(Default::default());
        let a = ObjectRef::new("a").within("ns");
        requests.requested_by_shared_change(&a);
        requests.requested_by_shared_change(&a);
        assert!(requests.started(&a, Instant::now()), "shared changes only");
        requests.requested_by_shared_change(&a);
        requests.requested(&a);
        requests.requested_by_shared_change(&a);
        assert!(!requests.started(&a, Instant::now()), "another cause, before or after, wins");
        assert!(!requests.started(&a, Instant::now()), "nothing pending (a retry, a requeue): a full reconcile");
        requests.requested_by_shared_change(&a);
        assert!(
            !requests.started(&a, Instant::now() - Duration::from_secs(60)),
            "a request after the start is not served"
        );
        assert_eq!(requests.depth(), 1);
    }

    #[test]
    fn default_settings_are_the_flags_defaults() {
        let s = Settings::default();
        assert_eq!(s.tenant_label, "tenantconfig.io/tenant");
        assert_eq!(s.environment_label, "tenantconfig.io/environment");
        assert_eq!(s.resync_interval, Duration::from_secs(600));
        assert_eq!(s.resync_mode, ResyncMode::Bulk);
        assert_eq!(s.concurrency, 16);
        assert!(!s.secure_projection);
        assert_eq!(s.shared_cache_max_age, Duration::from_secs(300));
    }
}
