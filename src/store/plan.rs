//! The pure diff between what a store holds and what a TenantConfig wants
//! (DESIGN.md §4 "write only differences"). Backends call it after every read,
//! so a lost optimistic-concurrency race simply re-reads and re-plans.

use std::collections::{BTreeMap, BTreeSet};

use super::{Desired, StoreState, Value};
use crate::api::ManagementPolicy;

/// The writes that take a store from its current state to the desired one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Keys to write, with their new values.
    pub puts: BTreeMap<String, Value>,
    /// Managed keys that left the spec and are still in the store.
    pub deletes: BTreeSet<String>,
    /// Managed keys whose stored value differed from the spec (someone else
    /// changed them); a subset of `puts`, reported as drift corrections.
    pub drift_corrected: BTreeSet<String>,
    /// The managed-key set after the plan is applied.
    pub managed: BTreeSet<String>,
    /// True when only bookkeeping (owner, managed set) changes.
    pub bookkeeping_only: bool,
    /// Desired keys another writer holds at the location, not adopted:
    /// neither written nor managed (so never reverted or deleted).
    pub unclaimed: BTreeSet<String>,
}

impl Plan {
    /// Nothing to write at all: an unchanged apply costs reads only.
    pub fn is_noop(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty() && !self.bookkeeping_only
    }
}

/// `(tenant, configType)` is owned by another TenantConfig (DESIGN.md §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedElsewhere {
    pub owner: String,
}

