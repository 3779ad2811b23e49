//! The start-up pass's reads of Parameter Store: the first apply of each object
//! under a tenant's path is planned against one recursive walk of that path
//! instead of a walk of its own. A cold start (or a restart) of N objects in T
//! tenants then costs T walks, not N: at 10,000 objects moto spent ~60
//! CPU-seconds on the per-object walks, and on AWS they are 10,000 calls
//! against the 40/s read quota.
//!
//! A walk stands in for an object's own read only where that read would have
//! found the same:
//! - the object existed before the walk started (else a parameter written
//!   between the walk and the object's creation, with no event queue to
//!   report it, would be missing from its first projection);
//! - no event has reported a change under the object's path since the walk
//!   started (including while it was under way);
//! - the walk has not served that path before (the first apply writes it; a
//!   retry must see its writes).
//!
//! Everything else reads on its own, and so does every apply once the first
//! resync has ended the start-up pass (from then on the resync's own bulk read
//! is the safety net). A change nobody reports between the walk and the apply
//! is what a change between an object's own read and its write already is:
//! the resync finds it. A parameter someone else creates after the walk makes
//! the apply's create fail on its condition; the backend then reads and plans
//! again.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::OnceCell;
use tracing::info;

use super::{StoreError, Value};
use crate::api::paths::strip_path;

/// creationTimestamp has whole seconds; the API server's clock and ours may
/// differ a little. An object created this close to a walk's start is taken
/// as created after it.
const CREATED_MARGIN: SignedDuration = SignedDuration::from_secs(2);

type Parameters = Arc<BTreeMap<String, Value>>;

struct Walk {
    started: Timestamp,
    /// `None`: the walk failed; its objects read on their own.
    parameters: OnceCell<Option<Parameters>>,
    /// Names reported changed since the walk started, and `{path}/` for each
    /// path the walk has served.
    spent: Mutex<BTreeSet<String>>,
}

impl Walk {
    /// Whether `path` or anything under it is in `spent`.
    fn spent_under(spent: &BTreeSet<String>, path: &str) -> bool {
        // Names under `path/` sort from "path/" up to (excluding) "path0".
        spent.contains(path) || spent.range(format!("{path}/")..format!("{path}0")).next().is_some()
    }
}

/// Tenant walks of the start-up pass, by (store, tenant path).
pub struct TenantWalks {
    open: AtomicBool,
    walks: Mutex<HashMap<(String, String), Arc<Walk>>>,
    /// Tenant paths walked (exported as a metric).
    pub walked: Counter,
    /// First applies planned against a walk (exported as a metric).
    pub served: Counter,
}

impl Default for TenantWalks {
    fn default() -> Self {
        TenantWalks {
            open: AtomicBool::new(true),
            walks: Mutex::default(),
            walked: Counter::default(),
            served: Counter::default(),
        }
    }
}

impl TenantWalks {
    /// The parameters under `path` (by full name) as the walk of `tenant_path`
    /// in `store` found them, walking it with `walk` if nobody has yet
    /// (concurrent callers share one walk). `None`: the caller reads on its
    /// own (see the module comment for when).
    pub async fn under<F, Fut>(
        &self,
        store: &str,
        tenant_path: &str,
        path: &str,
        created: Option<Timestamp>,
        walk: F,
    ) -> Option<Vec<(String, Value)>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<(String, Value)>, StoreError>>,
    {
        let created = created?;
        let slot = {
            let mut walks = self.walks.lock().unwrap();
            if !self.open.load(Ordering::SeqCst) {
                return None;
            }
            walks
                .entry((store.to_string(), tenant_path.to_string()))
                .or_insert_with(|| {
                    Arc::new(Walk { started: Timestamp::now(), parameters: OnceCell::new(), spent: Mutex::default() })
                })
                .clone()
        };
        if created.saturating_add(CREATED_MARGIN).ok()? > slot.started {
            return None;
        }
        if Walk::spent_under(&slot.spent.lock().unwrap(), path) {
            return None;
        }
        let parameters = slot
            .parameters
            .get_or_init(|| async {
                self.walked.inc();
                match walk().await {
                    Ok(parameters) => Some(Arc::new(parameters.into_iter().collect())),
                    Err(e) => {
                        info!(store, path = tenant_path, error = %e, "start-up walk failed; its objects read on their own");
                        None
                    }
                }
            })
            .await
            .clone()?;
        {
            // Re-checked: a change may have been reported while the walk ran.
            let mut spent = slot.spent.lock().unwrap();
            if Walk::spent_under(&spent, path) {
                return None;
            }
            spent.insert(format!("{path}/"));
        }
        self.served.inc();
        let under = parameters.range(format!("{path}/")..format!("{path}0"));
        Some(under.map(|(name, value)| (name.clone(), value.clone())).collect())
    }

    /// An event reported `change`: a walk that contains the changed
    /// parameter no longer serves the paths above it.
    pub fn reported(&self, change: &super::change::StoreChange) {
        if let super::change::StoreChange::Parameter { name, .. } = change {
            self.changed(name);
        }
    }

    /// The parameter `name` changed: no walk that contains it serves the
    /// paths above it any more.
    pub fn changed(&self, name: &str) {
        if !self.open.load(Ordering::SeqCst) {
            return;
        }
        for ((_, tenant_path), walk) in self.walks.lock().unwrap().iter() {
            if strip_path(name, tenant_path).is_some() {
                walk.spent.lock().unwrap().insert(name.to_string());
            }
        }
    }

