//! The TenantConfig controller: thin IO steps around the pure ones.
//!
//! resolve identity → load stores → route and plan (in the backends) → apply to
//! stores → render projection → apply to Kubernetes → status.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::{
    api::core::v1::{ConfigMap, Namespace, Secret},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, PartialObjectMeta, Patch, PatchParams},
    runtime::{
        Controller, WatchStreamExt,
        controller::{self, Action},
        events::{Event, EventType, Recorder, Reporter},
        finalizer::{Event as Finalizer, finalizer},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde_json::json;
use tracing::{debug, info, instrument, warn};

use super::{
    Guarded,
    echo::OwnWrites,
    identity::{self, IdentityError},
    projection::{self, Layer, Source},
    status,
};
use crate::{
    api::{
        ConfigStore, ConfigStoreSpec, DeletionPolicy, StoreSummary, TenantConfig, TenantConfigStatus,
        conditions::{self, PROJECTED, READY, STORE_SYNCED, reason},
    },
    events::{EventRouter, envelope::Target, index::Index, sqs, tracker::Tracker},
    server::Probes,
    store::{
        self, Backend, BackendContext, Desired, Location, StoreError, Value,
        routing::{self, Candidate},
        shared_cache::SharedCache,
    },
    telemetry::Metrics,
};

pub const FINALIZER: &str = "tenantconfig.io/cleanup";
pub const FIELD_MANAGER: &str = "tenant-config-controller";
/// How long a reconcile waits for the caches' first listing before it backs off.
const CACHE_SYNC_WAIT: Duration = Duration::from_secs(30);

/// Controller settings (flags).
#[derive(Clone, Debug)]
pub struct Settings {
    pub tenant_label: String,
    pub environment_label: String,
    /// Requeue of every object, the safety net for lost events and drift.
    pub resync_interval: Duration,
    /// Reconciles running at once.
    pub concurrency: u16,
    /// Project secure entries into Secrets (needs RBAC to write Secrets).
    pub secure_projection: bool,
    /// A cached shared-path read is refilled after this long even without an
    /// event (a lost event costs at most this much staleness).
    pub shared_cache_max_age: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            tenant_label: identity::DEFAULT_TENANT_LABEL.into(),
            environment_label: identity::DEFAULT_ENVIRONMENT_LABEL.into(),
            resync_interval: Duration::from_secs(600),
            concurrency: 16,
            secure_projection: false,
            shared_cache_max_age: Duration::from_secs(300),
        }
    }
}

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
    /// Low-cardinality label for metrics: the cause, also when the finalizer
    /// helper wraps it (every apply and cleanup runs inside it).
    pub fn metric_label(&self) -> &'static str {
        use kube::runtime::finalizer::Error as Finalizer;
        match self {
            Error::Store(e) => e.metric_label(),
            Error::Kube(_) => "kube",
            Error::Finalizer(e) => match &**e {
                Finalizer::ApplyFailed(inner) | Finalizer::CleanupFailed(inner) => inner.metric_label(),
                _ => "finalizer",
            },
            Error::MissingNamespace => "missing_namespace",
            Error::CachesNotSynced => "caches_not_synced",
            Error::StoreMissing { .. } => "store_missing",
        }
    }
}

/// Built backends by store name, with the spec they were built from.
type BackendCache = HashMap<String, (ConfigStoreSpec, Arc<dyn Backend>)>;

/// Shared state of all reconciles.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub backend_ctx: BackendContext,
    stores: Store<ConfigStore>,
    namespaces: Store<Namespace>,
    backends: Mutex<BackendCache>,
    recorder: Recorder,
    failures: Mutex<HashMap<ObjectRef<Guarded>, u32>>,
    /// Reconciles started per object since its last success (for [`watch_retry`]).
    attempts: Mutex<HashMap<ObjectRef<Guarded>, u64>>,
    pub tracker: Arc<Tracker>,
    pub shared_cache: Arc<SharedCache>,
    pub metrics: Arc<Metrics>,
    /// Which objects claim which locations (kept by the watches).
    index: Arc<Index>,
    /// ConfigMap writes of this controller whose watch event is still to come.
    own_writes: Arc<OwnWrites>,
    /// True once every watch has listed once.
    caches_synced: tokio::sync::watch::Receiver<bool>,
    /// Reconcile requests for retries that had not started when due (see [`watch_retry`]).
    retries_due: futures::channel::mpsc::UnboundedSender<ObjectRef<Guarded>>,
}

