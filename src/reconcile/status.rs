//! A TenantConfig's status: the pure readings that decide what a reconcile or
//! a cleanup must touch, the pure [`next_status`] a reconcile's [`Verdict`]
//! leads to, and the one patch that writes it.

use std::collections::BTreeMap;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{events::EventType, reflector::ObjectRef},
};
use serde_json::json;

use super::{context::Context, error::Error};
use crate::api::{
    Guarded, StoreSummary, TenantConfig, TenantConfigStatus,
    conditions::{self, PROJECTED, READY, RECONCILING, STALLED, STORE_SYNCED, reason},
};

/// One condition as a reconcile concluded it: status, reason, message.
pub type Concluded = (bool, &'static str, String);

/// Where an object stands after a reconcile, for the Reconciling and Stalled
/// conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Everything in place.
    Done,
    /// A transient failure; the controller retries with backoff.
    Retrying,
    /// Refused: only a change of spec, namespace or store can help.
    Stalled,
}

/// What one reconcile concluded.
pub struct Verdict {
    pub standing: Standing,
    pub ready: Concluded,
    /// `None`: as it was (a deletion that waits changes nothing about which
    /// stores hold the object's keys, and a later cleanup relies on that).
    pub store_synced: Option<Concluded>,
    pub projected: Concluded,
    /// The stores the object's data is in now (`None`: leave the list as it is).
    pub stores: Option<Vec<StoreSummary>>,
    pub projection: Option<Projected>,
}

/// A successful projection, for status.
pub struct Projected {
    pub config_map: String,
    pub keys: i32,
    pub digest: String,
    /// The ConfigMap or Secret was written in this reconcile.
    pub written: bool,
}

impl Verdict {
    /// A refusal: every condition false for the same reason, Stalled.
    pub fn refused(reason: &'static str, message: String) -> Self {
        Verdict { standing: Standing::Stalled, ..Verdict::retrying(reason, message) }
    }

    /// A transient failure: every condition false for the same reason, Reconciling.
    pub fn retrying(reason: &'static str, message: String) -> Self {
        Verdict {
            standing: Standing::Retrying,
            ready: (false, reason, message.clone()),
            store_synced: Some((false, reason, message.clone())),
            projected: (false, reason, message),
            stores: None,
            projection: None,
        }
    }
}

impl Verdict {
    /// A deletion waiting for a store (or a person): StoreSynced is left as
    /// the last reconcile wrote it.
    pub fn deletion_waits(reason: &'static str, message: String, transient: bool) -> Self {
        let verdict = if transient { Verdict::retrying(reason, message) } else { Verdict::refused(reason, message) };
        Verdict { store_synced: None, ..verdict }
    }

    /// The stores are written but their data cannot be projected (too large).
    pub fn unprojectable(why: String, store_message: String, stores: Vec<StoreSummary>) -> Self {
        Verdict {
            standing: Standing::Stalled,
            ready: (false, reason::VALIDATION_FAILED, why.clone()),
            store_synced: Some((true, reason::RECONCILED, store_message)),
            projected: (false, reason::VALIDATION_FAILED, why),
            stores: Some(stores),
            projection: None,
        }
    }

    /// Everything in place.
    pub fn reconciled(
        store_message: String,
        projected_message: String,
        stores: Vec<StoreSummary>,
        projection: Projected,
    ) -> Self {
        Verdict {
            standing: Standing::Done,
            ready: (true, reason::RECONCILED, String::new()),
            store_synced: Some((true, reason::RECONCILED, store_message)),
            projected: (true, reason::RECONCILED, projected_message),
            stores: Some(stores),
            projection: Some(projection),
        }
    }
}

