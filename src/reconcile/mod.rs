//! The TenantConfig reconciler: pure steps between thin IO steps.
//!
//! [`plan`] (pure) → [`project::existing`] and [`stores::prepare`] (pre-flight:
//! nothing written yet) → [`stores::sweep`] → [`stores::write`] →
//! [`stores::read_includes`] → [`projection::render`] (pure) →
//! [`project::apply`] → [`status::write`]. Deletion: [`cleanup`].

pub mod cleanup;
pub mod context;
pub mod echo;
pub mod error;
pub mod last_read;
pub mod plan;
pub mod project;
pub mod projection;
pub mod resync;
pub mod status;
pub mod stores;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Api, Resource, ResourceExt,
    runtime::{
        controller::Action,
        events::EventType,
        finalizer::{Event as Finalizer, finalizer},
        reflector::ObjectRef,
    },
};
use tracing::{debug, info, instrument, warn};

pub use context::{Context, Settings};
pub use error::{Error, error_policy};

use crate::{
    api::{Guarded, TenantConfig, conditions::reason, names::FINALIZER},
    store::{StoreRef, entries_digest},
};
use last_read::{LastRead, OwnStores};
use status::{Projected, Verdict};

/// How long a reconcile waits for the caches' first listing before it backs off.
const CACHE_SYNC_WAIT: Duration = Duration::from_secs(30);

