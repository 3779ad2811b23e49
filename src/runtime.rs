//! Wiring: the watches and their caches, readiness (caches synced), the
//! resync, the store-change event consumer, and shutdown.

use std::{future::Future, sync::Arc, time::Duration, time::Instant};

use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt, controller,
        reflector::{self, ObjectRef},
        watcher,
    },
};
use tracing::{debug, info, warn};

use crate::{
    api::{
        ConfigStore, Guarded, TenantConfig,
        names::{FIELD_MANAGER, MANAGED_BY_LABEL},
    },
    events::{EventRouter, index::Index, sqs, tracker::Tracker},
    metrics::Metrics,
    reconcile::{
        self, Context, Settings,
        context::{Backends, Claims, Progress, Requests},
        echo::OwnWrites,
        last_read::LastReads,
    },
    recorder::Recorder,
    server::{Cache, Probes},
    store::{BackendContext, Family, Location, shared_cache::SharedCache},
    workloads::{self, Projections},
};

/// What the controller runs with.
pub struct Dependencies {
    pub client: Client,
    pub settings: Settings,
    pub backend_ctx: BackendContext,
    /// The event queue; without it store changes arrive only with the resync.
    pub events: Option<sqs::ConsumerSettings>,
    pub metrics: Arc<Metrics>,
    pub probes: Arc<Probes>,
    /// Pod refresh and workload rollout (both off by default).
    pub workloads: workloads::Settings,
}

impl Claims for Index {
    fn claimed_by_another(&self, location: &Location, object: &ObjectRef<Guarded>) -> bool {
        self.objects_at(location).iter().any(|other| other != object)
    }
}

impl Progress for Tracker {
    fn projected(&self, object: &ObjectRef<Guarded>, started: Instant) {
        Tracker::projected(self, object, started)
    }

    fn succeeded(&self, object: &ObjectRef<Guarded>, started: Instant) {
        Tracker::succeeded(self, object, started)
    }
}