impl Context {
    /// The backend for a store, rebuilt only when its spec changes.
    fn backend(&self, name: &str, spec: &ConfigStoreSpec) -> Result<Arc<dyn Backend>, StoreError> {
        let mut cache = self.backends.lock().unwrap();
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

    async fn event(&self, tc: &TenantConfig, type_: EventType, reason: &str, note: String) {
        let event =
            Event { type_, reason: reason.into(), note: Some(note), action: "Reconcile".into(), secondary: None };
        if let Err(e) = self.recorder.publish(&event, &tc.object_ref(&())).await {
            warn!(error = %e, "could not publish event");
        }
    }
}

/// What one reconcile concluded, turned into status by [`write_status`].
struct Verdict {
    ready: (bool, &'static str, String),
    store_synced: (bool, &'static str, String),
    projected: (bool, &'static str, String),
    stores: Option<Vec<StoreSummary>>,
    projection: Option<Projected>,
}

/// A successful projection, for status.
struct Projected {
    config_map: String,
    keys: i32,
    digest: String,
    /// The ConfigMap or Secret was written in this reconcile.
    written: bool,
}

impl Verdict {
    fn refused(reason: &'static str, message: String) -> Self {
        Verdict {
            ready: (false, reason, message.clone()),
            store_synced: (false, reason, message.clone()),
            projected: (false, reason, message),
            stores: None,
            projection: None,
        }
    }
}

/// Runs the controller (and, with `events`, the queue consumer) until
/// `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    backend_ctx: BackendContext,
    events: Option<sqs::ConsumerSettings>,
    metrics: Arc<Metrics>,
    probes: Arc<Probes>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let shutdown = shutdown.shared();
    let watch = watcher::Config::default().any_semantic();
    let index = Arc::new(Index::new(&settings.tenant_label, &settings.environment_label));

    // Readiness comes from each watch's first complete listing, not from
    // Store::wait_until_ready: that wakes only the last of several concurrent
    // waiters (kube-runtime 5.0's DelayedInit keeps one waker), which left
    // reconciles waiting for their timeout and stalled shutdown.
    let sync = Arc::new(CacheSync::new(probes.clone()));
    let (stores, store_writer) = reflector::store();
    let store_sync = sync.clone();
    let store_events =
        cached(store_writer, watcher(Api::<ConfigStore>::all(client.clone()), watch.clone()), move |event| {
            store_sync.observe(0, matches!(event, watcher::Event::InitDone))
        })
        .default_backoff()
        .touched_objects();
    let (namespaces, ns_writer) = reflector::store();
    let (ns_index, ns_sync) = (index.clone(), sync.clone());
    let namespace_events =
        cached(ns_writer, watcher(Api::<Namespace>::all(client.clone()), watch.clone()), move |event| {
            ns_index.observe_namespace(event);
            ns_sync.observe(1, matches!(event, watcher::Event::InitDone));
        })
        .default_backoff()
        .touched_objects();
    let (objects, tc_writer) = reflector::store();
    let (tc_index, tc_sync) = (index.clone(), sync.clone());
    let tenant_configs = cached(
        tc_writer,
        watcher(Api::<Guarded>::all(client.clone()), watch.clone()).modify(slim_for_cache),
        move |event| {
            tc_index.observe_tenant_config(event);
            tc_sync.observe(2, matches!(event, watcher::Event::InitDone));
        },
    )
    .default_backoff()
    .applied_objects()
    .predicate_filter(spec_or_lifecycle, Default::default());

    let tracker = Arc::new(Tracker::new(metrics.clone()));
    let shared_cache = Arc::new(SharedCache::new(settings.shared_cache_max_age, metrics.clone()));
    let (trigger, triggered) = futures::channel::mpsc::unbounded();
    let (retries_due, retry_requests) = futures::channel::mpsc::unbounded();
    let consumer = events.map(|consumer_settings| {
        let sqs_config =
            aws_sdk_sqs::config::Builder::from(&backend_ctx.sdk).retry_config(backend_ctx.retry.clone()).build();
        sqs::Consumer {
            sqs: aws_sdk_sqs::Client::from_conf(sqs_config),
            settings: consumer_settings,
            router: Arc::new(EventRouter {
                stores: stores.clone(),
                index: index.clone(),
                objects: objects.clone(),
                shared_cache: shared_cache.clone(),
            }),
            tracker: tracker.clone(),
            metrics: metrics.clone(),
            stats: backend_ctx.stats.clone(),
        }
    });
    if consumer.is_none() {
        warn!(resync = ?settings.resync_interval, "no event queue configured: store changes arrive only with the resync");
    }
    let resync = resync_ticks(settings.resync_interval);
    let in_namespace = objects.clone();
    let all_objects = objects.clone();
    // Owned ConfigMaps: metadata is enough to find the owner, and the
    // controller's own writes coming back are not a reason to reconcile.
    let own_writes = Arc::new(OwnWrites::default());
    let echoes = own_writes.clone();
    let config_maps = watcher(
        Api::<PartialObjectMeta<ConfigMap>>::all(client.clone()),
        watch.clone().labels(&format!("{}={}", projection::MANAGED_BY_LABEL, projection::MANAGER)),
    )
    .default_backoff()
    .try_filter(move |event| {
        let echo = echoes.is_echo(event);
        if echo {
            debug!("own ConfigMap write came back; not reconciling again");
        }
        futures::future::ready(!echo)
    })
    .touched_objects();
    let controller = Controller::for_stream(tenant_configs, objects)
        .owns_stream(config_maps)
        .with_config(controller::Config::default().concurrency(settings.concurrency));
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), Reporter { controller: FIELD_MANAGER.into(), instance: None }),
        client,
        settings,
        backend_ctx,
        stores,
        namespaces,
        backends: Mutex::default(),
        failures: Mutex::default(),
        attempts: Mutex::default(),
        tracker,
        shared_cache,
        metrics,
        index: index.clone(),
        own_writes,
        caches_synced: sync.receiver(),
        retries_due,
    });
    let controller = controller
        // A namespace's labels are its tenant identity: re-reconcile its objects.
        .watches_stream(namespace_events, move |ns: Namespace| {
            in_namespace
                .state()
                .into_iter()
                .filter(|tc| tc.meta().namespace == ns.metadata.name)
                .map(|tc| ObjectRef::from_obj(&*tc))
                .collect::<Vec<_>>()
        })
        // Any store change can change routing for every object.
        .watches_stream(store_events, move |_: ConfigStore| {
            all_objects.state().iter().map(|tc| ObjectRef::from_obj(&**tc)).collect::<Vec<_>>()
        })
        .reconcile_on(triggered)
        .reconcile_on(retry_requests)
        .reconcile_all_on(resync)
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "reconcile failed");
            }
        })
        .inspect(|_| info!("controller stopped"));
    // kube-runtime holds the reconcile runner until the TenantConfig cache is
    // ready; a shutdown that comes first also ends the watch that would make
    // it ready, and the controller then waited forever (a pod stopped during
    // startup sat out its grace period). Before the caches synced no reconcile
    // has passed its cache wait, so there is nothing to finish.
    let mut synced_at_shutdown = sync.receiver();
    let shutdown_before_sync = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.await;
            if *synced_at_shutdown.borrow_and_update() {
                std::future::pending::<()>().await;
            }
        }
    };
    let work = async move {
        match consumer {
            Some(consumer) => {
                tokio::join!(controller, consumer.run(trigger, shutdown));
            }
            None => {
                // Nothing else sends triggers: an open sender would keep the
                // controller's trigger stream (and so its shutdown) pending.
                drop(trigger);
                controller.await
            }
        }
    };
    tokio::select! {
        _ = work => {}
        _ = shutdown_before_sync => info!("shutdown before the caches synced: nothing in flight to finish"),
    }
    probes.caches_synced.store(false, std::sync::atomic::Ordering::Release);
}

