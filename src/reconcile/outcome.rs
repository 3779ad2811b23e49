//! One place that maps how a reconcile ended to what follows: the status it
//! leads to (written only when it changed), a Warning Event when a failure is
//! news, and what the controller does next — wait for a change, or retry with
//! backoff ([`error_policy`]).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    ResourceExt,
    runtime::{controller::Action, events::EventType, reflector::ObjectRef},
};
use tracing::{info, warn};

use super::{
    context::Context,
    error::Error,
    plan::Refusal,
    status::{self, Verdict, next_status},
    sync_stores::{StoreFailure, SyncError},
};
use crate::api::{Guarded, StoreSummary, TenantConfig};

/// How a reconcile stopped before it was done.
pub enum Halt {
    /// Only a change of spec, namespace or store can help.
    Refused(Refusal),
    /// A store call failed: retried when transient. `stores`: the object's
    /// stores, written, when only an include could not be read.
    StoreFailed { failure: Box<StoreFailure>, stores: Option<Vec<StoreSummary>> },
    /// The stores are written but their data cannot be projected: too large
    /// (`ValidationFailed`), or the API server refuses the write
    /// (`ProjectionRefused`).
    Unprojectable { reason: &'static str, why: String, store_message: String, stores: Vec<StoreSummary> },
    /// Anything else (the API server, a backend that cannot be built): retried
    /// with backoff, status untouched.
    Error(Error),
}

impl From<Refusal> for Halt {
    fn from(refusal: Refusal) -> Self {
        Halt::Refused(refusal)
    }
}

impl From<SyncError> for Halt {
    fn from(e: SyncError) -> Self {
        match e {
            SyncError::Refused(refusal) => Halt::Refused(refusal),
            SyncError::Backend(e) => Halt::Error(e.into()),
            SyncError::Failed { failure, stores } => Halt::StoreFailed { failure, stores },
        }
    }
}

impl From<Error> for Halt {
    fn from(e: Error) -> Self {
        Halt::Error(e)
    }
}

impl From<kube::Error> for Halt {
    fn from(e: kube::Error) -> Self {
        Halt::Error(e.into())
    }
}

/// Status, Event and next action for a reconcile that stopped early.
pub async fn halted(
    ctx: &Context,
    tc: &TenantConfig,
    labels: Option<&BTreeMap<String, String>>,
    halt: Halt,
) -> Result<Action, Error> {
    match halt {
        Halt::Refused(refusal) => {
            warn_once(ctx, tc, labels, Verdict::refused(refusal.reason, refusal.message)).await?;
            Ok(Action::await_change())
        }
        Halt::StoreFailed { failure, stores: None } => {
            warn_once(ctx, tc, labels, failure.verdict()).await?;
            failure_action(*failure)
        }
        Halt::StoreFailed { failure, stores: Some(stores) } => {
            write_status(ctx, tc, labels, Verdict { stores: Some(stores), ..failure.verdict() }).await?;
            failure_action(*failure)
        }
        Halt::Unprojectable { reason, why, store_message, stores } => {
            write_status(ctx, tc, labels, Verdict::unprojectable(reason, why, store_message, stores)).await?;
            Ok(Action::await_change())
        }
        Halt::Error(e) => Err(e),
    }
}

/// A transient store failure is retried with backoff; any other waits for a
/// spec or store change.
fn failure_action(failure: StoreFailure) -> Result<Action, Error> {
    if failure.error.is_transient() { Err(failure.error.into()) } else { Ok(Action::await_change()) }
}

/// Patches status only when it changed. Returns whether it did. `labels` are
/// the namespace's (the status names its tenant).
pub async fn write_status(
    ctx: &Context,
    tc: &TenantConfig,
    labels: Option<&BTreeMap<String, String>>,
    verdict: Verdict,
) -> Result<bool, Error> {
    ctx.metrics.set_ready(&tc.owner_key(), Some(verdict.ready.ok));
    let old = tc.full_status().map(|s| s.into_owned()).unwrap_or_default();
    let tenant = labels.and_then(|l| l.get(&ctx.settings.tenant_label).cloned());
    let ready = verdict.ready.ok;
    let new = next_status(&old, verdict, tc.metadata.generation, tenant, Time(Timestamp::now()));
    // `old` is the cached copy's. Right after a failure it may predate the
    // failure's own status write (the watch lags under load): the API then
    // holds the failure and the copy the status before it, equal to the new
    // one. The first success after a failure writes regardless (seen: an
    // object left Throttled after it had recovered, reliability suite).
    let key = ObjectRef::<Guarded>::new(&tc.name_any()).within(&tc.namespace().unwrap_or_default());
    if new == old && !(ready && ctx.ledgers.retries.failing(&key)) {
        return Ok(false);
    }
    status::patch(&ctx.kube.client, tc, &new).await?;
    Ok(true)
}

/// A failure worth telling once: its verdict, and a Warning Event with its
/// reason when that is news (the status changed).
pub async fn warn_once(
    ctx: &Context,
    tc: &TenantConfig,
    labels: Option<&BTreeMap<String, String>>,
    verdict: Verdict,
) -> Result<(), Error> {
    let (why, message) = (verdict.ready.reason, verdict.ready.message.clone());
    if write_status(ctx, tc, labels, verdict).await? {
        ctx.kube.publish(tc, EventType::Warning, why, message).await;
    }
    Ok(())
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
    if error.is_tenant_busy() {
        // Woken when its tenant gives a slot back (the request was recorded
        // again with its kind); not a failure, so no backoff grows. The
        // requeue only stands in for a wake-up that never comes.
        return Action::requeue(TENANT_TURN_FALLBACK);
    }
    let failures = ctx.ledgers.retries.failed(&key);
    ctx.metrics.objects_backing_off.set(ctx.ledgers.retries.backing_off() as i64);
    let capped = backoff(failures, error.is_throttling());
    // Jitter up to +25% so objects that failed together do not retry together.
    let jitter = capped.mul_f64(f64::from(Timestamp::now().subsec_nanosecond().unsigned_abs() % 1000) / 4000.0);
    warn!(error = %error, label = error.metric_label(), failures, retry_in = ?capped + jitter, "reconcile failed; backing off");
    watch_retry(&ctx, key, capped + jitter);
    Action::requeue(capped + jitter)
}

/// When an object waiting its tenant's turn is tried again if no slot of its
/// tenant was given back by then.
const TENANT_TURN_FALLBACK: Duration = Duration::from_secs(30);

/// A second path for a retry. kube-runtime 5's scheduler was seen not to run
/// an error-policy requeue (reliability suite, 30% throttling: one object
/// stayed `Throttled` with nothing scheduled until the resync, ten minutes
/// later). If no reconcile of the object has started a second after its
/// retry was due (its start count is unchanged; a success removes it), it is
/// requested again from here. That also happens when the retry is merely late
/// (every reconcile slot busy); the scheduler then merges the two requests.
fn watch_retry(ctx: &Arc<Context>, key: ObjectRef<Guarded>, due_in: Duration) {
    let Some(attempts) = ctx.ledgers.retries.attempts(&key) else { return };
    let ctx = Arc::downgrade(ctx);
    tokio::spawn(async move {
        tokio::time::sleep(due_in + Duration::from_secs(1)).await;
        let Some(ctx) = ctx.upgrade() else { return };
        if ctx.ledgers.retries.attempts(&key) == Some(attempts) {
            info!(object = %key, attempts, "the retry has not started a second after it was due; requesting it again");
            ctx.metrics.count_retry_requested_again();
            let _ = ctx.outbound.retries_due.unbounded_send(key);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(1, false), Duration::from_secs(1));
        assert_eq!(backoff(4, false), Duration::from_secs(8));
        assert_eq!(backoff(6, true), Duration::from_secs(30), "throttling caps at 30 s");
        assert_eq!(backoff(60, false), Duration::from_secs(300));
    }

    use super::super::testing::{ApiServer, Seen, context, tenant_config, typed};
    use crate::{
        api::conditions::{PROJECTED, READY, RECONCILING, STALLED, STORE_SYNCED, reason},
        store::StoreError,
    };
    use serde_json::json;

    fn condition(seen: &Seen, type_: &str) -> (String, String) {
        let conditions = seen.body["status"]["conditions"].as_array().expect("conditions");
        let c = conditions.iter().find(|c| c["type"] == type_).expect(type_);
        (c["status"].as_str().unwrap().to_string(), c["reason"].as_str().unwrap().to_string())
    }

    fn calls(seen: &[Seen]) -> Vec<(&str, &str)> {
        seen.iter().map(|s| (s.method.as_str(), s.path.rsplit('/').next().unwrap())).collect()
    }

    fn is(status: &str, why: &str) -> (String, String) {
        (status.to_string(), why.to_string())
    }

    fn throttled() -> StoreError {
        StoreError::Throttled {
            backend: "ParameterStore",
            operation: "PutParameter",
            message: "slow".into(),
            source: None,
        }
    }

    #[tokio::test]
    async fn a_refusal_is_written_and_warned_once_then_waits_for_a_change() {
        let object = tenant_config(json!({}), None);
        let (client, server) = ApiServer::start(object.clone());
        let ctx = context(client);
        let refusal = Refusal::new(reason::NO_STORE_FOR_TAGS, "no store serves tag x");
        let action = halted(&ctx, &typed(&object), None, Halt::Refused(refusal.clone())).await.unwrap();
        assert_eq!(action, Action::await_change());
        let seen = server.requests();
        assert_eq!(calls(&seen), [("PATCH", "status"), ("POST", "events")]);
        assert_eq!(condition(&seen[0], READY), is("False", reason::NO_STORE_FOR_TAGS));
        assert_eq!(condition(&seen[0], STALLED), is("True", reason::NO_STORE_FOR_TAGS));
        assert_eq!(condition(&seen[0], RECONCILING), is("False", reason::NO_STORE_FOR_TAGS));
        assert_eq!(
            (&seen[1].body["type"], &seen[1].body["reason"]),
            (&json!("Warning"), &json!(reason::NO_STORE_FOR_TAGS))
        );
        // The same refusal on the object as now written: nothing to send.
        let written = tenant_config(json!({}), Some(seen[0].body["status"].clone()));
        halted(&ctx, &typed(&written), None, Halt::Refused(refusal)).await.unwrap();
        assert_eq!(server.requests().len(), 2, "no second status write, no second Event");
    }

    #[tokio::test]
    async fn a_transient_store_failure_is_retried_and_a_permanent_one_waits() {
        let object = tenant_config(json!({}), None);
        let (client, server) = ApiServer::start(object.clone());
        let ctx = context(client);
        let failure = StoreFailure { error: throttled(), message: "store ssm: slow".into() };
        let result =
            halted(&ctx, &typed(&object), None, Halt::StoreFailed { failure: Box::new(failure), stores: None }).await;
        assert!(matches!(result, Err(ref e) if e.is_throttling()), "retried with backoff: {result:?}");
        let seen = server.requests();
        assert_eq!(calls(&seen), [("PATCH", "status"), ("POST", "events")]);
        assert_eq!(condition(&seen[0], RECONCILING), is("True", reason::THROTTLED));
        assert_eq!(condition(&seen[0], STALLED), is("False", reason::THROTTLED));

        let conflict = StoreError::Conflict { location: "/tc/acme/payments".into(), owner: "other/x".into() };
        let failure = StoreFailure { error: conflict, message: "store ssm: owned by other/x".into() };
        let action =
            halted(&ctx, &typed(&object), None, Halt::StoreFailed { failure: Box::new(failure), stores: None })
                .await
                .unwrap();
        assert_eq!(action, Action::await_change(), "only a change can lift a conflict");
        assert_eq!(condition(&server.requests()[2], STALLED), is("True", reason::CONFLICT));
    }

    #[tokio::test]
    async fn an_include_failure_after_the_writes_names_the_stores_written() {
        let object = tenant_config(json!({}), None);
        let (client, server) = ApiServer::start(object.clone());
        let ctx = context(client);
        let failure = StoreFailure { error: throttled(), message: "include /shared: slow".into() };
        let stores = vec![StoreSummary { name: "ddb".into(), keys: 2, ..Default::default() }];
        let halt = Halt::StoreFailed { failure: Box::new(failure), stores: Some(stores) };
        assert!(halted(&ctx, &typed(&object), None, halt).await.is_err());
        let seen = server.requests();
        assert_eq!(calls(&seen), [("PATCH", "status")]);
        assert_eq!(seen[0].body["status"]["stores"][0]["name"], "ddb");
    }

    #[tokio::test]
    async fn an_unprojectable_object_keeps_its_stores_synced_and_waits() {
        let object = tenant_config(json!({}), None);
        let (client, server) = ApiServer::start(object.clone());
        let ctx = context(client);
        let labels = BTreeMap::from([(ctx.settings.tenant_label.clone(), "acme".to_string())]);
        let halt = Halt::Unprojectable {
            reason: reason::VALIDATION_FAILED,
            why: "too large".into(),
            store_message: "2 keys".into(),
            stores: vec![],
        };
        let action = halted(&ctx, &typed(&object), Some(&labels), halt).await.unwrap();
        assert_eq!(action, Action::await_change());
        let seen = server.requests();
        assert_eq!(calls(&seen), [("PATCH", "status")]);
        assert_eq!(condition(&seen[0], STORE_SYNCED), is("True", reason::RECONCILED));
        assert_eq!(condition(&seen[0], PROJECTED), is("False", reason::VALIDATION_FAILED));
        assert_eq!(seen[0].body["status"]["tenant"], "acme", "the tenant is named from the namespace label");
    }

    #[tokio::test]
    async fn any_other_error_leaves_status_alone() {
        let object = tenant_config(json!({}), None);
        let (client, server) = ApiServer::start(object.clone());
        let ctx = context(client);
        let result = halted(&ctx, &typed(&object), None, Halt::Error(Error::MissingNamespace)).await;
        assert!(matches!(result, Err(Error::MissingNamespace)));
        assert!(server.requests().is_empty());
    }

    /// The whole driver on the mock API server: a namespace without the
    /// tenant label is refused before any store is touched.
    #[tokio::test]
    async fn the_driver_refuses_an_unknown_tenant_with_reads_only_then_one_status_write() {
        let object = tenant_config(json!({"entries": [{"key": "a", "value": "1"}]}), None);
        let (client, server) = ApiServer::start(object.clone());
        let ctx = Arc::new(context(client));
        let guarded: Guarded = serde_json::from_value(object).unwrap();
        let action = super::super::reconcile(Arc::new(guarded), ctx).await.unwrap();
        assert_eq!(action, Action::await_change());
        let seen = server.requests();
        assert_eq!(
            calls(&seen),
            [("GET", "acme-prod"), ("GET", "payments"), ("PATCH", "status"), ("POST", "events")],
            "namespace (not cached), ConfigMap, then the verdict: {seen:?}"
        );
        assert_eq!(condition(&seen[2], READY), is("False", reason::TENANT_UNKNOWN));
    }
}