/// Runs the controller (and, with `events`, the queue consumer) until
/// `shutdown` resolves.
pub async fn run(deps: Dependencies, shutdown: impl Future<Output = ()> + Send + 'static) {
    let Dependencies { client, settings, backend_ctx, events, metrics, probes, workloads: workload_settings } = deps;
    let shutdown = shutdown.shared();
    let watch = watcher::Config::default().any_semantic();
    let index = Arc::new(Index::new(&settings.tenant_label, &settings.environment_label));

    // Readiness comes from each watch's first complete listing, not from
    // Store::wait_until_ready: that wakes only the last of several concurrent
    // waiters (kube-runtime 5.0's DelayedInit keeps one waker), which left
    // reconciles waiting for their timeout and stalled shutdown.
    let listed = |probes: &Arc<Probes>, cache| {
        let probes = probes.clone();
        move |done: bool| {
            if done {
                probes.listed(cache)
            }
        }
    };
    let (stores, store_writer) = reflector::store();
    let stores_listed = listed(&probes, Cache::ConfigStores);
    let store_events =
        cached(store_writer, watcher(Api::<ConfigStore>::all(client.clone()), watch.clone()), move |event| {
            stores_listed(matches!(event, watcher::Event::InitDone))
        })
        .default_backoff()
        .touched_objects();
    let (namespaces, ns_writer) = reflector::store();
    let (ns_index, namespaces_listed) = (index.clone(), listed(&probes, Cache::Namespaces));
    let namespace_events =
        cached(ns_writer, watcher(Api::<Namespace>::all(client.clone()), watch.clone()), move |event| {
            ns_index.observe_namespace(event);
            namespaces_listed(matches!(event, watcher::Event::InitDone));
        })
        .default_backoff()
        .touched_objects();
    let requests = Arc::new(Requests::new(metrics.reconcile_queue_depth.clone()));
    let tc_requests = requests.clone();
    let (objects, tc_writer) = reflector::store();
    let (tc_index, objects_listed) = (index.clone(), listed(&probes, Cache::TenantConfigs));
    let last_reads = Arc::new(LastReads::default());
    let tc_last_reads = last_reads.clone();
    let tenant_configs = cached(
        tc_writer,
        watcher(Api::<Guarded>::all(client.clone()), watch.clone()).modify(slim_for_cache),
        move |event| {
            tc_index.observe_tenant_config(event);
            if let watcher::Event::Delete(tc) = event {
                tc_requests.forget(&ObjectRef::from_obj(tc));
                tc_last_reads.forget(&ObjectRef::from_obj(tc));
            }
            objects_listed(matches!(event, watcher::Event::InitDone));
        },
    )
    .default_backoff()
    .applied_objects()
    .predicate_filter(spec_or_lifecycle, Default::default());
    // Every request is counted on its way in (the queue depth): the triggers
    // are fed to the controller as object references, mapped here.
    let asked = |requests: &Arc<Requests>| {
        let requests = requests.clone();
        move |object: &ObjectRef<Guarded>| requests.requested(object)
    };
    let tc_requested = asked(&requests);
    let tenant_configs = tenant_configs.inspect_ok(move |tc| tc_requested(&ObjectRef::from_obj(tc)));

    let tracker = Arc::new(Tracker::new(metrics.clone()));
    let shared_cache = Arc::new(SharedCache::new(settings.shared_cache_max_age, metrics.clone()));
    let (trigger, triggered) = futures::channel::mpsc::unbounded();
    let (retries_due, retry_requests) = futures::channel::mpsc::unbounded();
    let consumer = events.map(|consumer_settings| sqs::Consumer {
        sqs: sqs::client(&backend_ctx),
        settings: consumer_settings,
        router: Arc::new(EventRouter {
            stores: stores.clone(),
            index: index.clone(),
            objects: objects.clone(),
            shared_cache: shared_cache.clone(),
            tenant_walks: backend_ctx.tenant_walks.clone(),
        }),
        tracker: tracker.clone(),
        metrics: metrics.clone(),
        gate: backend_ctx.gate("sqs", |_| Family::Sqs),
        caches_synced: probes.caches_synced(),
    });
    if consumer.is_none() {
        warn!(resync = ?settings.resync_interval, "no event queue configured: store changes arrive only with the resync");
    }
    // Owned ConfigMaps: metadata is enough to find the owner, and the
    // controller's own writes coming back are not a reason to reconcile.
    let own_writes = Arc::new(OwnWrites::default());
    let echoes = own_writes.clone();
    let config_maps = watcher(
        Api::<PartialObjectMeta<ConfigMap>>::all(client.clone()),
        watch.clone().labels(&format!("{MANAGED_BY_LABEL}={FIELD_MANAGER}")),
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
    let config_map_owners =
        logged(config_maps).flat_map(|cm| futures::stream::iter(owner_of(&cm))).inspect(asked(&requests));
    let namespace_index = index.clone();
    let namespace_requests = logged(namespace_events)
        .flat_map(move |ns| futures::stream::iter(namespace_index.objects_in(&ns.name_any())))
        .inspect(asked(&requests));
    let store_objects = objects.clone();
    let store_requests =
        logged(store_events).flat_map(move |_| futures::stream::iter(every(&store_objects))).inspect(asked(&requests));
    let resync_interval = settings.resync_interval;
    let controller = Controller::for_stream(tenant_configs, objects.clone())
        .with_config(controller::Config::default().concurrency(settings.concurrency));
    let projections = Arc::new(Projections::default());
    let recorder = Arc::new(Recorder::new(client.clone(), FIELD_MANAGER));
    let workloads = following_workloads(
        &workload_settings,
        workloads::Shared::new(
            client.clone(),
            &workload_settings,
            projections.clone(),
            objects.clone(),
            settings.secure_projection,
            recorder.clone(),
            metrics.clone(),
        ),
    );
    let context = Arc::new(Context {
        recorder,
        client,
        settings,
        backend_ctx,
        stores,
        namespaces,
        backends: Backends::default(),
        retries: Default::default(),
        requests: requests.clone(),
        progress: tracker,
        claims: index.clone(),
        shared_cache,
        metrics,
        own_writes,
        caches_synced: probes.caches_synced(),
        retries_due,
        last_reads,
        projections,
    });
    let (resync_ctx, resync_objects) = (context.clone(), objects.clone());
    let resync_requests = resync_ticks(resync_interval)
        .then(move |()| {
            let (ctx, objects) = (resync_ctx.clone(), resync_objects.state());
            async move { reconcile::resync::due(&ctx, &objects).await }
        })
        .flat_map(futures::stream::iter)
        .inspect(asked(&requests));
    // An event under shared paths only may let the reconcile reuse the
    // object's own-store reads; any other request for it before it starts
    // makes it a full one.
    let event_requests = requests.clone();
    let triggered_objects = triggered.map(move |t: sqs::Trigger| {
        if t.shared_only {
            event_requests.requested_by_shared_change(&t.object);
        } else {
            event_requests.requested(&t.object);
        }
        t.object
    });
    let controller = controller
        // An owned ConfigMap changed by someone else, or deleted: put it back.
        .reconcile_on(config_map_owners)
        // A namespace's labels are its tenant identity: re-reconcile its objects.
        .reconcile_on(namespace_requests)
        // Any store change can change routing for every object.
        .reconcile_on(store_requests)
        .reconcile_on(triggered_objects)
        .reconcile_on(retry_requests.inspect(asked(&requests)))
        .reconcile_on(resync_requests)
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile::reconcile, reconcile::error_policy, context)
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
    let mut synced_at_shutdown = probes.caches_synced();
    let shutdown_before_sync = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.await;
            if *synced_at_shutdown.borrow_and_update() {
                std::future::pending::<()>().await;
            }
        }
    };
    // Refresh and rollout run as long as the controller: they end with it.
    let controller = async move {
        tokio::select! {
            _ = controller => {}
            _ = workloads => {}
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
    probes.caches_dropped();
}

/// Refresh and rollout, as enabled; subscribed before any reconcile runs so
/// that no projection goes unheard. Never ends on its own.
fn following_workloads(
    settings: &workloads::Settings,
    shared: workloads::Shared,
) -> futures::future::BoxFuture<'static, ()> {
    let shared = Arc::new(shared);
    let mut tasks: Vec<futures::future::BoxFuture<'static, ()>> = Vec::new();
    if settings.refresh_pods {
        tasks.push(Box::pin(workloads::refresh::run(shared.clone(), shared.projections.subscribe())));
        info!("refreshing pods labelled tenantconfig.io/refresh=true");
    }
    if settings.rollout_workloads {
        let window = settings.rollout_window;
        tasks.push(Box::pin(workloads::rollout::run(shared.clone(), window, shared.projections.subscribe())));
        info!(?window, "rolling out workloads labelled tenantconfig.io/rollout=true");
    }
    Box::pin(async move {
        futures::future::join_all(tasks).await;
        std::future::pending::<()>().await
    })
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

/// The items of a watch stream; its errors are logged (the watcher retries
/// with backoff on its own).
fn logged<T>(stream: impl futures::Stream<Item = watcher::Result<T>>) -> impl futures::Stream<Item = T> {
    stream.filter_map(
        |item| async move { item.map_err(|e| warn!(error = %e, "watch failed; retrying with backoff")).ok() },
    )
}

/// Every TenantConfig in the cache.
fn every(objects: &reflector::Store<Guarded>) -> Vec<ObjectRef<Guarded>> {
    objects.state().iter().map(|tc| ObjectRef::from_obj(&**tc)).collect()
}

/// The TenantConfig that controls a ConfigMap (its controller owner reference).
fn owner_of(cm: &PartialObjectMeta<ConfigMap>) -> Option<ObjectRef<Guarded>> {
    let owner = cm.owner_references().iter().find(|o| o.controller == Some(true))?;
    let ours = owner.kind == TenantConfig::kind(&()) && owner.api_version == TenantConfig::api_version(&());
    Some(ObjectRef::new(&owner.name).within(&cm.namespace()?)).filter(|_| ours)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

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
    fn an_owned_config_map_names_its_tenant_config() {
        let cm = |kind: &str, controller: bool| -> PartialObjectMeta<ConfigMap> {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "PartialObjectMetadata",
                "metadata": { "name": "payments", "namespace": "acme", "ownerReferences": [{
                    "apiVersion": "tenantconfig.io/v1alpha1", "kind": kind, "name": "payments-tc",
                    "uid": "u", "controller": controller }] }
            }))
            .unwrap()
        };
        assert_eq!(owner_of(&cm("TenantConfig", true)), Some(ObjectRef::new("payments-tc").within("acme")));
        assert_eq!(owner_of(&cm("TenantConfig", false)), None, "only the controller owner");
        assert_eq!(owner_of(&cm("Deployment", true)), None, "another kind's ConfigMap");
    }
}