/// A reflector whose `observe` sees each watch event only after the cache has
/// applied it, so whoever `observe` tells that a listing is complete finds
/// that listing in the cache. Observing the watcher's own stream instead runs
/// before the reflector swaps the listing in: a reconcile woken by "synced" on
/// the other worker thread could read an empty ConfigStore cache, clean up no
/// store and release its finalizer, leaving the object's items behind.
fn cached<K, S>(
    writer: reflector::store::Writer<K>,
    watch: S,
    mut observe: impl FnMut(&watcher::Event<K>),
) -> impl futures::Stream<Item = watcher::Result<watcher::Event<K>>>
where
    K: kube::runtime::reflector::Lookup + Clone,
    K::DynamicType: Eq + std::hash::Hash + Clone,
    S: futures::Stream<Item = watcher::Result<watcher::Event<K>>>,
{
    reflector::reflector(writer, watch).inspect_ok(move |event| observe(event))
}

/// Whether the ConfigStore, Namespace and TenantConfig watches have each listed
/// once (routing and identity need complete caches).
struct CacheSync {
    listed: Mutex<[bool; 3]>,
    synced: tokio::sync::watch::Sender<bool>,
    probes: Arc<Probes>,
}

impl CacheSync {
    fn new(probes: Arc<Probes>) -> Self {
        CacheSync { listed: Mutex::default(), synced: tokio::sync::watch::Sender::new(false), probes }
    }

    fn observe(&self, watch: usize, init_done: bool) {
        if !init_done {
            return;
        }
        let mut listed = self.listed.lock().unwrap();
        listed[watch] = true;
        if listed.iter().all(|l| *l) && !*self.synced.borrow() {
            self.synced.send_replace(true);
            self.probes.caches_synced.store(true, std::sync::atomic::Ordering::Release);
            info!("caches synced");
        }
    }

    fn receiver(&self) -> tokio::sync::watch::Receiver<bool> {
        self.synced.subscribe()
    }
}

/// One tick per interval, the first one interval from now.
fn resync_ticks(interval: Duration) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(
        tokio::time::interval_at(tokio::time::Instant::now() + interval, interval),
        |mut ticks| async {
            ticks.tick().await;
            Some(((), ticks))
        },
    )
}

async fn reconcile(guarded: Arc<Guarded>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = ObjectRef::from_obj(&*guarded);
    let started = Instant::now();
    *ctx.attempts.lock().unwrap().entry(key.clone()).or_insert(0) += 1;
    let mut timer = ReconcileTimer { ctx: &ctx, started, error: None };
    let result = match &guarded.0 {
        Ok(tc) => reconcile_valid(Arc::new(tc.clone()), &ctx, &key, started).await,
        Err(invalid) => {
            // Nothing typed can be done with it (not even a status patch): say so
            // once and wait for the object to change.
            let meta = &invalid.metadata;
            warn!(namespace = meta.namespace.as_deref(), name = meta.name.as_deref(), error = %invalid.error, "TenantConfig does not deserialize");
            let reference = k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some(TenantConfig::api_version(&()).into()),
                kind: Some(TenantConfig::kind(&()).into()),
                name: meta.name.clone(),
                namespace: meta.namespace.clone(),
                uid: meta.uid.clone(),
                ..Default::default()
            };
            let event = Event {
                type_: EventType::Warning,
                reason: reason::VALIDATION_FAILED.into(),
                note: Some(format!("object does not match the TenantConfig schema: {}", invalid.error)),
                action: "Reconcile".into(),
                secondary: None,
            };
            if let Err(e) = ctx.recorder.publish(&event, &reference).await {
                warn!(error = %e, "could not publish event");
            }
            Ok(Action::await_change())
        }
    };
    match &result {
        Ok(_) => {
            ctx.failures.lock().unwrap().remove(&key); // backoff restarts after a success
            ctx.attempts.lock().unwrap().remove(&key);
            ctx.tracker.succeeded(&key, started);
        }
        Err(e) => timer.error = Some(e.metric_label()),
    }
    result
}

