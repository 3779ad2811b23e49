//! The store IO of a reconcile: check, sweep, write, read includes. Thin: what
//! to do was decided by [`super::plan`]; the backends diff and write.

use std::sync::Arc;

use kube::runtime::{controller::Action, events::EventType};
use tracing::debug;

use super::{
    context::Context,
    error::{Error, store_failure_reason},
    plan::{ReconcilePlan, Refusal, StoreWrite},
    projection::{Layer, Source},
    status::Verdict,
};
use crate::{
    api::{StoreSummary, TenantConfig},
    store::{Backend, StoreError},
};

/// A store call that failed, with the message status reports.
pub struct StoreFailure {
    pub error: StoreError,
    pub message: String,
}

impl StoreFailure {
    pub fn reason(&self) -> &'static str {
        store_failure_reason(&self.error)
    }

    /// The status it leads to: retried when transient, else stalled.
    pub fn verdict(&self) -> Verdict {
        if self.error.is_transient() {
            Verdict::retrying(self.reason(), self.message.clone())
        } else {
            Verdict::refused(self.reason(), self.message.clone())
        }
    }

    /// A transient failure is retried with backoff; any other waits for a
    /// spec or store change.
    pub fn into_result(self) -> Result<Action, Error> {
        if self.error.is_transient() { Err(self.error.into()) } else { Ok(Action::await_change()) }
    }
}

/// A planned write whose backend is built and whose limits are checked.
pub struct Prepared<'p, 'a> {
    write: &'p StoreWrite<'a>,
    backend: Arc<dyn Backend>,
}

/// Builds each store's backend and checks, without a call, every limit the
/// desired entries must meet: a refused object writes nothing anywhere.
pub fn prepare<'p, 'a>(
    ctx: &Context,
    plan: &'p ReconcilePlan<'a>,
) -> Result<Result<Vec<Prepared<'p, 'a>>, Refusal>, Error> {
    let mut prepared = Vec::with_capacity(plan.writes.len());
    for write in &plan.writes {
        let backend = ctx.backend(write.store, write.spec)?;
        if let Err(e) = backend.validate(&plan.location, &write.desired) {
            let message = format!("store {}: {e}", write.store);
            return Ok(Err(Refusal { reason: store_failure_reason(&e), message }));
        }
        prepared.push(Prepared { write, backend });
    }
    Ok(Ok(prepared))
}

/// Deletes this object's keys from the stores an interrupted reconcile may
/// have written to. Returns how many keys went.
pub async fn sweep(ctx: &Context, tc: &TenantConfig, plan: &ReconcilePlan<'_>) -> Result<usize, StoreFailure> {
    let mut deleted_keys = 0;
    for store in &plan.sweep {
        // A store this object cannot use (misconfigured, no access) holds nothing of its.
        let backend = match ctx.backend(store.name, store.spec) {
            Ok(backend) => backend,
            Err(e) => {
                debug!(store = store.name, error = %e, "sweep skipped a store");
                continue;
            }
        };
        match backend.delete_managed(&plan.location, &plan.owner).await {
            Ok(deleted) if !deleted.is_empty() => {
                deleted_keys += deleted.len();
                let note = format!("{}: deleted {} key(s) left by an interrupted reconcile", store.name, deleted.len());
                ctx.publish(tc, EventType::Normal, "StoreCleaned", note).await;
            }
            Ok(_) => {}
            Err(error) if error.is_transient() => {
                let message =
                    format!("store {} (checked for keys left by an interrupted reconcile): {error}", store.name);
                return Err(StoreFailure { error, message });
            }
            Err(e) => debug!(store = store.name, error = %e, "sweep skipped a store"),
        }
    }
    Ok(deleted_keys)
}

