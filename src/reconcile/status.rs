//! A TenantConfig's status: the [`Verdict`] a reconcile concludes, the pure
//! [`next_status`] it leads to, and the one patch that writes it. Which
//! outcome leads to which verdict, and when the patch is sent, is
//! [`super::outcome`]'s.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;

use crate::api::{
    StoreSummary, TenantConfig, TenantConfigStatus,
    conditions::{self, PROJECTED, READY, RECONCILING, STALLED, STORE_SYNCED, reason},
};

/// One condition as a reconcile concluded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Concluded {
    pub ok: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Concluded {
    pub fn new(ok: bool, reason: &'static str, message: impl Into<String>) -> Self {
        Concluded { ok, reason, message: message.into() }
    }
}

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
            ready: Concluded::new(false, reason, message.clone()),
            store_synced: Some(Concluded::new(false, reason, message.clone())),
            projected: Concluded::new(false, reason, message),
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

    /// The stores are written but their data cannot be projected (`reason`).
    pub fn unprojectable(reason: &'static str, why: String, store_message: String, stores: Vec<StoreSummary>) -> Self {
        Verdict {
            standing: Standing::Stalled,
            ready: Concluded::new(false, reason, why.clone()),
            store_synced: Some(Concluded::new(true, reason::RECONCILED, store_message)),
            projected: Concluded::new(false, reason, why),
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
            ready: Concluded::new(true, reason::RECONCILED, ""),
            store_synced: Some(Concluded::new(true, reason::RECONCILED, store_message)),
            projected: Concluded::new(true, reason::RECONCILED, projected_message),
            stores: Some(stores),
            projection: Some(projection),
        }
    }
}

impl Verdict {
    /// Everything in place except keys another writer holds, which the object
    /// declares but does not adopt: Ready=False (KeyConflict) names them;
    /// the stores hold what the object manages and the projection is current.
    pub fn with_key_conflicts(self, keys: &[String]) -> Self {
        let message = format!(
            "another writer holds key(s) {}: not written (set spec.adoptExisting: true to take them over); \
             the projection shows the stored values",
            keys.join(", ")
        );
        Verdict { standing: Standing::Stalled, ready: Concluded::new(false, reason::KEY_CONFLICT, message), ..self }
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
    let why = verdict.ready.reason;
    let standing = |s: Standing| {
        let applies = verdict.standing == s;
        Concluded::new(applies, why, if applies { verdict.ready.message.clone() } else { String::new() })
    };
    let (reconciling, stalled) = (standing(Standing::Retrying), standing(Standing::Stalled));
    for (type_, concluded) in [
        (READY, Some(verdict.ready)),
        (STORE_SYNCED, verdict.store_synced),
        (PROJECTED, Some(verdict.projected)),
        (RECONCILING, Some(reconciling)),
        (STALLED, Some(stalled)),
    ]
    .into_iter()
    .filter_map(|(type_, concluded)| Some((type_, concluded?)))
    {
        let Concluded { ok, reason, message } = concluded;
        conditions::set_condition(&mut new.conditions, type_, ok, reason, &message, generation, now.clone());
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

/// Writes `status` (a merge patch of the status subresource).
pub async fn patch(client: &Client, tc: &TenantConfig, status: &TenantConfigStatus) -> Result<(), kube::Error> {
    let api = Api::<TenantConfig>::namespaced(client.clone(), &tc.namespace().unwrap_or_default());
    api.patch_status(&tc.name_any(), &PatchParams::default(), &Patch::Merge(json!({ "status": status }))).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::plan::{stores_recorded, stores_recorded_before_deletion};
    use k8s_openapi::jiff::Timestamp;

    fn projected(digest: &str, written: bool) -> Option<Projected> {
        Some(Projected { config_map: "cm".into(), keys: 2, digest: digest.into(), written })
    }

    fn ok_verdict(projection: Option<Projected>) -> Verdict {
        Verdict {
            standing: Standing::Done,
            ready: Concluded::new(true, "Reconciled", ""),
            store_synced: Some(Concluded::new(true, "Reconciled", "2 managed key(s) in 1 store(s)")),
            projected: Concluded::new(true, "Reconciled", "2 key(s) projected"),
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
