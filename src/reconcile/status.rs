//! Pure readings of a TenantConfig's status that decide what a reconcile or a
//! cleanup must touch.

use crate::api::{TenantConfigStatus, conditions::STORE_SYNCED};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::{READY, set_condition};
    use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

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
}