#[instrument(skip_all, fields(namespace = tc.metadata.namespace.as_deref(), name = %tc.name_any(), config_type = tc.config_type(), tenant))]
async fn reconcile_valid(
    tc: Arc<TenantConfig>,
    ctx: &Context,
    key: &ObjectRef<Guarded>,
    started: Instant,
) -> Result<Action, Error> {
    // Routing and cleanup need the complete set of stores and namespaces: a
    // decision taken on a partial cache (no store known → nothing to clean up)
    // is never taken; the object is retried with backoff instead.
    let mut synced = ctx.caches_synced.clone();
    if !matches!(tokio::time::timeout(CACHE_SYNC_WAIT, synced.wait_for(|s| *s)).await, Ok(Ok(_))) {
        return Err(Error::CachesNotSynced);
    }
    let ns = tc.namespace().ok_or(Error::MissingNamespace)?;
    let api = Api::<TenantConfig>::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, tc, |event| async {
        match event {
            Finalizer::Apply(tc) => apply(tc, ctx, key, started).await,
            Finalizer::Cleanup(tc) => cleanup(tc, ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Counts a reconcile and its duration when dropped, also when the reconcile
/// future is dropped mid-way (shutdown).
struct ReconcileTimer<'a> {
    ctx: &'a Context,
    started: Instant,
    error: Option<&'static str>,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.ctx.metrics.reconciled(self.error, self.started.elapsed().as_secs_f64());
    }
}

/// Drops what the controller never reads from a cached TenantConfig: the
/// server-side-apply bookkeeping and kubectl's client-side copy of the last
/// applied manifest, which together can outweigh the object itself (the
/// cache holds every TenantConfig of the cluster).
fn slim_for_cache(tc: &mut Guarded) {
    tc.managed_fields_mut().clear();
    tc.annotations_mut().remove("kubectl.kubernetes.io/last-applied-configuration");
}

/// What makes an object worth reconciling when it changes: its spec (the
/// generation), its finalizers and its deletion — not the status this
/// controller writes, which would re-trigger every object after each reconcile
/// (measured: 2.5 store reads per object during a cold start instead of 1).
fn spec_or_lifecycle(tc: &Guarded) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let meta = tc.meta();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    meta.generation.hash(&mut hasher);
    meta.finalizers.hash(&mut hasher);
    meta.deletion_timestamp.as_ref().map(|t| t.0.to_string()).hash(&mut hasher);
    Some(hasher.finish())
}

/// Per-object exponential backoff with jitter for transient failures.
fn error_policy(tc: Arc<Guarded>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = {
        let mut map = ctx.failures.lock().unwrap();
        let n = map.entry(ObjectRef::from_obj(&*tc)).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let base = Duration::from_secs(1) * 2u32.saturating_pow(failures.saturating_sub(1).min(9));
    // Throttling says "slower", not "broken": a short cap keeps objects moving
    // under sustained partial throttling (the rate limits pace the calls).
    let cap = if error.metric_label() == "throttled" { 30 } else { 300 };
    let capped = base.min(Duration::from_secs(cap));
    // Jitter up to +25% so objects that failed together do not retry together.
    let jitter = capped.mul_f64(f64::from(Timestamp::now().subsec_nanosecond().unsigned_abs() % 1000) / 4000.0);
    warn!(error = %error, label = error.metric_label(), failures, retry_in = ?capped + jitter, "reconcile failed; backing off");
    watch_retry(&ctx, ObjectRef::from_obj(&*tc), capped + jitter);
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
    let Some(attempts) = ctx.attempts.lock().unwrap().get(&key).copied() else { return };
    let ctx = Arc::downgrade(ctx);
    tokio::spawn(async move {
        tokio::time::sleep(due_in + Duration::from_secs(1)).await;
        let Some(ctx) = ctx.upgrade() else { return };
        if ctx.attempts.lock().unwrap().get(&key) == Some(&attempts) {
            info!(object = %key, attempts, "the retry has not started a second after it was due; requesting it again");
            ctx.metrics.count_retry_requested_again();
            let _ = ctx.retries_due.unbounded_send(key);
        }
    });
}

fn identity_of(
    tc: &TenantConfig,
    ctx: &Context,
    labels: Option<&BTreeMap<String, String>>,
) -> Result<identity::Identity, IdentityError> {
    identity::resolve(
        tc.metadata.namespace.as_deref().unwrap_or_default(),
        labels,
        &ctx.settings.tenant_label,
        &ctx.settings.environment_label,
    )
}

async fn namespace_labels(ns: &str, ctx: &Context) -> Result<Option<BTreeMap<String, String>>, Error> {
    if let Some(cached) = ctx.namespaces.get(&ObjectRef::new(ns)) {
        return Ok(cached.metadata.labels.clone());
    }
    Ok(Api::<Namespace>::all(ctx.client.clone()).get_opt(ns).await?.and_then(|n| n.metadata.labels))
}

fn store_failure_reason(e: &StoreError) -> &'static str {
    match e {
        StoreError::Conflict { .. } => reason::CONFLICT,
        StoreError::Limit(_) | StoreError::Unsupported { .. } => reason::VALIDATION_FAILED,
        StoreError::Throttled { .. } => reason::THROTTLED,
        StoreError::Unavailable { .. } | StoreError::Api { .. } | StoreError::Contended { .. } => {
            reason::STORE_UNAVAILABLE
        }
    }
}

async fn apply(
    tc: Arc<TenantConfig>,
    ctx: &Context,
    key: &ObjectRef<Guarded>,
    started: Instant,
) -> Result<Action, Error> {
    let ns = tc.namespace().ok_or(Error::MissingNamespace)?;
    let owner = format!("{ns}/{}", tc.name_any());
    let labels = namespace_labels(&ns, ctx).await?;
    let identity = match identity_of(&tc, ctx, labels.as_ref()) {
        Ok(id) => id,
        Err(e) => {
            let why = if matches!(e, IdentityError::TenantUnknown { .. }) {
                reason::TENANT_UNKNOWN
            } else {
                reason::VALIDATION_FAILED
            };
            return refuse(&tc, ctx, why, e.to_string()).await;
        }
    };
    tracing::Span::current().record("tenant", identity.tenant.as_str());
    let location = Location {
        tenant: identity.tenant.clone(),
        environment: identity.environment.clone(),
        config_type: tc.config_type().into(),
    };

    let store_objects = ctx.stores.state();
    let candidates: Vec<Candidate> = store_objects
        .iter()
        .map(|s| Candidate { name: s.metadata.name.as_deref().unwrap_or_default(), spec: &s.spec })
        .collect();
    let mut includes = Vec::new();
    for (index, include) in tc.spec.include.iter().enumerate() {
        match routing::shared_store_for(&include.parameter_path, &candidates) {
            Ok(store) => includes.push((index, store.to_string(), include.parameter_path.clone())),
            Err(e) => return refuse(&tc, ctx, reason::INCLUDE_NOT_ALLOWED, e.to_string()).await,
        }
    }
    let routed = match routing::route_entries(&tc.spec, &candidates) {
        Ok(r) => r,
        Err(e) => return refuse(&tc, ctx, reason::NO_STORE_FOR_TAGS, e.to_string()).await,
    };

    // Everything that can refuse the object is checked before the first store
    // write: a refused object writes nothing anywhere.
    let secret_name = tc.spec.projection.as_ref().and_then(|p| p.secret_name.clone());
    let with_secret = ctx.settings.secure_projection && secret_name.is_some();
    let spec_entries =
        tc.spec.entries.iter().map(|e| (e.key.clone(), Value { value: e.value.clone(), secure: e.secure }));
    // The projection holds at least the spec's own entries (one layer; its source is irrelevant).
    let spec_only = Layer { source: Source::Shared { index: 0 }, entries: spec_entries.collect() };
    if let Err(e) = projection::render(vec![spec_only], with_secret) {
        return refuse(&tc, ctx, reason::VALIDATION_FAILED, format!("spec entries alone: {e}")).await;
    }
    let uid = tc.uid().unwrap_or_default();
    let cm_name = tc.config_map_name().to_string();
    let cm_api = Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns);
    let existing = cm_api.get_opt(&cm_name).await?;
    if let Some(cm) = &existing
        && !projection::owned_by(&cm.metadata, &uid)
    {
        let message =
            format!("ConfigMap {cm_name} exists and is not managed by this TenantConfig; it is never overwritten");
        return refuse(&tc, ctx, reason::CONFIG_MAP_CONFLICT, message).await;
    }
    let secret_api = Api::<Secret>::namespaced(ctx.client.clone(), &ns);
    let existing_secret = match (with_secret, &secret_name) {
        (true, Some(secret_name)) => secret_api.get_opt(secret_name).await?,
        _ => None,
    };
    if let (Some(s), Some(secret_name)) = (&existing_secret, &secret_name)
        && !projection::owned_by(&s.metadata, &uid)
    {
        let message =
            format!("Secret {secret_name} exists and is not managed by this TenantConfig; it is never overwritten");
        return refuse(&tc, ctx, reason::CONFIG_MAP_CONFLICT, message).await;
    }

    // Stores this object writes to now, plus those it managed before (keys
    // whose tags moved elsewhere must leave the old store).
    let previous: BTreeSet<String> = tc.status.iter().flat_map(|s| s.stores.iter().map(|s| s.name.clone())).collect();
    // Until a reconcile of this generation has got through its store writes,
    // status.stores may miss a store an interrupted or failed reconcile (crash,
    // lost answer, throttled sweep) wrote to before the spec moved its keys
    // away; such stores are swept for keys this object owns.
    let observed = tc.status.as_ref().and_then(|s| s.observed_generation);
    let settled = status::stores_recorded(tc.status.as_ref(), tc.metadata.generation);
    // A never-reconciled object may create before it reads — unless another
    // object claims the location (then it holds something, and a create would
    // be a failing write call on behalf of a conflicting claim). The index is
    // asked only for never-reconciled objects, not on every resync.
    let expect_absent = observed.is_none()
        && !ctx
            .index
            .objects_for(&Target::Tenant {
                store: String::new(),
                tenant: location.tenant.clone(),
                environment: location.environment.clone(),
                config_type: location.config_type.clone(),
            })
            .iter()
            .any(|other| other.name != tc.name_any() || other.namespace.as_deref() != Some(ns.as_str()));
    let mut summaries = Vec::new();
    let mut layers = Vec::new();
    let mut written = 0usize;
    let mut targets = Vec::new();
    let mut sweep = Vec::new();
    for store in store_objects.iter() {
        let name = store.name_any();
        let entries = routed.get(&name);
        if entries.is_none() && !previous.contains(&name) {
            if !settled {
                sweep.push((name.clone(), ctx.backend(&name, &store.spec)?));
            }
            continue;
        }
        let backend = ctx.backend(&name, &store.spec)?;
        let desired = Desired {
            owner: owner.clone(),
            entries: entries
                .into_iter()
                .flatten()
                .map(|e| (e.key.clone(), Value { value: e.value.clone(), secure: e.secure }))
                .collect(),
            policy: tc.spec.management_policy,
            owned_before: settled && previous.contains(&name),
            expect_absent,
        };
        if let Err(e) = backend.validate(&location, &desired) {
            return refuse(&tc, ctx, store_failure_reason(&e), format!("store {name}: {e}")).await;
        }
        targets.push((name, backend, desired, entries.is_some()));
    }
    for (name, backend) in sweep {
        match backend.delete_managed(&location, &owner).await {
            Ok(deleted) if !deleted.is_empty() => {
                written += deleted.len();
                let note = format!("{name}: deleted {} key(s) left by an interrupted reconcile", deleted.len());
                ctx.event(&tc, EventType::Normal, "StoreCleaned", note).await;
            }
            Ok(_) => {}
            Err(e) if e.is_transient() => {
                let why = store_failure_reason(&e);
                let message = format!("store {name} (checked for keys left by an interrupted reconcile): {e}");
                if write_status(&tc, ctx, Verdict::refused(why, message.clone())).await? {
                    ctx.event(&tc, EventType::Warning, why, message).await;
                }
                return Err(e.into());
            }
            // A store this object cannot use (misconfigured, no access) holds nothing of its.
            Err(e) => debug!(store = %name, error = %e, "sweep skipped a store"),
        }
    }
    // One Event for all the stores a reconcile wrote (each Event is an API write).
    let mut store_notes = Vec::new();
    for (name, backend, desired, routed_here) in targets {
        let report = match backend.apply(&location, &desired).await {
            Ok(report) => report,
            Err(e) => {
                let why = store_failure_reason(&e);
                let message = format!("store {name}: {e}");
                let verdict = Verdict {
                    ready: (false, why, message.clone()),
                    store_synced: (false, why, message.clone()),
                    projected: (false, why, message.clone()),
                    stores: None,
                    projection: None,
                };
                if !store_notes.is_empty() {
                    ctx.event(&tc, EventType::Normal, "StoreWritten", store_notes.join("; ")).await;
                }
                let changed = write_status(&tc, ctx, verdict).await?;
                if changed {
                    ctx.event(&tc, EventType::Warning, why, message).await;
                }
                return if e.is_transient() { Err(e.into()) } else { Ok(Action::await_change()) };
            }
        };
        if report.wrote_anything() {
            written += report.written.len() + report.deleted.len();
            store_notes.push(format!(
                "{}: wrote {} key(s), deleted {} key(s) at {}",
                name,
                report.written.len(),
                report.deleted.len(),
                backend.describe(&location)
            ));
        }
        if !report.drift_corrected.is_empty() {
            let keys = report.drift_corrected.iter().cloned().collect::<Vec<_>>().join(", ");
            ctx.event(
                &tc,
                EventType::Normal,
                "DriftCorrected",
                format!("{name}: reverted out-of-band changes to {keys}"),
            )
            .await;
        }
        // A store the object only used before (its keys just left) is not a
        // layer: the next reconcile would not read it, and the ConfigMap must
        // not depend on which reconcile wrote it last.
        if routed_here {
            summaries.push(StoreSummary {
                name: name.clone(),
                kind: backend.kind().into(),
                location: backend.describe(&location),
                keys: report.state.managed.len() as i32,
            });
            layers.push(Layer {
                source: Source::Store { rank: projection::store_rank(backend.kind()), name },
                entries: report.state.entries,
            });
        }
    }
    if !store_notes.is_empty() {
        ctx.event(&tc, EventType::Normal, "StoreWritten", store_notes.join("; ")).await;
    }
    for (index, store_name, path) in includes {
        let store =
            store_objects.iter().find(|s| s.name_any() == store_name).expect("include store is in the snapshot");
        let backend = ctx.backend(&store_name, &store.spec)?;
        match ctx.shared_cache.get(&store_name, &path, || backend.read_shared(&path)).await {
            Ok(entries) => layers.push(Layer { source: Source::Shared { index }, entries: (*entries).clone() }),
            Err(e) => {
                let why = store_failure_reason(&e);
                let message = format!("include {path}: {e}");
                write_status(&tc, ctx, Verdict { stores: Some(summaries), ..Verdict::refused(why, message) }).await?;
                return if e.is_transient() { Err(e.into()) } else { Ok(Action::await_change()) };
            }
        }
    }
    // State, not the last action: a message that changed with every write would
    // cost one more status write (and reconcile) after each of them.
    let managed_keys: i32 = summaries.iter().map(|s| s.keys).sum();
    let store_message = format!("{managed_keys} managed key(s) in {} store(s)", summaries.len());
    if written > 0 {
        info!(written, "stores updated");
    }

    let rendered = match projection::render(layers, with_secret) {
        Ok(p) => p,
        Err(e) => {
            let verdict = Verdict {
                ready: (false, reason::VALIDATION_FAILED, e.to_string()),
                store_synced: (true, reason::RECONCILED, store_message),
                projected: (false, reason::VALIDATION_FAILED, e.to_string()),
                stores: Some(summaries),
                projection: None,
            };
            write_status(&tc, ctx, verdict).await?;
            return Ok(Action::await_change());
        }
    };

    let owner_ref = tc.controller_owner_ref(&()).expect("TenantConfig has a name and uid");
    let mut projected_now = false;
    // Up to date only if both the digest and the data match: a hand edit of the
    // data that leaves the annotation alone must still be reverted.
    let up_to_date = existing.as_ref().is_some_and(|cm| {
        cm.annotations().get(projection::DIGEST_ANNOTATION) == Some(&rendered.digest)
            && cm.data.clone().unwrap_or_default() == rendered.config_map
    });
    if !up_to_date {
        let cm = projection::config_map(&cm_name, &ns, &identity.tenant, &rendered, owner_ref.clone());
        let written = cm_api.patch(&cm_name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&cm)).await?;
        ctx.own_writes.wrote(&written);
        projected_now = true;
    }
    if let (true, Some(secret_name)) = (with_secret, &secret_name) {
        let up_to_date = existing_secret.as_ref().is_some_and(|s| {
            let data: BTreeMap<String, String> =
                s.data.iter().flatten().map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned())).collect();
            s.annotations().get(projection::DIGEST_ANNOTATION) == Some(&rendered.digest) && data == rendered.secret
        });
        if !up_to_date {
            let secret = projection::secret(secret_name, &ns, &identity.tenant, &rendered, owner_ref);
            secret_api.patch(secret_name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&secret)).await?;
            projected_now = true;
        }
    }

    let mut notes = Vec::new();
    if !rendered.skipped_keys.is_empty() {
        notes.push(format!("skipped keys that are not valid ConfigMap keys: {}", rendered.skipped_keys.join(", ")));
    }
    if !rendered.withheld_secure_keys.is_empty() {
        notes.push(format!(
            "secure keys not projected ({}): {}",
            if secret_name.is_none() { "no projection.secretName" } else { "secure projection is disabled" },
            rendered.withheld_secure_keys.join(", ")
        ));
    }
    let keys = (rendered.config_map.len() + rendered.secret.len()) as i32;
    let projected_message = if notes.is_empty() { format!("{keys} key(s) projected") } else { notes.join("; ") };
    let verdict = Verdict {
        ready: (true, reason::RECONCILED, String::new()),
        store_synced: (true, reason::RECONCILED, store_message),
        projected: (true, reason::RECONCILED, projected_message),
        stores: Some(summaries),
        projection: Some(Projected {
            config_map: cm_name,
            keys,
            digest: rendered.digest.clone(),
            written: projected_now,
        }),
    };
    if projected_now {
        ctx.tracker.projected(key, started);
    }
    write_status(&tc, ctx, verdict).await?;
    if projected_now {
        info!(digest = %rendered.digest, keys, "projected");
    }
    // The periodic resync (reconcile_all_on) brings it back; events sooner.
    Ok(Action::await_change())
}

