//! Per-tenant quotas of a store (DESIGN.md §12): what all TenantConfigs of
//! one tenant put in one store, counted before any write.
//!
//! Usage is what each admitted object's spec routes to a store (entries, and
//! bytes of keys and values), kept per object so that a new reconcile replaces
//! the object's own share (its spec changed, its entries moved, its namespace
//! now belongs to another tenant). The shares are seeded once, in one pass
//! over the cache, with the objects already admitted (those that wrote to a
//! store), so a restart keeps the objects that were in and refuses the
//! newcomer, whatever the order of the first reconciles. Pure apart from its
//! lock.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use crate::api::TenantQuota;

/// What an object (or a tenant) holds in a store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub entries: u64,
    pub bytes: u64,
}

impl Usage {
    fn plus(self, other: Usage) -> Usage {
        Usage { entries: self.entries + other.entries, bytes: self.bytes + other.bytes }
    }

    fn minus(self, other: Usage) -> Usage {
        Usage { entries: self.entries.saturating_sub(other.entries), bytes: self.bytes.saturating_sub(other.bytes) }
    }
}

/// A store's quota a reconcile would exceed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "tenant {tenant} would hold {what} in ConfigStore {store} with this object (its other objects: {others}); the store allows {limit} per tenant"
)]
pub struct Exceeded {
    pub store: String,
    pub tenant: String,
    /// `"N entries"` or `"N bytes"`.
    pub what: String,
    pub others: String,
    pub limit: String,
}

type StoreTenant = (String, String);

#[derive(Default)]
struct Ledger {
    seeded: bool,
    /// Each object's shares: `(store, tenant)` → usage. The key is the one
    /// `totals` holds, shared (two strings per share and object were a tenth
    /// of the per-object memory).
    objects: HashMap<String, Vec<(Arc<StoreTenant>, Usage)>>,
    totals: HashMap<Arc<StoreTenant>, Usage>,
    /// Objects a quota holds back, by tenant: woken when the tenant frees a share.
    held: HashMap<String, BTreeSet<String>>,
}

impl Ledger {
    fn record(&mut self, object: &str, shares: Vec<(StoreTenant, Usage)>) {
        for (key, usage) in self.objects.remove(object).unwrap_or_default() {
            let total = self.totals.entry(key).or_default();
            *total = total.minus(usage);
        }
        let shares: Vec<(Arc<StoreTenant>, Usage)> = shares
            .into_iter()
            .map(|(key, usage)| {
                let key = match self.totals.get_key_value(&key) {
                    Some((shared, _)) => shared.clone(),
                    None => Arc::new(key),
                };
                let total = self.totals.entry(key.clone()).or_default();
                *total = total.plus(usage);
                (key, usage)
            })
            .collect();
        if !shares.is_empty() {
            self.objects.insert(object.to_string(), shares);
        }
    }

    fn own(&self, object: &str, key: &StoreTenant) -> Usage {
        self.objects.get(object).into_iter().flatten().filter(|(k, _)| **k == *key).map(|(_, u)| *u).sum_usage()
    }
}

trait SumUsage {
    fn sum_usage(self) -> Usage;
}

impl<I: Iterator<Item = Usage>> SumUsage for I {
    fn sum_usage(self) -> Usage {
        self.fold(Usage::default(), Usage::plus)
    }
}

/// The quota ledger of the process.
#[derive(Default)]
pub struct Quotas(Mutex<Ledger>);

impl Quotas {
    /// Whether the admitted objects were counted already.
    pub fn is_seeded(&self) -> bool {
        self.0.lock().unwrap().seeded
    }

    /// Counts the admitted objects (`(object, tenant, usage per store)`),
    /// except those counted since; once.
    pub fn seed(&self, admitted: impl IntoIterator<Item = (String, String, BTreeMap<String, Usage>)>) {
        let mut ledger = self.0.lock().unwrap();
        if std::mem::replace(&mut ledger.seeded, true) {
            return;
        }
        for (object, tenant, usage) in admitted {
            if !ledger.objects.contains_key(&object) {
                let shares = usage.into_iter().map(|(store, u)| ((store, tenant.clone()), u)).collect();
                ledger.record(&object, shares);
            }
        }
    }

    /// Admits `object` of `tenant` with `usage` per store when no store's
    /// quota (`quota_of`) is exceeded, and records it; otherwise records
    /// nothing and says which quota.
    pub fn admit(
        &self,
        object: &str,
        tenant: &str,
        usage: &BTreeMap<String, Usage>,
        quota_of: impl Fn(&str) -> TenantQuota,
    ) -> Result<(), Exceeded> {
        let mut ledger = self.0.lock().unwrap();
        let checked = ledger.check(object, tenant, usage, quota_of);
        let held = ledger.held.entry(tenant.to_string()).or_default();
        if checked.is_err() {
            held.insert(object.to_string());
            return checked;
        }
        held.remove(object);
        if held.is_empty() {
            ledger.held.remove(tenant);
        }
        let shares = usage.iter().map(|(store, u)| ((store.clone(), tenant.to_string()), *u)).collect();
        ledger.record(object, shares);
        Ok(())
    }

    /// An object is gone: its shares are free again. Returns the objects of
    /// its tenant a quota holds back (`namespace/name`), to try again now.
    pub fn forget(&self, object: &str, tenant: &str) -> Vec<String> {
        let mut ledger = self.0.lock().unwrap();
        ledger.record(object, Vec::new());
        let held = ledger.held.get_mut(tenant).map(std::mem::take).unwrap_or_default();
        ledger.held.remove(tenant);
        held.into_iter().filter(|o| o != object).collect()
    }