/// Diffs `current` against `desired`.
///
/// - The first owner keeps a location; another owner gets [`OwnedElsewhere`]
///   while the location still holds managed keys.
/// - Enforce writes every key whose value or secure flag differs; CreateOnly
///   writes only keys absent from the store.
/// - Only keys this owner manages are ever deleted; keys written by others
///   survive untouched.
/// - A desired key another writer holds is taken over only with
///   `adopt_existing`; otherwise it is [`Plan::unclaimed`].
pub fn plan(current: &StoreState, desired: &Desired) -> Result<Plan, OwnedElsewhere> {
    if let Some(owner) = &current.managed_by
        && owner != &desired.owner
        && !current.managed.is_empty()
    {
        return Err(OwnedElsewhere { owner: owner.clone() });
    }
    let mut plan = Plan::default();
    for (key, want) in &desired.entries {
        let anothers = current.entries.contains_key(key) && !current.managed.contains(key);
        if anothers && !desired.adopt_existing {
            plan.unclaimed.insert(key.clone());
            continue;
        }
        match current.entries.get(key) {
            None => {
                plan.puts.insert(key.clone(), want.clone());
            }
            Some(have) if have != want && desired.policy == ManagementPolicy::Enforce => {
                plan.puts.insert(key.clone(), want.clone());
                if current.managed.contains(key) {
                    plan.drift_corrected.insert(key.clone());
                }
            }
            Some(_) => {}
        }
    }
    plan.deletes = current
        .managed
        .iter()
        .filter(|k| !desired.entries.contains_key(*k) && current.entries.contains_key(*k))
        .cloned()
        .collect();
    plan.managed = desired.entries.keys().filter(|k| !plan.unclaimed.contains(*k)).cloned().collect();
    // Ownership is recorded only while there is something to own: an object that
    // manages nothing at a location must not create an empty item there.
    let owner_changes = current.managed_by.as_deref() != Some(desired.owner.as_str()) && !plan.managed.is_empty();
    plan.bookkeeping_only =
        plan.puts.is_empty() && plan.deletes.is_empty() && (plan.managed != current.managed || owner_changes);
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(v: &str) -> Value {
        Value { value: v.into(), secure: false }
    }

    fn state(entries: &[(&str, &str)], managed: &[&str], owner: Option<&str>) -> StoreState {
        StoreState {
            entries: entries.iter().map(|(k, v)| (k.to_string(), value(v))).collect(),
            managed: managed.iter().map(|s| s.to_string()).collect(),
            managed_by: owner.map(String::from),
            version: 1,
            shadowed: Default::default(),
        }
    }

    fn desired(entries: &[(&str, &str)], policy: ManagementPolicy) -> Desired {
        Desired {
            owner: "acme-prod/payments".into(),
            entries: entries.iter().map(|(k, v)| (k.to_string(), value(v))).collect(),
            policy,
            owned_before: false,
            expect_absent: false,
            created: None,
            adopt_existing: false,
        }
    }

    fn keys(s: &BTreeSet<String>) -> Vec<&str> {
        s.iter().map(String::as_str).collect()
    }

    const ME: Option<&str> = Some("acme-prod/payments");

    #[test]
    fn unchanged_is_a_noop() {
        let cur = state(&[("a", "1"), ("other", "x")], &["a"], ME);
        let p = plan(&cur, &desired(&[("a", "1")], ManagementPolicy::Enforce)).unwrap();
        assert!(p.is_noop(), "{p:?}");
    }

    #[test]
    fn writes_only_changed_and_new_keys_and_reports_drift() {
        let cur = state(&[("a", "1"), ("b", "drifted"), ("other", "x")], &["a", "b"], ME);
        let p = plan(&cur, &desired(&[("a", "1"), ("b", "2"), ("c", "3")], ManagementPolicy::Enforce)).unwrap();
        assert_eq!(p.puts.keys().map(String::as_str).collect::<Vec<_>>(), ["b", "c"]);
        assert_eq!(keys(&p.drift_corrected), ["b"]);
        assert!(p.deletes.is_empty());
        assert_eq!(keys(&p.managed), ["a", "b", "c"]);
    }

    #[test]
    fn deletes_only_managed_keys_that_left_the_spec() {
        let cur = state(&[("a", "1"), ("gone", "x"), ("other", "x")], &["a", "gone", "vanished"], ME);
        let p = plan(&cur, &desired(&[("a", "1")], ManagementPolicy::Enforce)).unwrap();
        assert_eq!(keys(&p.deletes), ["gone"], "'other' is not ours; 'vanished' is already absent");
        assert_eq!(keys(&p.managed), ["a"]);
    }

    #[test]
    fn create_only_never_overwrites() {
        let cur = state(&[("a", "changed-by-ops")], &["a"], ME);
        let p = plan(&cur, &desired(&[("a", "seed"), ("b", "seed")], ManagementPolicy::CreateOnly)).unwrap();
        assert_eq!(p.puts.keys().map(String::as_str).collect::<Vec<_>>(), ["b"]);
        assert!(p.drift_corrected.is_empty());
    }

    #[test]
    fn secure_flag_change_is_a_change() {
        let cur = state(&[("a", "1")], &["a"], ME);
        let mut want = desired(&[("a", "1")], ManagementPolicy::Enforce);
        want.entries.get_mut("a").unwrap().secure = true;
        assert_eq!(plan(&cur, &want).unwrap().puts.len(), 1);
    }

    #[test]
    fn another_owner_keeps_the_location() {
        let cur = state(&[("a", "1")], &["a"], Some("acme-dev/payments"));
        let err = plan(&cur, &desired(&[("a", "1")], ManagementPolicy::Enforce)).unwrap_err();
        assert_eq!(err.owner, "acme-dev/payments");
        // Released (no managed keys left): the next owner may take it; the
        // keys left behind are another writer's unless it adopts them.
        let released = state(&[("a", "1")], &[], Some("acme-dev/payments"));
        let p = plan(&released, &desired(&[("a", "1"), ("b", "2")], ManagementPolicy::Enforce)).unwrap();
        assert_eq!((keys(&p.unclaimed), keys(&p.managed)), (vec!["a"], vec!["b"]));
        let adopting = Desired { adopt_existing: true, ..desired(&[("a", "1")], ManagementPolicy::Enforce) };
        let p = plan(&released, &adopting).unwrap();
        assert!(p.bookkeeping_only && !p.is_noop(), "ownership is recorded: {p:?}");
    }

    /// Another writer's key (a billing system's plan tier) that the object
    /// also declares: not written, not managed — so never reverted as drift,
    /// never deleted with the object, whatever the policy — unless adopted.
    #[test]
    fn another_writers_key_is_taken_over_only_when_adopted() {
        let cur = state(&[("plan-tier", "gold"), ("a", "1")], &["a"], ME);
        for policy in [ManagementPolicy::Enforce, ManagementPolicy::CreateOnly] {
            let p = plan(&cur, &desired(&[("plan-tier", "free"), ("a", "2")], policy)).unwrap();
            assert_eq!(keys(&p.unclaimed), ["plan-tier"], "{policy:?}");
            assert!(!p.puts.contains_key("plan-tier") && !p.managed.contains("plan-tier"), "{policy:?}: {p:?}");
            // Dropping it from the spec deletes nothing of theirs.
            let p = plan(&cur, &desired(&[("a", "2")], policy)).unwrap();
            assert!(p.deletes.is_empty());
        }
        let adopting = Desired { adopt_existing: true, ..desired(&[("plan-tier", "free")], ManagementPolicy::Enforce) };
        let p = plan(&cur, &adopting).unwrap();
        assert_eq!(p.puts["plan-tier"], value("free"));
        assert!(p.managed.contains("plan-tier") && p.unclaimed.is_empty());
        assert!(p.drift_corrected.is_empty(), "taking over is not a drift correction");
    }

    #[test]
    fn managing_nothing_writes_nothing() {
        let p = plan(&StoreState::default(), &desired(&[], ManagementPolicy::Enforce)).unwrap();
        assert!(p.is_noop(), "{p:?}");
    }

    #[test]
    fn empty_location_gets_everything() {
        let p = plan(&StoreState::default(), &desired(&[("a", "1"), ("b", "2")], ManagementPolicy::Enforce)).unwrap();
        assert_eq!(p.puts.len(), 2);
        assert!(!p.is_noop());
    }
}