/// A refusal that only a spec, namespace or store change can fix: status and
/// a Warning event (once), nothing written.
async fn refuse(tc: &TenantConfig, ctx: &Context, why: &'static str, message: String) -> Result<Action, Error> {
    if write_status(tc, ctx, Verdict::refused(why, message.clone())).await? {
        ctx.event(tc, EventType::Warning, why, message).await;
    }
    Ok(Action::await_change())
}

/// Patches status only when it changed. Returns whether it did.
async fn write_status(tc: &TenantConfig, ctx: &Context, verdict: Verdict) -> Result<bool, Error> {
    let old = tc.status.clone().unwrap_or_default();
    let mut new = old.clone();
    let now = Time(Timestamp::now());
    let generation = tc.metadata.generation;
    let ns = tc.namespace().unwrap_or_default();
    ctx.metrics.set_ready(&format!("{ns}/{}", tc.name_any()), Some(verdict.ready.0));
    for (type_, (ok, why, message)) in
        [(READY, verdict.ready), (STORE_SYNCED, verdict.store_synced), (PROJECTED, verdict.projected)]
    {
        conditions::set_condition(&mut new.conditions, type_, ok, why, &message, generation, now.clone());
    }
    new.observed_generation = generation;
    new.tenant = namespace_labels(&ns, ctx).await?.and_then(|l| l.get(&ctx.settings.tenant_label).cloned());
    if let Some(stores) = verdict.stores {
        new.stores = stores;
    }
    if let Some(p) = verdict.projection {
        new.config_map = Some(p.config_map);
        new.projected_keys = Some(p.keys);
        new.source_digest = Some(p.digest);
        if p.written || new.last_projected_time.is_none() {
            new.last_projected_time = Some(now);
        }
    }
    if new == old {
        return Ok(false);
    }
    let api = Api::<TenantConfig>::namespaced(ctx.client.clone(), &ns);
    let patch: TenantConfigStatus = new;
    api.patch_status(&tc.name_any(), &PatchParams::default(), &Patch::Merge(json!({ "status": patch }))).await?;
    Ok(true)
}