    /// What `tenant` holds in `store`, as counted.
    pub fn usage(&self, store: &str, tenant: &str) -> Usage {
        self.0.lock().unwrap().totals.get(&(store.to_string(), tenant.to_string())).copied().unwrap_or_default()
    }
}

impl Ledger {
    /// Whether `usage` of `object` fits every store's quota.
    fn check(
        &self,
        object: &str,
        tenant: &str,
        usage: &BTreeMap<String, Usage>,
        quota_of: impl Fn(&str) -> TenantQuota,
    ) -> Result<(), Exceeded> {
        for (store, wanted) in usage {
            let key = (store.clone(), tenant.to_string());
            let own = self.own(object, &key);
            let others = self.totals.get(&key).copied().unwrap_or_default().minus(own);
            let after = others.plus(*wanted);
            let quota = quota_of(store);
            // The CRD keeps limits at 1 or more; a negative one would allow nothing.
            let (max_entries, max_bytes) =
                (quota.max_entries.map(|l| l.max(0) as u64), quota.max_bytes.map(|l| l.max(0) as u64));
            let exceeded = |what: String, others: String, limit: String| Exceeded {
                store: store.clone(),
                tenant: tenant.to_string(),
                what,
                others,
                limit,
            };
            // Only growth is refused: an object may always shrink, also while
            // its tenant is over a quota lowered since.
            if let Some(limit) = max_entries.filter(|limit| after.entries > *limit && wanted.entries > own.entries) {
                let (what, held) = (format!("{} entries", after.entries), format!("{} entries", others.entries));
                return Err(exceeded(what, held, format!("{limit} entries")));
            }
            if let Some(limit) = max_bytes.filter(|limit| after.bytes > *limit && wanted.bytes > own.bytes) {
                let (what, held) = (format!("{} bytes", after.bytes), format!("{} bytes", others.bytes));
                return Err(exceeded(what, held, format!("{limit} bytes")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(store: &str, entries: u64, bytes: u64) -> BTreeMap<String, Usage> {
        BTreeMap::from([(store.to_string(), Usage { entries, bytes })])
    }

    fn three_entries(_: &str) -> TenantQuota {
        TenantQuota { max_entries: Some(3), max_bytes: Some(100) }
    }

    #[test]
    fn a_tenant_gets_its_quota_and_no_more_and_others_are_untouched() {
        let quotas = Quotas::default();
        quotas.admit("t/a", "t", &usage("ssm", 2, 10), three_entries).unwrap();
        let err = quotas.admit("t/b", "t", &usage("ssm", 2, 10), three_entries).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tenant t would hold 4 entries in ConfigStore ssm with this object (its other objects: 2 entries); the store allows 3 entries per tenant"
        );
        assert_eq!(quotas.usage("ssm", "t"), Usage { entries: 2, bytes: 10 }, "the refused object counts nothing");
        quotas.admit("u/b", "u", &usage("ssm", 3, 10), three_entries).expect("another tenant has its own");
        // An object's own share is replaced, not added: a from 2 to 3 entries fits.
        quotas.admit("t/a", "t", &usage("ssm", 3, 10), three_entries).unwrap();
        let bytes = quotas.admit("t/a", "t", &usage("ssm", 1, 101), three_entries).unwrap_err();
        assert!(bytes.to_string().contains("101 bytes") && bytes.to_string().contains("allows 100 bytes"), "{bytes}");
        // Freed by a deletion.
        assert_eq!(quotas.forget("t/a", "t"), ["t/b"], "the held object is woken");
        quotas.admit("t/b", "t", &usage("ssm", 2, 10), three_entries).unwrap();
        assert!(quotas.forget("t/x", "t").is_empty(), "admitted objects are no longer held");
        assert_eq!(quotas.usage("ssm", "t"), Usage { entries: 2, bytes: 10 });
    }

    #[test]
    fn an_object_that_moved_tenant_or_store_leaves_its_old_share() {
        let quotas = Quotas::default();
        quotas.admit("x/a", "t", &usage("ssm", 3, 10), three_entries).unwrap();
        quotas.admit("x/a", "u", &usage("ddb", 3, 10), three_entries).unwrap();
        assert_eq!(quotas.usage("ssm", "t"), Usage::default());
        quotas.admit("t/b", "t", &usage("ssm", 3, 10), three_entries).unwrap();
    }

    /// After a restart, the objects that were admitted stay admitted,
    /// whatever reconciles first; the newcomer is refused.
    #[test]
    fn seeding_keeps_the_admitted_objects_in() {
        let quotas = Quotas::default();
        assert!(!quotas.is_seeded());
        quotas.seed([("t/a".to_string(), "t".to_string(), usage("ssm", 2, 10))]);
        assert!(quotas.is_seeded());
        assert!(quotas.admit("t/new", "t", &usage("ssm", 2, 10), three_entries).is_err());
        quotas.admit("t/a", "t", &usage("ssm", 2, 10), three_entries).unwrap();
        quotas.seed([("t/a".to_string(), "t".to_string(), usage("ssm", 9, 10))]);
        assert_eq!(quotas.usage("ssm", "t").entries, 2, "seeded once");
    }

    #[test]
    fn removing_entries_is_always_admitted() {
        let quotas = Quotas::default();
        let tight = |_: &str| TenantQuota { max_entries: Some(1), max_bytes: None };
        let t = || "t".to_string();
        quotas.seed([("t/a".to_string(), t(), usage("ssm", 3, 0)), ("t/b".to_string(), t(), usage("ssm", 3, 0))]);
        quotas.admit("t/a", "t", &usage("ssm", 2, 0), tight).expect("shrinking is never refused");
        quotas.admit("t/a", "t", &usage("ssm", 0, 0), tight).expect("leaving the store is never refused");
        assert!(quotas.admit("t/b", "t", &usage("ssm", 4, 0), tight).is_err(), "growing is");
    }
}
