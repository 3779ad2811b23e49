//! Client-side rate limits per AWS API family (DESIGN.md §7), shared by every
//! backend in the process: AWS's own limits are per account and region, so N
//! stores must not each get the full budget. Families are named by the
//! backend that declares them ([`super::registry`]); the limits know none.
//!
//! A family's tokens are served fairly across tenants (DESIGN.md §12): while
//! calls wait, the next token goes to the next tenant in turn (round robin, one
//! call each), not to whichever waiter wakes first — a tenant with 64 writes
//! queued no longer makes another tenant's one write wait for all of them. A
//! tenant alone gets every token. The tenant is the one the running reconcile
//! serves ([`on_behalf_of`]); calls made for no tenant in particular (the
//! resync's walks, the event queue) take their turn as one more tenant.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    num::NonZeroU32,
    sync::{Arc, Mutex},
};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::oneshot;

tokio::task_local! {
    /// The tenant the AWS calls of the current task are made for.
    static TENANT: Arc<str>;
}

/// Runs `work` with its AWS calls counted as `tenant`'s in the fair share of
/// every rate-limited family.
pub async fn on_behalf_of<F: std::future::Future>(tenant: &str, work: F) -> F::Output {
    TENANT.scope(Arc::from(tenant), work).await
}

fn current_tenant() -> Arc<str> {
    TENANT.try_with(Arc::clone).unwrap_or_else(|_| Arc::from(""))
}

/// A family of API calls that share one client-side budget, as a backend
/// declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateFamily {
    /// `--rate-limit NAME=N` sets it.
    pub name: &'static str,
    /// AWS's own default per second; `None`: unlimited by default.
    pub default_per_second: Option<u32>,
    /// The operations it counts, for the help text and README.
    pub counts: &'static str,
}

/// Calls per second by family name; a family without a limit is unlimited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits(BTreeMap<String, NonZeroU32>);

impl Default for RateLimits {
    /// Every registered family at its default.
    fn default() -> Self {
        let defaults = super::registry::rate_families()
            .filter_map(|f| Some((f.name.to_string(), NonZeroU32::new(f.default_per_second?)?)));
        RateLimits(defaults.collect())
    }
}

impl RateLimits {
    /// No limit on any family.
    pub fn unlimited() -> Self {
        RateLimits(BTreeMap::new())
    }

    /// Sets `family` to `per_second` (0: unlimited).
    pub fn with(mut self, family: &str, per_second: u32) -> Self {
        match NonZeroU32::new(per_second) {
            Some(rate) => self.0.insert(family.to_string(), rate),
            None => self.0.remove(family),
        };
        self
    }

    pub fn get(&self, family: &str) -> Option<NonZeroU32> {
        self.0.get(family).copied()
    }
}

/// One fairly served token bucket per limited family (burst = one second's worth).
pub struct Limiters(BTreeMap<String, FairBucket>);

impl Limiters {
    pub fn new(limits: &RateLimits) -> Self {
        Limiters(limits.0.iter().map(|(family, rate)| (family.clone(), FairBucket::new(*rate))).collect())
    }

    /// Waits for a token of `family`'s limit, in the current tenant's turn;
    /// false when the family has no limit.
    pub async fn acquire(&self, family: &str) -> bool {
        match self.0.get(family) {
            Some(bucket) => {
                bucket.acquire(current_tenant()).await;
                true
            }
            None => false,
        }
    }
}

impl Limiters {
    /// Calls waiting for a token, by tenant ("" for calls made for none),
    /// summed over the families.
    pub fn waiting_by_tenant(&self) -> HashMap<String, usize> {
        let mut waiting = HashMap::new();
        for bucket in self.0.values() {
            let queues = bucket.waiting.lock().expect("rate limit queue lock");
            for (tenant, queue) in &queues.by_tenant {
                *waiting.entry(tenant.to_string()).or_default() += queue.len();
            }
        }
        waiting
    }
}

/// A token bucket whose waiting callers are served round robin by tenant
/// (also the config service's TokenReview budget, by namespace).
pub(crate) struct FairBucket {
    limiter: Arc<DefaultDirectRateLimiter>,
    waiting: Arc<Mutex<Waiting>>,
}

/// The callers waiting for a token, by tenant, and whose turn is next.
#[derive(Default)]
struct Waiting {
    by_tenant: HashMap<Arc<str>, VecDeque<oneshot::Sender<()>>>,
    /// Tenants with waiting callers, the next one to serve first.
    turns: VecDeque<Arc<str>>,
    /// Whether a task is handing out tokens (one at a time, while anyone waits).
    dispatching: bool,
}

impl Waiting {
    fn enqueue(&mut self, tenant: Arc<str>, waiter: oneshot::Sender<()>) {
        let queue = self.by_tenant.entry(tenant.clone()).or_default();
        if queue.is_empty() {
            self.turns.push_back(tenant);
        }
        queue.push_back(waiter);
    }