/// Reconciles one TenantConfig as the watch delivered it.
pub async fn reconcile(guarded: Arc<Guarded>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = ObjectRef::from_obj(&*guarded);
    let started = Instant::now();
    ctx.retries.started(&key);
    let shared_only = ctx.requests.started(&key, started);
    ctx.metrics.reconciles_in_flight.inc();
    let mut timer = ReconcileTimer { ctx: &ctx, started, error: None };
    let result = match &guarded.0 {
        Ok(tc) => reconcile_valid(Arc::new(tc.clone()), &ctx, &key, started, shared_only).await,
        Err(invalid) => {
            // Nothing typed can be done with it (not even a status patch): say so
            // once and wait for the object to change.
            let meta = &invalid.metadata;
            warn!(namespace = meta.namespace.as_deref(), name = meta.name.as_deref(), error = %invalid.error, "TenantConfig does not deserialize");
            let reference = ObjectReference {
                api_version: Some(TenantConfig::api_version(&()).into()),
                kind: Some(TenantConfig::kind(&()).into()),
                name: meta.name.clone(),
                namespace: meta.namespace.clone(),
                uid: meta.uid.clone(),
                ..Default::default()
            };
            let note = format!("object does not match the TenantConfig schema: {}", invalid.error);
            ctx.publish_for(&reference, EventType::Warning, reason::VALIDATION_FAILED, note).await;
            Ok(Action::await_change())
        }
    };
    match &result {
        Ok(_) => {
            ctx.retries.succeeded(&key);
            ctx.metrics.objects_backing_off.set(ctx.retries.backing_off() as i64);
            ctx.progress.succeeded(&key, started);
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
    shared_only: bool,
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
            Finalizer::Apply(tc) => apply(&tc, ctx, key, started, shared_only).await,
            Finalizer::Cleanup(tc) => cleanup::cleanup(&tc, ctx).await,
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
        self.ctx.metrics.reconciles_in_flight.dec();
        self.ctx.metrics.reconciled(self.error, self.started.elapsed().as_secs_f64());
    }
}

/// The driver of one reconcile of an object that is not being deleted.
/// `shared_only`: only changes under shared paths asked for it.
async fn apply(
    tc: &TenantConfig,
    ctx: &Context,
    key: &ObjectRef<Guarded>,
    started: Instant,
    shared_only: bool,
) -> Result<Action, Error> {
    let ns = tc.namespace().ok_or(Error::MissingNamespace)?;
    // A shared-path change leaves the object's own stores as its last
    // successful reconcile of this spec found them: that read is reused (their
    // own events, and the resync for a lost one, ask for a full reconcile).
    // One walk of the shared path then serves every object including it.
    let reusable = if shared_only { ctx.last_reads.reusable(key, tc.metadata.generation) } else { None };
    // Until this reconcile succeeds, the resync must not take the object as
    // current.
    ctx.last_reads.forget(key);
    let labels = ctx.namespace_labels(&ns).await?;
    let labels = labels.as_ref();
    let refuse = |refusal: plan::Refusal| async move {
        status::warn_once(tc, ctx, labels, Verdict::refused(refusal.reason, refusal.message)).await?;
        Ok(Action::await_change())
    };
    let store_objects = ctx.stores.state();
    let stores = StoreRef::all(&store_objects);
    let claimed = |location: &_| ctx.claims.claimed_by_another(location, key);
    let plan = match plan::plan(tc, ctx.identity(&ns, labels), &stores, ctx.settings.secure_projection, claimed) {
        Ok(plan) => plan,
        Err(refusal) => return refuse(refusal).await,
    };
    tracing::Span::current().record("tenant", plan.location.tenant.as_str());
    let existing = match project::existing(ctx, tc, &plan).await? {
        Ok(existing) => existing,
        Err(refusal) => return refuse(refusal).await,
    };
    let prepared = match stores::prepare(ctx, &plan)? {
        Ok(prepared) => prepared,
        Err(refusal) => return refuse(refusal).await,
    };
    let failed = |failure: stores::StoreFailure| async move {
        status::warn_once(tc, ctx, labels, failure.verdict()).await?;
        failure.into_result()
    };
    let (swept, written) = match reusable.and_then(|r| r.written_for(&plan)) {
        Some(written) => {
            debug!("only a shared path changed: the last read of the own stores stands");
            (0, written)
        }
        None => {
            let swept = match stores::sweep(ctx, tc, &plan).await {
                Ok(swept) => swept,
                Err(failure) => return failed(failure).await,
            };
            match stores::write(ctx, tc, &plan, prepared).await {
                Ok(written) => (swept, written),
                Err(failure) => return failed(failure).await,
            }
        }
    };
    let mut layers = match stores::read_includes(ctx, &plan).await {
        Ok(layers) => layers,
        Err(failure) => {
            status::write(tc, ctx, labels, Verdict { stores: Some(written.summaries), ..failure.verdict() }).await?;
            return failure.into_result();
        }
    };
    if swept + written.changed_keys > 0 {
        info!(written = swept + written.changed_keys, "stores updated");
    }
    let store_message = written.message();
    let own = OwnStores { summaries: written.summaries.clone(), layers: written.layers.clone() };
    let last_read = LastRead {
        generation: tc.metadata.generation,
        location: plan.location.clone(),
        stores: written.reads,
        includes: plan
            .includes
            .iter()
            .zip(&layers)
            .map(|(include, layer)| (include.store.to_string(), include.path.clone(), entries_digest(&layer.entries)))
            .collect(),
    };
    layers.extend(written.layers);
    let rendered = match projection::render(layers, plan.secret_name.is_some()) {
        Ok(rendered) => rendered,
        Err(e) => {
            let verdict = Verdict::unprojectable(e.to_string(), store_message, written.summaries);
            status::write(tc, ctx, labels, verdict).await?;
            return Ok(Action::await_change());
        }
    };
    let applied = project::apply(ctx, tc, &plan, &existing, &rendered).await?;
    let projected_now = applied.wrote_anything();
    let keys = (rendered.config_map.len() + rendered.secret.len()) as i32;
    let projection = Projected {
        config_map: tc.config_map_name().into(),
        keys,
        digest: rendered.digest.clone(),
        written: projected_now,
    };
    let message = projected_message(tc, &rendered, keys);
    let verdict = Verdict::reconciled(store_message, message, written.summaries, projection);
    if projected_now {
        ctx.progress.projected(key, started);
    }
    status::write(tc, ctx, labels, verdict).await?;
    ctx.last_reads.record(key, last_read, own);
    ctx.projections.record(&ns, tc.object_ref(&()), project::projected(tc, &plan, &existing, &rendered, &applied));
    if projected_now {
        info!(digest = %rendered.digest, keys, "projected");
    }
    // Events bring it back when its stores change; the resync when one was lost.
    Ok(Action::await_change())
}

/// The Projected condition's message: what was left out and why, else the count.
fn projected_message(tc: &TenantConfig, rendered: &projection::Projection, keys: i32) -> String {
    let mut notes = Vec::new();
    if !rendered.skipped_keys.is_empty() {
        notes.push(format!("skipped keys that are not valid ConfigMap keys: {}", rendered.skipped_keys.join(", ")));
    }
    if !rendered.withheld_secure_keys.is_empty() {
        let has_secret_name = tc.spec.projection.as_ref().is_some_and(|p| p.secret_name.is_some());
        notes.push(format!(
            "secure keys not projected ({}): {}",
            if has_secret_name { "secure projection is disabled" } else { "no projection.secretName" },
            rendered.withheld_secure_keys.join(", ")
        ));
    }
    if notes.is_empty() { format!("{keys} key(s) projected") } else { notes.join("; ") }
}