/// What the store writes left: the stores and layers of the projection.
pub struct Written {
    pub summaries: Vec<StoreSummary>,
    pub layers: Vec<Layer>,
    /// `(store, content digest)` of each layer, for the resync's comparison.
    pub reads: Vec<(String, u64)>,
    /// Keys written or deleted.
    pub changed_keys: usize,
}

impl Written {
    /// The StoreSynced message. State, not the last action: a message that
    /// changed with every write would cost one more status write (and
    /// reconcile) after each of them.
    pub fn message(&self) -> String {
        let managed_keys: i32 = self.summaries.iter().map(|s| s.keys).sum();
        format!("{managed_keys} managed key(s) in {} store(s)", self.summaries.len())
    }
}

/// Applies each store's desired entries. One Event for all the stores a
/// reconcile wrote (each Event is an API write), one per drift correction.
pub async fn write(
    ctx: &Context,
    tc: &TenantConfig,
    plan: &ReconcilePlan<'_>,
    prepared: Vec<Prepared<'_, '_>>,
) -> Result<Written, StoreFailure> {
    let mut written = Written { summaries: Vec::new(), layers: Vec::new(), reads: Vec::new(), changed_keys: 0 };
    let mut notes = Vec::new();
    for Prepared { write, backend } in prepared {
        let report = match backend.apply(&plan.location, &write.desired).await {
            Ok(report) => report,
            Err(error) => {
                publish_written(ctx, tc, &notes).await;
                return Err(StoreFailure { message: format!("store {}: {error}", write.store), error });
            }
        };
        if report.wrote_anything() {
            written.changed_keys += report.written.len() + report.deleted.len();
            notes.push(format!(
                "{}: wrote {} key(s), deleted {} key(s) at {}",
                write.store,
                report.written.len(),
                report.deleted.len(),
                backend.describe(&plan.location)
            ));
        }
        if !report.drift_corrected.is_empty() {
            let keys = report.drift_corrected.iter().cloned().collect::<Vec<_>>().join(", ");
            let note = format!("{}: reverted out-of-band changes to {keys}", write.store);
            ctx.publish(tc, EventType::Normal, "DriftCorrected", note).await;
        }
        // A store the object only used before (its keys just left) is not a
        // layer: the next reconcile would not read it, and the ConfigMap must
        // not depend on which reconcile wrote it last.
        if write.routed_here {
            written.summaries.push(StoreSummary {
                name: write.store.to_string(),
                kind: backend.kind().into(),
                location: backend.describe(&plan.location),
                keys: report.state.managed.len() as i32,
            });
            written.reads.push((write.store.to_string(), report.state.content_digest()));
            let source = Source::Store { precedence: backend.precedence(), name: write.store.to_string() };
            written.layers.push(Layer { source, entries: Arc::new(report.state.entries) });
        }
    }
    publish_written(ctx, tc, &notes).await;
    Ok(written)
}

async fn publish_written(ctx: &Context, tc: &TenantConfig, notes: &[String]) {
    if !notes.is_empty() {
        ctx.publish(tc, EventType::Normal, "StoreWritten", notes.join("; ")).await;
    }
}

/// Reads every include (through the shared cache: one read per path however
/// many objects include it).
pub async fn read_includes(ctx: &Context, plan: &ReconcilePlan<'_>) -> Result<Vec<Layer>, StoreFailure> {
    let mut layers = Vec::with_capacity(plan.includes.len());
    for include in &plan.includes {
        let failed = |error: StoreError| StoreFailure { message: format!("include {}: {error}", include.path), error };
        let backend = ctx.backend(include.store, include.spec).map_err(failed)?;
        let Some(shared) = backend.shared_paths() else {
            return Err(failed(StoreError::Unsupported { backend: backend.kind(), what: "shared paths" }));
        };
        let entries = ctx
            .shared_cache
            .get(include.store, &include.path, || shared.read_shared(&include.path))
            .await
            .map_err(failed)?;
        layers.push(Layer { source: Source::Shared { index: include.index }, entries });
    }
    Ok(layers)
}