    /// Hands one token to the first caller still waiting of the tenant whose
    /// turn it is; that tenant goes to the back of the line.
    fn serve_next(&mut self) {
        while let Some(tenant) = self.turns.pop_front() {
            let queue = self.by_tenant.get_mut(&tenant).expect("a tenant in line has a queue");
            let mut served = false;
            while let Some(waiter) = queue.pop_front() {
                // A waiter that gave up (its reconcile was dropped) is skipped.
                if waiter.send(()).is_ok() {
                    served = true;
                    break;
                }
            }
            if queue.is_empty() {
                self.by_tenant.remove(&tenant);
            } else {
                self.turns.push_back(tenant);
            }
            if served {
                return;
            }
        }
    }
}

impl FairBucket {
    pub(crate) fn new(rate: NonZeroU32) -> Self {
        FairBucket { limiter: Arc::new(RateLimiter::direct(Quota::per_second(rate))), waiting: Arc::default() }
    }

    pub(crate) async fn acquire(&self, tenant: Arc<str>) {
        let (waiter, turn) = oneshot::channel();
        {
            let mut waiting = self.waiting.lock().expect("rate limit queue lock");
            // Nobody waiting and a token free: no queue, no task.
            if waiting.turns.is_empty() && self.limiter.check().is_ok() {
                return;
            }
            waiting.enqueue(tenant, waiter);
            if !waiting.dispatching {
                waiting.dispatching = true;
                tokio::spawn(dispatch(self.limiter.clone(), self.waiting.clone()));
            }
        }
        // Waiting for a token needs no reconcile slot: lent meanwhile. An Err
        // means the dispatching task died (its runtime shut down): the caller
        // goes ahead rather than waiting for ever.
        let _ = crate::work_permits::while_waiting(turn).await;
    }
}

/// Hands out tokens as the bucket refills, one per waiting caller in the
/// tenants' turn, until nobody waits.
async fn dispatch(limiter: Arc<DefaultDirectRateLimiter>, waiting: Arc<Mutex<Waiting>>) {
    // Cleared however this task ends, so that the next caller starts another.
    struct Dispatching(Arc<Mutex<Waiting>>);
    impl Drop for Dispatching {
        fn drop(&mut self) {
            if let Ok(mut waiting) = self.0.lock() {
                waiting.dispatching = false;
            }
        }
    }
    let _dispatching = Dispatching(waiting.clone());
    loop {
        limiter.until_ready().await;
        let mut waiting = waiting.lock().expect("rate limit queue lock");
        waiting.serve_next();
        if waiting.turns.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One tenant queues 30 calls, another then one: the other's call is
    /// served within the next two tokens, not after the 30.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tenant_with_a_backlog_does_not_make_another_wait_for_all_of_it() {
        let limits = RateLimits::unlimited().with("ssm-write", 20);
        let limiters = Arc::new(Limiters::new(&limits));
        let order = Arc::new(Mutex::new(Vec::new()));
        let call = |tenant: &'static str, limiters: Arc<Limiters>, order: Arc<Mutex<Vec<&'static str>>>| async move {
            on_behalf_of(tenant, async { limiters.acquire("ssm-write").await }).await;
            order.lock().unwrap().push(tenant);
        };
        let mut calls = Vec::new();
        // The burst (one second's worth) goes at once; 30 more wait.
        for _ in 0..50 {
            calls.push(tokio::spawn(call("noisy", limiters.clone(), order.clone())));
        }
        while order.lock().unwrap().len() < 20 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let queued_before = order.lock().unwrap().len();
        calls.push(tokio::spawn(call("quiet", limiters.clone(), order.clone())));
        for c in calls {
            c.await.unwrap();
        }
        assert!(limiters.waiting_by_tenant().is_empty(), "nobody left waiting");
        let order = order.lock().unwrap();
        let quiet = order.iter().position(|t| *t == "quiet").unwrap();
        assert!(quiet <= queued_before + 2, "served {quiet}th, {queued_before} before it asked: {order:?}");
        assert_eq!(order.len(), 51);
        assert!(!limiters.0["ssm-write"].waiting.lock().unwrap().dispatching, "the dispatcher stops when idle");
    }

    #[tokio::test]
    async fn untenanted_calls_and_unlimited_families_pass() {
        let limiters = Limiters::new(&RateLimits::unlimited().with("ssm-read", 5));
        assert!(!limiters.acquire("dynamodb").await, "no limit, nothing to wait for");
        for _ in 0..7 {
            assert!(limiters.acquire("ssm-read").await);
        }
    }

    #[test]
    fn defaults_come_from_the_backends_and_zero_lifts_a_limit() {
        let limits = RateLimits::default();
        assert_eq!(limits.get("ssm-write"), NonZeroU32::new(3), "AWS's PutParameter default");
        assert_eq!(limits.get("ssm-read"), NonZeroU32::new(40));
        assert_eq!(limits.get("dynamodb"), None, "on-demand tables scale: unlimited");
        let changed = limits.with("ssm-write", 0).with("dynamodb", 100);
        assert_eq!((changed.get("ssm-write"), changed.get("dynamodb")), (None, NonZeroU32::new(100)));
    }
}