    /// Ends the start-up pass: the walks are dropped, every apply reads on
    /// its own from now on. Returns (walks made, first applies they served).
    pub fn close(&self) -> (u64, u64) {
        let was_open = {
            let mut walks = self.walks.lock().unwrap();
            walks.clear();
            self.open.swap(false, Ordering::SeqCst)
        };
        let counts = (self.walked.get(), self.served.get());
        if was_open {
            info!(
                walks = counts.0,
                first_applies = counts.1,
                "start-up pass over: Parameter Store paths are read one by one from now on"
            );
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn value(v: &str) -> Value {
        Value { value: v.into(), secure: false }
    }

    fn tenant() -> Vec<(String, Value)> {
        [
            ("/p/acme/payments/a", "1"),
            ("/p/acme/payments/b", "2"),
            ("/p/acme/payments-eu/a", "3"),
            ("/p/acme/prod/payments/a", "4"),
            ("/p/acme/web/x", "5"),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), value(v)))
        .collect()
    }

    fn long_ago() -> Option<Timestamp> {
        Some(Timestamp::now() - SignedDuration::from_secs(60))
    }

    fn names(found: Option<Vec<(String, Value)>>) -> Option<Vec<String>> {
        found.map(|f| f.into_iter().map(|(n, _)| n).collect())
    }

    #[tokio::test]
    async fn one_walk_serves_each_path_of_the_tenant_once() {
        let walks = TenantWalks::default();
        let calls = AtomicUsize::new(0);
        let walk = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(tenant())
        };
        let payments = walks.under("ssm", "/p/acme", "/p/acme/payments", long_ago(), walk).await;
        assert_eq!(
            names(payments),
            Some(vec!["/p/acme/payments/a".into(), "/p/acme/payments/b".into()]),
            "only what is under the path, not a sibling sharing its prefix"
        );
        let prod = walks.under("ssm", "/p/acme", "/p/acme/prod/payments", long_ago(), walk).await;
        assert_eq!(names(prod), Some(vec!["/p/acme/prod/payments/a".into()]));
        let empty = walks.under("ssm", "/p/acme", "/p/acme/checkout", long_ago(), walk).await;
        assert_eq!(names(empty), Some(vec![]), "an empty path reads as empty");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one walk for the tenant");
        assert_eq!(walks.under("ssm", "/p/acme", "/p/acme/payments", long_ago(), walk).await, None, "served once");
        assert_eq!(walks.close(), (1, 3));
    }

    #[tokio::test]
    async fn concurrent_first_applies_share_one_walk() {
        let walks = TenantWalks::default();
        let calls = AtomicUsize::new(0);
        let walk = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            Ok(tenant())
        };
        let (a, b) = tokio::join!(
            walks.under("ssm", "/p/acme", "/p/acme/payments", long_ago(), walk),
            walks.under("ssm", "/p/acme", "/p/acme/web", long_ago(), walk),
        );
        assert!(a.is_some() && b.is_some());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_change_reported_during_or_after_the_walk_makes_its_path_read_on_its_own() {
        let walks = TenantWalks::default();
        let reported = || async {
            // The event arrives while the walk is under way.
            walks.changed("/p/acme/payments/c");
            Ok(tenant())
        };
        let during = walks.under("ssm", "/p/acme", "/p/acme/payments", long_ago(), reported).await;
        assert_eq!(during, None, "reported while walking");
        walks.changed("/p/acme/prod/payments/z");
        let after = walks.under("ssm", "/p/acme", "/p/acme/prod/payments", long_ago(), || async { Ok(tenant()) }).await;
        assert_eq!(after, None, "reported after the walk");
        walks.changed("/p/other/web/x");
        let elsewhere = walks.under("ssm", "/p/acme", "/p/acme/web", long_ago(), || async { Ok(tenant()) }).await;
        assert!(elsewhere.is_some(), "a change in another tenant does not matter");
    }

    #[tokio::test]
    async fn objects_created_around_or_after_the_walk_read_on_their_own() {
        let walks = TenantWalks::default();
        let walk = || async { Ok(tenant()) };
        assert!(walks.under("ssm", "/p/acme", "/p/acme/web", long_ago(), walk).await.is_some());
        let just_now = Some(Timestamp::now());
        assert_eq!(walks.under("ssm", "/p/acme", "/p/acme/payments", just_now, walk).await, None);
        assert_eq!(walks.under("ssm", "/p/acme", "/p/acme/payments", None, walk).await, None, "unknown creation");
    }

    #[tokio::test]
    async fn a_failed_walk_is_not_retried_and_a_closed_pass_walks_nothing() {
        let walks = TenantWalks::default();
        let calls = AtomicUsize::new(0);
        let failing = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(StoreError::Unsupported { backend: "ParameterStore", what: "test" })
        };
        assert_eq!(walks.under("ssm", "/p/acme", "/p/acme/payments", long_ago(), failing).await, None);
        assert_eq!(walks.under("ssm", "/p/acme", "/p/acme/web", long_ago(), failing).await, None);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "everyone reads on their own after one failure");
        walks.close();
        let walk = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(tenant())
        };
        assert_eq!(walks.under("ssm", "/p/globex", "/p/globex/web", long_ago(), walk).await, None);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "no walk after the start-up pass");
    }
}