/// The status after a reconcile of `generation` that concluded `verdict` at
/// `now`, in a namespace whose tenant label has the value `tenant`.
pub fn next_status(
    old: &TenantConfigStatus,
    verdict: Verdict,
    generation: Option<i64>,
    tenant: Option<String>,
    now: Time,
) -> TenantConfigStatus {
    let mut new = old.clone();
    let why = verdict.ready.1;
    let message = |applies: bool| if applies { verdict.ready.2.clone() } else { String::new() };
    let reconciling = (verdict.standing == Standing::Retrying, why, message(verdict.standing == Standing::Retrying));
    let stalled = (verdict.standing == Standing::Stalled, why, message(verdict.standing == Standing::Stalled));
    for (type_, (ok, why, message)) in [
        (READY, Some(verdict.ready)),
        (STORE_SYNCED, verdict.store_synced),
        (PROJECTED, Some(verdict.projected)),
        (RECONCILING, Some(reconciling)),
        (STALLED, Some(stalled)),
    ]
    .into_iter()
    .filter_map(|(type_, concluded)| Some((type_, concluded?)))
    {
        conditions::set_condition(&mut new.conditions, type_, ok, why, &message, generation, now.clone());
    }
    new.observed_generation = generation;
    new.tenant = tenant;
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
    new
}

/// Patches status only when it changed. Returns whether it did. `labels` are
/// the namespace's (the status names its tenant).
pub async fn write(
    tc: &TenantConfig,
    ctx: &Context,
    labels: Option<&BTreeMap<String, String>>,
    verdict: Verdict,
) -> Result<bool, Error> {
    let ns = tc.namespace().unwrap_or_default();
    ctx.metrics.set_ready(&tc.owner_key(), Some(verdict.ready.0));
    let old = tc.status.clone().unwrap_or_default();
    let tenant = labels.and_then(|l| l.get(&ctx.settings.tenant_label).cloned());
    let ready = verdict.ready.0;
    let new = next_status(&old, verdict, tc.metadata.generation, tenant, Time(Timestamp::now()));
    // `old` is the cached copy's. Right after a failure it may predate the
    // failure's own status write (the watch lags under load): the API then
    // holds the failure and the copy the status before it, equal to the new
    // one. The first success after a failure writes regardless (seen: an
    // object left Throttled after it had recovered, reliability suite).
    let key = ObjectRef::<Guarded>::new(&tc.name_any()).within(&ns);
    if new == old && !(ready && ctx.retries.failing(&key)) {
        return Ok(false);
    }
    let api = Api::<TenantConfig>::namespaced(ctx.client.clone(), &ns);
    api.patch_status(&tc.name_any(), &PatchParams::default(), &Patch::Merge(json!({ "status": new }))).await?;
    Ok(true)
}

/// A failure worth telling once: its verdict, and a Warning Event with its
/// reason when that is news (the status changed).
pub async fn warn_once(
    tc: &TenantConfig,
    ctx: &Context,
    labels: Option<&BTreeMap<String, String>>,
    verdict: Verdict,
) -> Result<(), Error> {
    let (_, why, message) = verdict.ready.clone();
    if write(tc, ctx, labels, verdict).await? {
        ctx.publish(tc, EventType::Warning, why, message).await;
    }
    Ok(())
}

/// Whether `status.stores` names every store holding keys of this object, as of
/// `generation`: true only once a reconcile of that generation got through all
/// its store writes (StoreSynced=True for it).
///
/// `observedGeneration` alone does not say this: it is written by failed
/// reconciles too. A reconcile that wrote to a store and then failed (its
/// answer lost, a later store throttled, a sweep interrupted) leaves the list
/// short of that store while `observedGeneration` already matches; trusting
/// it, the next reconcile skipped the sweep and cleanup skipped the store, and
/// the store kept keys nothing would ever remove.
pub fn stores_recorded(status: Option<&TenantConfigStatus>, generation: Option<i64>) -> bool {
    let Some(status) = status else { return false };
    generation.is_some()
        && status
            .conditions
            .iter()
            .any(|c| c.type_ == STORE_SYNCED && c.status == "True" && c.observed_generation == generation)
}