async fn cleanup(tc: Arc<TenantConfig>, ctx: &Context) -> Result<Action, Error> {
    let ns = tc.namespace().ok_or(Error::MissingNamespace)?;
    let owner = format!("{ns}/{}", tc.name_any());
    if tc.spec.deletion_policy == DeletionPolicy::Delete {
        let labels = namespace_labels(&ns, ctx).await?;
        // Without an identity nothing was ever written for this object.
        if let Ok(identity) = identity_of(&tc, ctx, labels.as_ref()) {
            let location = Location {
                tenant: identity.tenant,
                environment: identity.environment,
                config_type: tc.config_type().into(),
            };
            // Only the stores this object used: an unrelated broken store must
            // not block its deletion.
            let mut used: BTreeSet<String> =
                tc.status.iter().flat_map(|s| s.stores.iter().map(|s| s.name.clone())).collect();
            let store_objects = ctx.stores.state();
            let candidates: Vec<Candidate> = store_objects
                .iter()
                .map(|s| Candidate { name: s.metadata.name.as_deref().unwrap_or_default(), spec: &s.spec })
                .collect();
            // A store the status names but the cache does not know (its
            // ConfigStore was deleted) may still hold this object's keys:
            // releasing the finalizer would leave them behind for good.
            if let Some(missing) = used.iter().find(|name| !store_objects.iter().any(|s| s.name_any() == **name)) {
                let message = format!(
                    "deletion waits for ConfigStore {missing}: the status names it but it does not exist; \
                     recreate it, or remove the finalizer {FINALIZER} to abandon what it holds"
                );
                write_status(&tc, ctx, Verdict::refused(reason::STORE_UNAVAILABLE, message)).await?;
                return Err(Error::StoreMissing { store: missing.clone() });
            }
            if let Ok(routed) = routing::route_entries(&tc.spec, &candidates) {
                used.extend(routed.into_keys());
            }
            // As in apply: an unsettled object may have written to stores its
            // status does not name.
            let settled = status::stores_recorded_before_deletion(tc.status.as_ref(), tc.metadata.generation);
            let swept = |name: &str| !settled && !used.contains(name);
            info!(
                stores = ?used,
                sweep_others = !settled,
                known_stores = store_objects.len(),
                "cleanup: removing this object's keys"
            );
            for store in store_objects.iter().filter(|s| used.contains(&s.name_any()) || swept(&s.name_any())) {
                let name = store.name_any();
                let backend = ctx.backend(&name, &store.spec)?;
                match backend.delete_managed(&location, &owner).await {
                    Ok(deleted) if !deleted.is_empty() => {
                        let note = format!(
                            "{name}: deleted {} managed key(s) at {}",
                            deleted.len(),
                            backend.describe(&location)
                        );
                        ctx.event(&tc, EventType::Normal, "StoreCleaned", note).await;
                    }
                    Ok(_) => {}
                    Err(e) if swept(&name) && !e.is_transient() => {
                        debug!(store = %name, error = %e, "sweep skipped a store");
                    }
                    Err(e) => {
                        let why = store_failure_reason(&e);
                        let message = format!("deletion waits for store {name}: {e}");
                        write_status(&tc, ctx, Verdict::refused(why, message)).await?;
                        return Err(e.into());
                    }
                }
            }
        }
    }
    // Owner references would let a garbage collector do this; do it ourselves so
    // deletion does not depend on one running.
    let uid = tc.uid().unwrap_or_default();
    let cm_api = Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns);
    if let Some(cm) = cm_api.get_opt(tc.config_map_name()).await?
        && projection::owned_by(&cm.metadata, &uid)
    {
        cm_api.delete(tc.config_map_name(), &DeleteParams::default()).await?;
    }
    ctx.own_writes.forget(&ObjectRef::<ConfigMap>::new(tc.config_map_name()).within(&ns));
    if let Some(secret_name) = tc.spec.projection.as_ref().and_then(|p| p.secret_name.as_deref())
        && ctx.settings.secure_projection
    {
        let secret_api = Api::<Secret>::namespaced(ctx.client.clone(), &ns);
        if let Some(s) = secret_api.get_opt(secret_name).await?
            && projection::owned_by(&s.metadata, &uid)
        {
            secret_api.delete(secret_name, &DeleteParams::default()).await?;
        }
    }
    ctx.metrics.set_ready(&format!("{ns}/{}", tc.name_any()), None);
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::finalizer::Error as Finalizer;

    /// The interleaving behind the throttled-delete orphan: readiness was
    /// declared from the watcher's stream before the reflector had swapped the
    /// listing into the cache, so a reconcile woken by it could find no
    /// ConfigStore, clean up nothing and release its finalizer.
    #[tokio::test]
    async fn a_listing_is_in_the_cache_before_anyone_hears_it_is_complete() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
        let (reader, writer) = reflector::store::<ConfigMap>();
        let cm = |name: &str| ConfigMap {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            ..Default::default()
        };
        let listing = futures::stream::iter([
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitApply(cm("a"))),
            Ok(watcher::Event::InitApply(cm("b"))),
            Ok(watcher::Event::InitDone),
        ]);
        let cached_when_done = Arc::new(Mutex::new(None));
        let seen = cached_when_done.clone();
        let events: Vec<_> = cached(writer, listing, move |event| {
            if matches!(event, watcher::Event::InitDone) {
                *seen.lock().unwrap() = Some(reader.state().len());
            }
        })
        .collect()
        .await;
        assert_eq!(events.len(), 4, "every event passes through");
        assert_eq!(
            *cached_when_done.lock().unwrap(),
            Some(2),
            "both objects were cached when the listing was complete"
        );
    }

    #[test]
    fn metric_label_names_the_cause_inside_the_finalizer() {
        let throttled = StoreError::Throttled { backend: "DynamoDB", operation: "UpdateItem", message: "x".into() };
        let apply = Error::Finalizer(Box::new(Finalizer::ApplyFailed(Error::Store(throttled))));
        assert_eq!(apply.metric_label(), "throttled");
        let cleanup = Error::Finalizer(Box::new(Finalizer::CleanupFailed(Error::MissingNamespace)));
        assert_eq!(cleanup.metric_label(), "missing_namespace");
        assert_eq!(Error::Finalizer(Box::new(Finalizer::UnnamedObject)).metric_label(), "finalizer");
    }
}
