//! Shared-path reads, cached: one entry per (store, included path), filled once
//! however many reconciles ask at the same time (single flight), dropped when an
//! event reports a change under the path, and refilled after `max_age` anyway
//! in case an event was lost.

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};
use tokio::sync::OnceCell;

use super::{StoreError, Value};
use crate::api::paths::strip_path;

/// Lookups by result; `metrics` registers the family (store does not import it).
pub type Lookups = Family<CacheLabels, Counter>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// hit | miss
    pub result: &'static str,
}

type Entries = Arc<BTreeMap<String, Value>>;

struct Slot {
    cell: OnceCell<(Instant, Entries)>,
}

pub struct SharedCache {
    slots: Mutex<HashMap<(String, String), Arc<Slot>>>,
    max_age: Duration,
    lookups: Lookups,
}

impl SharedCache {
    pub fn new(max_age: Duration, lookups: Lookups) -> Self {
        SharedCache { slots: Mutex::default(), max_age, lookups }
    }

    /// The entries under `path` in `store`, read with `fill` only when no fresh
    /// copy exists; concurrent callers share one `fill`. A failed fill is not
    /// cached.
    pub async fn get<F, Fut>(&self, store: &str, path: &str, fill: F) -> Result<Entries, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<BTreeMap<String, Value>, StoreError>>,
    {
        let slot = {
            let mut slots = self.slots.lock().unwrap();
            let key = (store.to_string(), path.to_string());
            let stale = slots.get(&key).and_then(|s| s.cell.get()).is_some_and(|(at, _)| at.elapsed() > self.max_age);
            if stale {
                slots.remove(&key);
            }
            slots.entry(key).or_insert_with(|| Arc::new(Slot { cell: OnceCell::new() })).clone()
        };
        let mut filled = false;
        let (_, entries) = slot
            .cell
            .get_or_try_init(|| async {
                filled = true;
                fill().await.map(|entries| (Instant::now(), Arc::new(entries)))
            })
            .await?;
        let result = if filled { "miss" } else { "hit" };
        self.lookups.get_or_create(&CacheLabels { result }).inc();
        Ok(entries.clone())
    }

    /// A parameter at `name` changed: drop every cached path of `store` that
    /// contains it. Readers that already hold the old slot finish with the old
    /// value; everyone after this call reads afresh.
    pub fn invalidate(&self, store: &str, name: &str) {
        self.slots.lock().unwrap().retain(|(s, path), _| !(s == store && strip_path(name, path).is_some()));
    }

    /// A shared path read differently than cached (a change whose event was
    /// lost): the next reader reads afresh.
    pub fn invalidate_path(&self, store: &str, path: &str) {
        self.slots.lock().unwrap().retain(|(s, p), _| !(s == store && p == path));
    }

    /// A store's spec changed: nothing cached for it is trusted.
    pub fn invalidate_store(&self, store: &str) {
        self.slots.lock().unwrap().retain(|(s, _), _| s != store);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn entries(v: &str) -> BTreeMap<String, Value> {
        BTreeMap::from([("k".to_string(), Value { value: v.into(), secure: false })])
    }

    #[tokio::test]
    async fn one_fill_for_concurrent_readers_until_invalidated() {
        let lookups = Lookups::default();
        let cache = Arc::new(SharedCache::new(Duration::from_secs(600), lookups.clone()));
        let count = |result| lookups.get_or_create(&CacheLabels { result }).get();
        let fills = Arc::new(AtomicU32::new(0));
        let read = |value: &'static str| {
            let (cache, fills) = (cache.clone(), fills.clone());
            async move {
                cache
                    .get("ssm", "/shared/prod", || async move {
                        fills.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(entries(value))
                    })
                    .await
                    .unwrap()
            }
        };
        let results = futures::future::join_all((0..20).map(|_| read("v1"))).await;
        assert!(results.iter().all(|e| e["k"].value == "v1"));
        assert_eq!(fills.load(Ordering::SeqCst), 1);
        assert_eq!((count("miss"), count("hit")), (1, 19));

        cache.invalidate("ssm", "/shared/other/x"); // not under the path
        cache.invalidate("db", "/shared/prod/x"); // another store
        assert_eq!(read("v2").await["k"].value, "v1");
        cache.invalidate("ssm", "/shared/prod/payments/timeout");
        assert_eq!(read("v2").await["k"].value, "v2");
        assert_eq!(fills.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn failures_are_not_cached_and_age_expires() {
        let cache = SharedCache::new(Duration::from_millis(30), Lookups::default());
        let failed = cache
            .get("ssm", "/p", || async {
                Err(StoreError::Unavailable {
                    backend: "ssm",
                    operation: "GetParametersByPath",
                    message: "down".into(),
                    source: None,
                })
            })
            .await;
        assert!(failed.is_err());
        assert_eq!(cache.get("ssm", "/p", || async { Ok(entries("a")) }).await.unwrap()["k"].value, "a");
        assert_eq!(cache.get("ssm", "/p", || async { Ok(entries("b")) }).await.unwrap()["k"].value, "a");
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(cache.get("ssm", "/p", || async { Ok(entries("c")) }).await.unwrap()["k"].value, "c");
    }
}