/// As [`stores_recorded`], for an object being deleted: setting
/// `deletionTimestamp` bumps a custom resource's generation once, so the last
/// spec reconciled is one generation back.
pub fn stores_recorded_before_deletion(status: Option<&TenantConfigStatus>, generation: Option<i64>) -> bool {
    stores_recorded(status, generation) || stores_recorded(status, generation.map(|g| g - 1))
}

/// Whether `status.stores` can be trusted to name every store holding keys of
/// `tc`, for a reconcile or, once it is being deleted, for its cleanup.
pub fn stores_settled(tc: &TenantConfig) -> bool {
    if tc.metadata.deletion_timestamp.is_some() {
        stores_recorded_before_deletion(tc.status.as_ref(), tc.metadata.generation)
    } else {
        stores_recorded(tc.status.as_ref(), tc.metadata.generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::set_condition;

    fn status(conditions: &[(&str, bool, i64)], observed: i64) -> TenantConfigStatus {
        let mut s = TenantConfigStatus { observed_generation: Some(observed), ..Default::default() };
        for (type_, ok, generation) in conditions {
            set_condition(&mut s.conditions, type_, *ok, "R", "", Some(*generation), Time(Timestamp::now()));
        }
        s
    }

    #[test]
    fn a_completed_reconcile_of_this_generation_records_its_stores() {
        let s = status(&[(READY, true, 3), (STORE_SYNCED, true, 3)], 3);
        assert!(stores_recorded(Some(&s), Some(3)));
        assert!(!stores_recorded(Some(&s), Some(4)), "a newer spec has not been reconciled yet");
        assert!(!stores_recorded(None, Some(1)), "never reconciled");
        assert!(!stores_recorded(Some(&s), None));
    }

    /// The interleaving that orphaned data: a reconcile of generation 2 fails
    /// while sweeping a store that generation 1 wrote to (throttled); its
    /// status write sets observedGeneration 2. The retry must still sweep.
    #[test]
    fn a_failed_reconcile_leaves_the_list_untrusted_although_observed_generation_matches() {
        let after_failed_sweep = status(&[(READY, false, 2), (STORE_SYNCED, false, 2)], 2);
        assert_eq!(after_failed_sweep.observed_generation, Some(2));
        assert!(!stores_recorded(Some(&after_failed_sweep), Some(2)));
        // A failure after an earlier success at the same generation (a resync
        // that was throttled half-way) also makes the next reconcile sweep.
        let mut s = status(&[(STORE_SYNCED, true, 2)], 2);
        set_condition(&mut s.conditions, STORE_SYNCED, false, "Throttled", "", Some(2), Time(Timestamp::now()));
        assert!(!stores_recorded(Some(&s), Some(2)));
    }

    #[test]
    fn deletion_looks_one_generation_back() {
        let s = status(&[(STORE_SYNCED, true, 5)], 5);
        assert!(stores_recorded_before_deletion(Some(&s), Some(6)));
        assert!(stores_recorded_before_deletion(Some(&s), Some(5)));
        assert!(!stores_recorded_before_deletion(Some(&s), Some(7)), "a spec change never reconciled, then deletion");
        let failed = status(&[(STORE_SYNCED, false, 5)], 5);
        assert!(!stores_recorded_before_deletion(Some(&failed), Some(6)));
    }

    fn projected(digest: &str, written: bool) -> Option<Projected> {
        Some(Projected { config_map: "cm".into(), keys: 2, digest: digest.into(), written })
    }

    fn ok_verdict(projection: Option<Projected>) -> Verdict {
        Verdict {
            standing: Standing::Done,
            ready: (true, "Reconciled", String::new()),
            store_synced: Some((true, "Reconciled", "2 managed key(s) in 1 store(s)".into())),
            projected: (true, "Reconciled", "2 key(s) projected".into()),
            stores: Some(vec![]),
            projection,
        }
    }

    #[test]
    fn the_same_verdict_twice_changes_nothing() {
        let t0 = Time(Timestamp::from_second(1_000).unwrap());
        let t1 = Time(Timestamp::from_second(2_000).unwrap());
        let first = next_status(
            &Default::default(),
            ok_verdict(projected("d1", true)),
            Some(3),
            Some("acme".into()),
            t0.clone(),
        );
        assert_eq!(first.observed_generation, Some(3));
        assert_eq!(first.tenant.as_deref(), Some("acme"));
        assert_eq!(first.last_projected_time, Some(t0.clone()));
        assert!(stores_recorded(Some(&first), Some(3)));
        // A resync that found everything in place: no status write at all.
        let again = next_status(&first, ok_verdict(projected("d1", false)), Some(3), Some("acme".into()), t1.clone());
        assert_eq!(again, first, "conditions keep their transition time; nothing was written");
        // A new projection moves lastProjectedTime.
        let changed = next_status(&first, ok_verdict(projected("d2", true)), Some(3), Some("acme".into()), t1.clone());
        assert_eq!(changed.last_projected_time, Some(t1));
        assert_eq!(changed.source_digest.as_deref(), Some("d2"));
    }

    #[test]
    fn a_refusal_keeps_what_it_does_not_know() {
        let t = Time(Timestamp::from_second(1_000).unwrap());
        let ok = next_status(&Default::default(), ok_verdict(projected("d1", true)), Some(1), None, t.clone());
        let refused = next_status(&ok, Verdict::refused("NoStoreForTags", "no store".into()), Some(2), None, t);
        assert_eq!(refused.source_digest.as_deref(), Some("d1"), "the last projection stays named");
        assert_eq!(refused.observed_generation, Some(2));
        assert!(!stores_recorded(Some(&refused), Some(2)));
        let ready = refused.conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "NoStoreForTags"));
    }

    /// kstatus reads these two: Reconciling while a failure is retried, Stalled
    /// when only a change can help.
    #[test]
    fn standing_sets_reconciling_and_stalled() {
        let t = Time(Timestamp::from_second(1_000).unwrap());
        let get = |s: &TenantConfigStatus, type_: &str| {
            let c = s.conditions.iter().find(|c| c.type_ == type_).unwrap();
            (c.status.clone(), c.reason.clone(), c.message.clone())
        };
        let of =
            |status: &str, reason: &str, message: &str| (status.to_string(), reason.to_string(), message.to_string());
        let done = next_status(&Default::default(), ok_verdict(projected("d", true)), Some(1), None, t.clone());
        assert_eq!(get(&done, RECONCILING), of("False", "Reconciled", ""));
        assert_eq!(get(&done, STALLED), of("False", "Reconciled", ""));
        let retrying = next_status(&done, Verdict::retrying("Throttled", "slow down".into()), Some(1), None, t.clone());
        assert_eq!(get(&retrying, RECONCILING), of("True", "Throttled", "slow down"));
        assert_eq!(get(&retrying, STALLED), of("False", "Throttled", ""));
        let stalled = next_status(&retrying, Verdict::refused("NoStoreForTags", "no store".into()), Some(2), None, t);
        assert_eq!(get(&stalled, RECONCILING), of("False", "NoStoreForTags", ""));
        assert_eq!(get(&stalled, STALLED), of("True", "NoStoreForTags", "no store"));
        assert!(
            stalled.conditions.iter().all(|c| c.observed_generation == Some(2)),
            "every condition names its generation"
        );
    }

    /// A cleanup that failed must not make the next one distrust the list of
    /// stores (it would sweep every store instead of the recorded ones).
    #[test]
    fn a_deletion_that_waits_keeps_store_synced() {
        let t = Time(Timestamp::from_second(1_000).unwrap());
        let done = next_status(&Default::default(), ok_verdict(projected("d", true)), Some(2), None, t.clone());
        let waiting =
            next_status(&done, Verdict::deletion_waits("StoreUnavailable", "down".into(), true), Some(3), None, t);
        assert!(stores_recorded_before_deletion(Some(&waiting), Some(3)), "still settled as of generation 2");
        let ready = waiting.conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "StoreUnavailable"));
    }
}
