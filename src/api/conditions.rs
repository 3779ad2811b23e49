//! Condition types and reasons of `TenantConfig.status.conditions`, and the
//! metav1.Condition bookkeeping (transition times change only on a status flip).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const STORE_SYNCED: &str = "StoreSynced";
pub const PROJECTED: &str = "Projected";
/// kstatus' abnormal-true conditions (sigs.k8s.io/cli-utils, used by Flux and
/// kpt): True while a failure is being retried / when only a change of spec,
/// namespace or store can help.
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// Reasons, one per distinct cause a user must act on.
pub mod reason {
    pub const RECONCILED: &str = "Reconciled";
    pub const TENANT_UNKNOWN: &str = "TenantUnknown";
    pub const NO_STORE_FOR_TAGS: &str = "NoStoreForTags";
    pub const INCLUDE_NOT_ALLOWED: &str = "IncludeNotAllowed";
    pub const CONFLICT: &str = "Conflict";
    pub const VALIDATION_FAILED: &str = "ValidationFailed";
    pub const STORE_UNAVAILABLE: &str = "StoreUnavailable";
    pub const THROTTLED: &str = "Throttled";
    pub const CONFIG_MAP_CONFLICT: &str = "ConfigMapConflict";
    /// An entry, include or earlier key of the object is in a ConfigStore
    /// that overlaps another (the store's own reason is `Overlap`).
    pub const STORE_OVERLAP: &str = "StoreOverlap";
    /// A key the object declares is held by another writer at its location
    /// and the object does not adopt existing keys: not written.
    pub const KEY_CONFLICT: &str = "KeyConflict";
    /// The API server refuses the ConfigMap or Secret write for good (4xx:
    /// an immutable ConfigMap, a value it will not take).
    pub const PROJECTION_REFUSED: &str = "ProjectionRefused";
    /// The object would take its tenant past a store's per-tenant quota.
    pub const QUOTA_EXCEEDED: &str = "QuotaExceeded";
    /// (Event only) its tenant's share of the reconcile slots is in use: it
    /// waits its turn.
    pub const FAIR_SHARE: &str = "FairShare";
}

/// Sets `type_` in `conditions` to the given state. `lastTransitionTime` moves only
/// when the status value changes, so an unchanged reconcile yields an identical
/// list (and no status write). Returns true when anything changed.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    observed_generation: Option<i64>,
    now: Time,
) -> bool {
    let status = if status { "True" } else { "False" };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            let changed = c.status != status
                || c.reason != reason
                || c.message != message
                || c.observed_generation != observed_generation;
            if c.status != status {
                c.last_transition_time = now;
            }
            c.status = status.into();
            c.reason = reason.into();
            c.message = message.into();
            c.observed_generation = observed_generation;
            changed
        }
        None => {
            conditions.push(Condition {
                type_: type_.into(),
                status: status.into(),
                reason: reason.into(),
                message: message.into(),
                observed_generation,
                last_transition_time: now,
            });
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_moves_only_on_status_flip() {
        let mut cs = Vec::new();
        assert!(set_condition(&mut cs, READY, false, reason::TENANT_UNKNOWN, "no label", Some(1), at(10)));
        assert!(!set_condition(&mut cs, READY, false, reason::TENANT_UNKNOWN, "no label", Some(1), at(20)));
        assert_eq!(cs[0].last_transition_time, at(10));
        assert!(set_condition(&mut cs, READY, false, reason::CONFLICT, "taken", Some(2), at(30)));
        assert_eq!(cs[0].last_transition_time, at(10), "same status keeps its transition time");
        assert!(set_condition(&mut cs, READY, true, reason::RECONCILED, "", Some(2), at(40)));
        assert_eq!(cs[0].last_transition_time, at(40));
        assert_eq!(cs.len(), 1);
    }
}
