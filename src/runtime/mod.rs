//! Wiring: the watches and their caches ([`watches`]), readiness (caches
//! synced), the resync, the store-change event consumer, and shutdown; the
//! process around them ([`process`]).

mod fair_share;
pub mod migrate;
pub mod process;
mod store_status;
mod watches;

use std::{future::Future, sync::Arc, time::Duration, time::Instant};

use futures::{FutureExt, StreamExt};
use kube::{
    Client,
    runtime::{Controller, controller, reflector::ObjectRef},
};
use tracing::{debug, info, warn};

use crate::{
    api::{Guarded, names::FIELD_MANAGER},
    events::{EventRouter, index::Index, sqs, tracker::Tracker},
    metrics::Metrics,
    reconcile::{
        self, Context, Settings,
        context::{Caches, Claims, Kube, Outbound, Progress, Stores},
        ledgers::Ledgers,
    },
    recorder::Recorder,
    server::Probes,
    store::{BackendContext, Location, shared_cache::SharedCache},
    workloads::{self, Projections},
};
use watches::{Requested, Watches, asked};

/// What the controller runs with.
#[derive(Clone)]
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

/// Reconcile tasks per work permit: room for reconciles that wait for rate
/// tokens without holding a permit (each tenant at most `--tenant-concurrency`).
const TASKS_PER_PERMIT: u16 = 16;

/// Runs the controller (and, with `events`, the queue consumer) until
/// `shutdown` resolves.
pub async fn run(deps: Dependencies, shutdown: impl Future<Output = ()> + Send + 'static) {
    let shutdown = shutdown.shared();
    let Dependencies { client, settings, backend_ctx, events, metrics, probes, workloads: workload_settings } = deps;
    let ledgers =
        Ledgers::new(metrics.reconcile_queue_depth.clone(), metrics.reconcile_queue_wait.clone(), settings.concurrency);
    let (turns, tenant_turns) = futures::channel::mpsc::unbounded();
    ledgers.tenant_slots.wake_with(turns);
    let index = Arc::new(Index::new(&settings.tenant_label, &settings.environment_label));
    let watches = Watches::start(&client, &probes, &index, &ledgers);
    let shared_cache = Arc::new(SharedCache::new(settings.shared_cache_max_age, metrics.shared_cache.clone()));
    let tracker = Arc::new(Tracker::new(metrics.clone()));
    let (trigger, triggered) = futures::channel::mpsc::unbounded();
    let consumer = events.map(|settings| {
        let router = router(&watches, &index, &shared_cache, &backend_ctx);
        event_consumer(settings, router, &backend_ctx, &tracker, &metrics, &probes)
    });
    if consumer.is_none() {
        warn!(resync = ?settings.resync_interval, "no event queue configured: store changes arrive only with the resync");
    }
    let recorder = Arc::new(Recorder::new(client.clone(), FIELD_MANAGER));
    let projections = Arc::new(Projections::default());
    let workloads = following_workloads(
        &workload_settings,
        workloads::Shared::new(
            client.clone(),
            &workload_settings,
            projections.clone(),
            watches.objects.clone(),
            settings.secure_projection,
            recorder.clone(),
            metrics.clone(),
        ),
    );
    let (retries_due, retry_requests) = futures::channel::mpsc::unbounded();
    let context = Arc::new(Context {
        kube: Kube { client, recorder },
        caches: Caches {
            config_stores: watches.config_stores.clone(),
            namespaces: watches.namespaces.clone(),
            tenant_configs: watches.objects.clone(),
            synced: probes.caches_synced(),
        },
        stores: Stores::new(backend_ctx, shared_cache),
        ledgers,
        outbound: Outbound { progress: tracker, claims: index, projections, retries_due },
        metrics,
        settings,
    });
    let stores = (context.kube.client.clone(), watches.config_stores.clone(), watches.store_changes.clone());
    let requests = Extra { retries: retry_requests.boxed(), tenant_turns: tenant_turns.boxed() };
    let reported = context.clone();
    let controller = controller(watches, context, triggered, requests, shutdown.clone());
    let controller = fair_share::alongside(store_status::alongside(controller, stores), reported);
    tokio::select! {
        _ = drive(controller, workloads, consumer.map(|c| (c, trigger)), shutdown.clone()) => {}
        _ = shutdown_before_sync(&probes, shutdown) => info!("shutdown before the caches synced: nothing in flight to finish"),
    }
    probes.caches_dropped();
}

/// Runs the controller, refresh and rollout (they end with it) and the event
/// consumer with its trigger sender, until all have stopped.
async fn drive(
    controller: impl Future<Output = ()>,
    workloads: impl Future<Output = ()>,
    consumer: Option<(sqs::Consumer, futures::channel::mpsc::UnboundedSender<sqs::Trigger>)>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let controller = async move {
        tokio::select! {
            _ = controller => {}
            _ = workloads => {}
        }
    };
    match consumer {
        Some((consumer, trigger)) => {
            tokio::join!(controller, consumer.run(trigger, shutdown));
        }
        // Without a consumer the trigger sender is dropped here: an open one
        // would keep the controller's trigger stream (and so its shutdown)
        // pending.
        None => controller.await,
    }
}

/// Where a store-change event lands: the caches, the index, the shared-path
/// cache and the start-up walks it invalidates.
fn router(
    watches: &Watches,
    index: &Arc<Index>,
    shared_cache: &Arc<SharedCache>,
    backend_ctx: &BackendContext,
) -> EventRouter {
    EventRouter {
        stores: watches.config_stores.clone(),
        index: index.clone(),
        objects: watches.objects.clone(),
        shared_cache: shared_cache.clone(),
        tenant_walks: backend_ctx.tenant_walks.clone(),
    }
}

/// The store-change event consumer.
fn event_consumer(
    settings: sqs::ConsumerSettings,
    router: EventRouter,
    backend_ctx: &BackendContext,
    tracker: &Arc<Tracker>,
    metrics: &Arc<Metrics>,
    probes: &Probes,
) -> sqs::Consumer {
    sqs::Consumer {
        sqs: sqs::client(backend_ctx),
        settings,
        router: Arc::new(router),
        tracker: tracker.clone(),
        metrics: metrics.clone(),
        // Counted with the stores' calls, never limited here (SQS's own limits
        // are far above one consumer's long polls).
        gate: backend_ctx.gate("sqs", |_| "sqs"),
        caches_synced: probes.caches_synced(),
    }
}

/// Reconcile requests the reconciles make themselves.
struct Extra {
    /// Retries that had not started when due (counted as requests here).
    retries: Requested,
    /// Objects woken when their tenant gave a slot back (`--tenant-concurrency`).
    tenant_turns: Requested,
}

/// The controller over the TenantConfig watch, with every other source of
/// reconcile requests, until `shutdown`.
fn controller(
    watches: Watches,
    context: Arc<Context>,
    triggered: futures::channel::mpsc::UnboundedReceiver<sqs::Trigger>,
    Extra { retries: retry_requests, tenant_turns }: Extra,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> impl Future<Output = ()> {
    let Watches { objects, tenant_configs, config_map_owners, namespace_requests, store_requests, requests, .. } =
        watches;
    let (resync_ctx, resync_objects) = (context.clone(), objects.clone());
    let resync_requests = resync_ticks(context.settings.resync_interval)
        .then(move |()| {
            let (ctx, objects) = (resync_ctx.clone(), resync_objects.state());
            async move { reconcile::resync::due(&ctx, &objects).await }
        })
        .flat_map(futures::stream::iter)
        .inspect(asked(&requests, Clone::clone));
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
    // kube-runtime's bound is on reconcile tasks, working or waiting; the
    // work itself is bounded by the permits (`--concurrency`), which a
    // reconcile lends while it waits for AWS rate tokens.
    let tasks = context.settings.concurrency.saturating_mul(TASKS_PER_PERMIT);
    Controller::for_stream(tenant_configs, objects)
        .with_config(controller::Config::default().concurrency(tasks))
        // An owned ConfigMap changed by someone else, or deleted: put it back.
        .reconcile_on(config_map_owners)
        // A namespace's labels are its tenant identity: re-reconcile its objects.
        .reconcile_on(namespace_requests)
        // Any store change can change routing for every object.
        .reconcile_on(store_requests)
        .reconcile_on(triggered_objects)
        .reconcile_on(retry_requests.inspect(asked(&requests, Clone::clone)))
        // An object whose tenant gave a slot back: its request is recorded already.
        .reconcile_on(tenant_turns)
        .reconcile_on(resync_requests)
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, reconcile::error_policy, context)
        .for_each(|result| async move {
            match result {
                // Waiting for its tenant's turn is not a failure.
                Err(controller::Error::ReconcilerFailed(e, _)) if e.is_tenant_busy() => {}
                // A request for an object deleted meanwhile: nothing to do.
                Err(controller::Error::ObjectNotFound(object)) => {
                    debug!(%object, "reconcile of a deleted object skipped")
                }
                Err(e) => warn!(error = %e, "reconcile failed"),
                Ok(_) => {}
            }
        })
        .inspect(|_| info!("controller stopped"))
}

/// Resolves on a shutdown that comes before the caches synced. kube-runtime
/// holds the reconcile runner until the TenantConfig cache is ready; a
/// shutdown that comes first also ends the watch that would make it ready,
/// and the controller then waited forever (a pod stopped during startup sat
/// out its grace period). Before the caches synced no reconcile has passed
/// its cache wait, so there is nothing to finish.
async fn shutdown_before_sync(probes: &Probes, shutdown: impl Future<Output = ()>) {
    let mut synced_at_shutdown = probes.caches_synced();
    shutdown.await;
    if *synced_at_shutdown.borrow_and_update() {
        std::future::pending::<()>().await;
    }
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
