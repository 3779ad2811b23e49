//! Reliability and security: the controller binary attacked the way production
//! will — SIGKILL at random moments, throttling, store / API server / queue
//! outages, hostile manifests and forged events, run as the chart's RBAC
//! identity — against the real kube-apiserver and moto, with AWS traffic going
//! through the fault proxy.
//!
//! Every scenario ends with a convergence check: each TenantConfig Ready for
//! its current generation; the table, the parameter paths and the ConfigMaps
//! hold exactly what the specs (and the out-of-band writes) say — no
//! orphaned item or parameter, no managed key lost.
//!
//! Knobs (README "Reliability"): `TCC_RELIABILITY_SEED` replays the random kill
//! moments; `TCC_OUTAGE_SECS` (default 60) sets the outage length;
//! `TCC_SOAK=1` multiplies the objects and kills by 4.
//!
//! A controller sees the whole cluster, so these tests take turns.

mod support;

use support::fixtures::{self, Rng};

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_ssm::types::ParameterType;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::{
    fault_proxy::{Fault, FaultProxy, Times},
    process::{Process, client_from, kubeconfig_as_service_account},
    repo_root,
};
use tenant_config_controller::api::{ConfigStore, TenantConfig};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const DDB: &str = "DynamoDB_20120810.*";
const SSM: &str = "AmazonSSM.*";
const SQS: &str = "AmazonSQS.*";

fn soak() -> usize {
    if std::env::var("TCC_SOAK").is_ok_and(|v| v == "1") { 4 } else { 1 }
}

fn outage() -> Duration {
    Duration::from_secs(std::env::var("TCC_OUTAGE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(60))
}

/// What one TenantConfig should amount to: managed keys per backend, and keys
/// written out of band next to them (kept by the stores, projected too).
#[derive(Clone, Debug, Default, PartialEq)]
struct Expect {
    db: BTreeMap<String, String>,
    ssm: BTreeMap<String, String>,
    foreign_db: BTreeMap<String, String>,
    foreign_ssm: BTreeMap<String, String>,
}

impl Expect {
    fn new(db: &[(&str, &str)], ssm: &[(&str, &str)]) -> Expect {
        let map = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Expect { db: map(db), ssm: map(ssm), ..Default::default() }
    }
    /// A store's layer (other writers' keys included) is projected only while
    /// the object has entries there.
    fn projected(&self) -> BTreeMap<String, String> {
        let mut all = BTreeMap::new();
        if !self.ssm.is_empty() {
            all.extend(self.foreign_ssm.clone());
            all.extend(self.ssm.clone());
        }
        if !self.db.is_empty() {
            all.extend(self.foreign_db.clone());
            all.extend(self.db.clone());
        }
        all
    }
}

/// `(namespace, name)` → what it should amount to. The configType is the name.
type Expected = BTreeMap<(String, String), Expect>;

/// One scenario's world (stores, queue), its tenants and its fault proxy.
struct World {
    world: support::world::World,
    proxy: FaultProxy,
    /// `(namespace, tenant)`
    tenants: Vec<(String, String)>,
}

impl std::ops::Deref for World {
    type Target = support::world::World;
    fn deref(&self) -> &support::world::World {
        &self.world
    }
}

impl std::ops::DerefMut for World {
    fn deref_mut(&mut self) -> &mut support::world::World {
        &mut self.world
    }
}

impl World {
    async fn new(name: &str, tenants: usize) -> World {
        let mut world = support::world::World::with_queue(name, 3, 30).await;
        world.standard_stores().await;
        let mut namespaces = Vec::new();
        for n in 0..tenants {
            let tenant = world.tenant(n);
            namespaces.push((world.namespace(&format!("n{n}"), Some(&tenant)).await, tenant));
        }
        World { world, proxy: FaultProxy::start(&support::env("AWS_ENDPOINT_URL")).await, tenants: namespaces }
    }

    fn ns(&self, n: usize) -> &str {
        &self.tenants[n].0
    }

    fn tenant_of(&self, ns: &str) -> &str {
        &self.tenants.iter().find(|(n, _)| n == ns).expect("a world namespace").1
    }

    /// The controller binary, its AWS traffic through the fault proxy.
    fn controller(&self, name: &str, args: &[&str], with_queue: bool, kubeconfig: Option<&str>) -> Process {
        let mut all: Vec<&str> = Vec::new();
        if !args.contains(&"--leader-election") {
            all.extend(["--leader-election", "false"]);
        }
        if with_queue {
            all.extend(["--event-queue-url", self.queue_url()]);
        }
        all.extend(args);
        let mut env = vec![("AWS_ENDPOINT_URL", self.proxy.url.as_str())];
        if let Some(kubeconfig) = kubeconfig {
            env.push(("KUBECONFIG", kubeconfig));
        }
        Process::spawn(name, &all, &env)
    }

    fn spec(&self, expect: &Expect) -> serde_json::Value {
        let mut entries = Vec::new();
        for (key, value) in &expect.db {
            entries.push(json!({ "key": key, "value": value, "tags": [format!("{}-db", self.id)] }));
        }
        for (key, value) in &expect.ssm {
            entries.push(json!({ "key": key, "value": value, "tags": [format!("{}-ssm", self.id)] }));
        }
        json!({ "entries": entries })
    }

    /// Creates or replaces the object's spec (server-side apply, as kubectl does).
    async fn apply(&self, ns: &str, name: &str, expect: &Expect) {
        let tc = json!({
            "apiVersion": "tenantconfig.io/v1alpha1", "kind": "TenantConfig",
            "metadata": { "name": name, "namespace": ns }, "spec": self.spec(expect)
        });
        Api::<TenantConfig>::namespaced(self.client.clone(), ns)
            .patch(name, &PatchParams::apply("reliability-test").force(), &Patch::Apply(&tc))
            .await
            .unwrap_or_else(|e| panic!("apply {ns}/{name}: {e}"));
    }

    /// Another writer puts `key` into the object's DynamoDB item (creating it
    /// if absent), directly, not through the fault proxy.
    async fn put_foreign_db(&self, ns: &str, name: &str, key: &str, value: &str) {
        let set =
            if self.items().await.contains_key(&(format!("TENANT#{}", self.tenant_of(ns)), format!("CONFIG#{name}"))) {
                "SET #d.#k = :v"
            } else {
                "SET #d = :m"
            };
        let mut request = self
            .ddb
            .update_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(format!("TENANT#{}", self.tenant_of(ns))))
            .key("sk", AttributeValue::S(format!("CONFIG#{name}")))
            .update_expression(set)
            .expression_attribute_names("#d", "data");
        request = if set.contains(":m") {
            let map = std::collections::HashMap::from([(key.to_string(), AttributeValue::S(value.into()))]);
            request.expression_attribute_values(":m", AttributeValue::M(map))
        } else {
            request
                .expression_attribute_names("#k", key)
                .expression_attribute_values(":v", AttributeValue::S(value.into()))
        };
        request.send().await.unwrap_or_else(|e| panic!("foreign write to {ns}/{name}: {e}"));
    }

    /// Another writer puts parameter `key` under the object's path.
    async fn put_foreign_ssm(&self, ns: &str, name: &str, key: &str, value: &str) {
        self.ssm
            .put_parameter()
            .name(format!("{}/{}/_/{name}/{key}", self.prefix, self.tenant_of(ns)))
            .value(value)
            .r#type(ParameterType::String)
            .overwrite(true)
            .send()
            .await
            .unwrap_or_else(|e| panic!("foreign parameter for {ns}/{name}: {e}"));
    }

    async fn items(&self) -> BTreeMap<(String, String), aws_sdk_dynamodb::types::AttributeValue> {
        let mut items = BTreeMap::new();
        let mut pages = self.ddb.scan().table_name(&self.table).consistent_read(true).into_paginator().send();
        while let Some(page) = pages.next().await {
            for item in page.expect("scan").items() {
                let key = |k: &str| item[k].as_s().unwrap().clone();
                items.insert((key("pk"), key("sk")), AttributeValue::M(item.clone()));
            }
        }
        items
    }

    async fn config_maps(&self, ns: &str) -> BTreeMap<String, ConfigMap> {
        fixtures::config_maps(&self.client, ns).await
    }

    /// The first way in which the world differs from `expected`, if any.
    async fn discrepancy(&self, expected: &Expected) -> Option<String> {
        // Every object Ready for its current generation.
        for ns in expected.keys().map(|(ns, _)| ns).collect::<BTreeSet<_>>() {
            let tcs = Api::<TenantConfig>::namespaced(self.client.clone(), ns).list(&ListParams::default()).await;
            let tcs = match tcs {
                Ok(l) => l.items,
                Err(e) => return Some(format!("listing TenantConfigs: {e}")),
            };
            for tc in &tcs {
                let key = (ns.clone(), tc.metadata.name.clone().unwrap());
                if !expected.contains_key(&key) {
                    continue;
                }
                let status = tc.status.clone().unwrap_or_default();
                let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
                if ready.is_none_or(|c| c.status != "True") || status.observed_generation != tc.metadata.generation {
                    return Some(format!("{key:?} not Ready for its generation: {ready:?}"));
                }
            }
            let names: BTreeSet<_> = tcs.iter().filter_map(|tc| tc.metadata.name.clone()).collect();
            if let Some((_, missing)) = expected.keys().find(|(n, name)| n == ns && !names.contains(name)) {
                return Some(format!("{ns}/{missing} does not exist"));
            }
        }
        // The table: exactly the expected items, nothing lost, nothing orphaned.
        let mut items = self.items().await;
        for ((ns, name), expect) in expected {
            let key = (format!("TENANT#{}", self.tenant_of(ns)), format!("CONFIG#{name}"));
            let item = items.remove(&key);
            let Some(AttributeValue::M(item)) = item else {
                if expect.db.is_empty() && expect.foreign_db.is_empty() {
                    continue;
                }
                return Some(format!("no item for {ns}/{name}"));
            };
            let data: BTreeMap<String, String> = item
                .get("data")
                .and_then(|d| d.as_m().ok())
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_s().cloned().unwrap_or_default())).collect())
                .unwrap_or_default();
            let mut want = expect.foreign_db.clone();
            want.extend(expect.db.clone());
            if data != want {
                return Some(format!("item of {ns}/{name}: data {data:?}, expected {want:?}"));
            }
            let managed: BTreeSet<String> =
                item.get("managedKeys").and_then(|m| m.as_ss().ok()).into_iter().flatten().cloned().collect();
            if managed != expect.db.keys().cloned().collect() {
                return Some(format!("item of {ns}/{name}: managedKeys {managed:?}"));
            }
            let owner = item.get("managedBy").and_then(|m| m.as_s().ok()).cloned();
            if !expect.db.is_empty() && owner.as_deref() != Some(&format!("{ns}/{name}")) {
                return Some(format!("item of {ns}/{name}: managedBy {owner:?}"));
            }
            if expect.db.is_empty() && owner.is_some() {
                return Some(format!("item of {ns}/{name} still claimed by {owner:?} with no managed key"));
            }
        }
        if let Some(orphan) = items.keys().next() {
            return Some(format!("orphaned item {orphan:?}"));
        }
        // The parameters: exactly the expected names and values.
        let mut want = BTreeMap::new();
        for ((ns, name), expect) in expected {
            let base = format!("{}/{}/_/{name}", self.prefix, self.tenant_of(ns));
            for (k, v) in expect.foreign_ssm.iter().chain(&expect.ssm) {
                want.insert(format!("{base}/{k}"), v.clone());
            }
        }
        let params = self.parameters(&self.prefix).await;
        if params != want {
            let extra: Vec<_> = params.iter().filter(|(k, v)| want.get(*k) != Some(v)).take(3).collect();
            let lost: Vec<_> = want.iter().filter(|(k, v)| params.get(*k) != Some(v)).take(3).collect();
            return Some(format!("parameters differ: unexpected {extra:?}, missing {lost:?}"));
        }
        // The ConfigMaps: exactly what the stores hold.
        for ns in expected.keys().map(|(ns, _)| ns).collect::<BTreeSet<_>>() {
            let mut cms = self.config_maps(ns).await;
            for ((_, name), expect) in expected.iter().filter(|((n, _), _)| n == ns) {
                let data = cms.remove(name).and_then(|cm| cm.data).unwrap_or_default();
                if data != expect.projected() {
                    return Some(format!("ConfigMap {ns}/{name}: {data:?}, expected {:?}", expect.projected()));
                }
            }
            let ours = |cm: &ConfigMap| {
                cm.metadata.labels.as_ref().and_then(|l| l.get("app.kubernetes.io/managed-by")).map(String::as_str)
                    == Some("tenant-config-controller")
            };
            if let Some(orphan) = cms.values().find(|cm| ours(cm)) {
                return Some(format!("orphaned ConfigMap {ns}/{:?}", orphan.metadata.name));
            }
        }
        None
    }

    /// Waits until the world equals `expected`; fails with the last difference.
    async fn converge(&self, expected: &Expected, within: Duration) -> Duration {
        let started = Instant::now();
        let mut last = None;
        while started.elapsed() < within {
            last = self.discrepancy(expected).await;
            if last.is_none() {
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("not converged within {within:?}: {}", last.unwrap_or_default());
    }

    /// Deletes every TenantConfig with a controller running, then proves the
    /// stores hold nothing of them (keys other writers put there stay); removes
    /// the stores.
    async fn finish(self, kubeconfig: Option<&str>, expected: &Expected) {
        self.proxy.clear();
        let mut cleaner = self.controller("cleanup", &["--ssm-write-rate", "0"], false, kubeconfig);
        // Deleting hundreds of objects takes minutes in the debug build on moto.
        delete_all(&self, Duration::from_secs(300)).await;
        let mut foreign_items = BTreeMap::new();
        let mut foreign_params = BTreeMap::new();
        for ((ns, name), e) in expected {
            let key = (format!("TENANT#{}", self.tenant_of(ns)), format!("CONFIG#{name}"));
            foreign_items.insert(key, e.foreign_db.clone());
            for (k, v) in &e.foreign_ssm {
                foreign_params.insert(format!("{}/{}/_/{name}/{k}", self.prefix, self.tenant_of(ns)), v.clone());
            }
        }
        for (key, item) in self.items().await {
            let item = item.as_m().unwrap();
            let data: BTreeMap<String, String> = item
                .get("data")
                .and_then(|d| d.as_m().ok())
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_s().cloned().unwrap_or_default())).collect())
                .unwrap_or_default();
            let claimed = item.contains_key("managedKeys") || item.contains_key("managedBy");
            let foreign = foreign_items.get(&key).cloned().unwrap_or_default();
            assert!(!claimed && data == foreign, "item {key:?} after deleting every object: {item:?}");
        }
        let params = self.parameters(&self.prefix).await;
        assert_eq!(params, foreign_params, "only other writers' parameters remain after deleting every object");
        for suffix in ["db", "ssm"] {
            let _ = Api::<ConfigStore>::all(self.client.clone())
                .delete(&format!("{}-{suffix}", self.id), &DeleteParams::default())
                .await;
        }
        cleaner.signal("TERM");
        assert!(cleaner.wait_exit(Duration::from_secs(30)).success(), "cleanup controller: {}", cleaner.logs());
    }
}

/// `(status, reason)` of the Ready condition.
fn reason_of(tc: &TenantConfig) -> Option<(String, String)> {
    let c = tc.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone()))
}

/// Store calls of one operation the controller reported (all outcomes).
fn calls(p: &Process, operation: &str) -> f64 {
    p.metric_sum("tenant_config_store_calls_total", &[&format!("operation=\"{operation}\"")])
}

const WRITES: [&str; 5] = ["UpdateItem", "DeleteItem", "PutParameter", "DeleteParameters", "AddTagsToResource"];

// ------------------------------------------------------------------ faults --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing() {
    let _turn = SERIAL.lock().await;
    let w = World::new("rel-kill", 5).await;
    let (objects, kills) = (500 * soak(), 10 * soak());
    let mut expected = Expected::new();
    for i in 0..objects {
        let e = Expect::new(&[("a", &format!("a{i}")), ("b", &format!("b{i}"))], &[("c", &format!("c{i}"))]);
        let ns = w.ns(i % 5).to_string();
        w.apply(&ns, &format!("c{i}"), &e).await;
        expected.insert((ns, format!("c{i}")), e);
    }
    let mut rng = Rng::seeded_from_env("TCC_RELIABILITY_SEED");
    // moto does not throttle; the SSM write limit is lifted so that the run is
    // about kills, not about waiting for 3 PutParameter/s.
    let args = ["--ssm-write-rate", "0"];
    let mut controller = w.controller("rel-kill-0", &args, true, None);
    let mut ready_at_kill = Vec::new();
    for k in 1..=kills {
        tokio::time::sleep(Duration::from_millis(300 + rng.below(2700))).await;
        controller.signal("KILL");
        controller.wait_exit(Duration::from_secs(10));
        let mut ready = 0;
        for n in 0..5 {
            ready += w.ready_count(w.ns(n)).await;
        }
        ready_at_kill.push(ready);
        if k == kills / 2 {
            // Half-way, a fifth of the objects change shape: a key moves out,
            // one comes in, the SSM key leaves (its parameter must go).
            for (i, ((ns, name), e)) in expected.iter_mut().enumerate().filter(|(i, _)| i % 5 == 0) {
                *e = Expect::new(&[("a", &format!("a{i}-v2")), ("d", &format!("d{i}"))], &[]);
                w.apply(ns, name, e).await;
            }
        }
        controller = w.controller(&format!("rel-kill-{k}"), &args, true, None);
    }
    eprintln!("Ready objects at each of the {kills} kills: {ready_at_kill:?}");
    assert!(ready_at_kill[0] < objects, "the first kill must land mid-convergence: {ready_at_kill:?}");
    let took = w.converge(&expected, Duration::from_secs(300)).await;
    eprintln!("converged {took:?} after the last restart");
    assert!(controller.child.try_wait().unwrap().is_none(), "the last controller still runs");
    controller.signal("TERM");
    controller.wait_exit(Duration::from_secs(30));
    w.finish(None, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_percent_throttling_converges_with_bounded_retries() {
    let _turn = SERIAL.lock().await;
    let w = World::new("rel-throttle", 2).await;
    let objects = 40 * soak();
    // Two SDK attempts per call instead of four, so that throttles surface as
    // conditions often enough to be seen (4 attempts hide 99% of them).
    let mut controller =
        w.controller("rel-throttle", &["--ssm-write-rate", "0", "--aws-max-attempts", "2"], true, None);
    let mut expected = Expected::new();
    let shape = |i: usize| Expect::new(&[("a", &format!("a{i}")), ("b", &format!("b{i}"))], &[("c", &format!("c{i}"))]);

    // Baseline: the same work without faults.
    for i in 0..objects {
        w.apply(w.ns(0), &format!("c{i}"), &shape(i)).await;
        expected.insert((w.ns(0).to_string(), format!("c{i}")), shape(i));
    }
    w.converge(&expected, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // echo events of our own writes
    let clean = w.proxy.seen(DDB) + w.proxy.seen(SSM);

    w.proxy.inject(DDB, Fault::Throttle, Times::Probability(0.3));
    w.proxy.inject(SSM, Fault::Throttle, Times::Probability(0.3));
    let (watcher, seen_reasons) = watch_reasons(&w, w.ns(1));
    for i in 0..objects {
        w.apply(w.ns(1), &format!("c{i}"), &shape(i)).await;
        expected.insert((w.ns(1).to_string(), format!("c{i}")), shape(i));
    }
    let took = w.converge(&expected, Duration::from_secs(240)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    watcher.abort();
    let throttled_run = w.proxy.seen(DDB) + w.proxy.seen(SSM) - clean;
    let throttled_calls = controller.metric_sum("tenant_config_store_calls_total", &["outcome=\"throttled\""]);
    let reasons = seen_reasons.lock().unwrap().clone();
    eprintln!(
        "{objects} objects: clean {clean} store requests; at 30% throttling {throttled_run} requests \
         ({} faults injected), converged in {took:?}; reasons seen: {reasons:?}",
        w.proxy.injected()
    );
    assert!(reasons.contains("Throttled"), "conditions showed Throttled while it lasted: {reasons:?}");
    assert!(throttled_calls > 0.0, "store_calls_total counts throttles");
    // 30% failures cost 1/0.7 ≈ 1.43 attempts per call plus backed-off
    // re-reconciles; more than 3× the clean run would mean retries run away.
    assert!(throttled_run <= 3 * clean, "retries bounded: {throttled_run} requests under throttling vs {clean} clean");
    w.proxy.clear();
    controller.signal("TERM");
    controller.wait_exit(Duration::from_secs(30));
    w.finish(None, &expected).await;
}

/// Every `Ready` reason the objects of `ns` show while the returned task runs.
fn watch_reasons(w: &World, ns: &str) -> (tokio::task::JoinHandle<()>, Arc<Mutex<BTreeSet<String>>>) {
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let (client, ns, into) = (w.client.clone(), ns.to_string(), seen.clone());
    let task = tokio::spawn(async move {
        let api = Api::<TenantConfig>::namespaced(client, &ns);
        loop {
            if let Ok(list) = api.list(&ListParams::default()).await {
                into.lock().unwrap().extend(list.items.iter().filter_map(reason_of).map(|(_, r)| r));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (task, seen)
}

/// Deletes every TenantConfig of the world and waits until they are gone.
async fn delete_all(w: &World, within: Duration) {
    for (ns, _) in &w.tenants {
        let api = Api::<TenantConfig>::namespaced(w.client.clone(), ns);
        api.delete_collection(&DeleteParams::default(), &ListParams::default()).await.unwrap();
    }
    for (ns, _) in &w.tenants {
        let api = Api::<TenantConfig>::namespaced(w.client.clone(), ns);
        support::eventually_within(within, &format!("TenantConfigs in {ns} deleted"), || async {
            api.list(&ListParams::default()).await.ok()?.items.is_empty().then_some(())
        })
        .await;
    }
}

/// AWS applied the write, then its answer was lost (an HTTP 500 after the
/// write, or the connection dropped after it) — on 30% of every store write
/// and of the queue's acknowledgements, while 100 objects are created, change
/// shape and are deleted. A retried conditional write meets its own first
/// attempt and must recognise it, never report a Conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_percent_of_answers_lost_after_the_write_loses_nothing() {
    let _turn = SERIAL.lock().await;
    let w = World::new("rel-lost", 2).await;
    let objects = 100 * soak();
    // Two SDK attempts: lost answers reach the reconciler often, and the SDK's
    // own retries meet writes that already happened.
    let mut controller = w.controller("rel-lost", &["--ssm-write-rate", "0", "--aws-max-attempts", "2"], true, None);
    let lossy: Vec<&str> = WRITES.iter().copied().chain(["DeleteMessageBatch", "ChangeMessageVisibility"]).collect();
    for op in &lossy {
        w.proxy.inject(op, Fault::AppliedThenServerError, Times::Probability(0.15));
        w.proxy.inject(op, Fault::AppliedThenDropped, Times::Probability(0.15 / 0.85));
    }
    let (watcher_0, reasons_0) = watch_reasons(&w, w.ns(0));
    let (watcher_1, reasons_1) = watch_reasons(&w, w.ns(1));
    let index = |name: &str| name.trim_start_matches('c').parse::<usize>().unwrap();
    let mut expected = Expected::new();
    for i in 0..objects {
        let (ns, name) = (w.ns(i % 2).to_string(), format!("c{i}"));
        let mut e = Expect::new(&[("a", &format!("a{i}")), ("b", &format!("b{i}"))], &[("c", &format!("c{i}"))]);
        if i % 4 == 0 {
            // Other writers were there first; their keys must survive all of it.
            w.put_foreign_db(&ns, &name, "x", &format!("x{i}")).await;
            w.put_foreign_ssm(&ns, &name, "y", &format!("y{i}")).await;
            e.foreign_db.insert("x".into(), format!("x{i}"));
            e.foreign_ssm.insert("y".into(), format!("y{i}"));
        }
        w.apply(&ns, &name, &e).await;
        expected.insert((ns, name), e);
    }
    let created = w.converge(&expected, Duration::from_secs(300)).await;

    // Every object changes shape: b leaves, d arrives, a moves to Parameter
    // Store; every fifth moves all its DynamoDB keys away (its claim on the
    // item must go, and the item with it unless another writer's key is there).
    for ((ns, name), e) in expected.iter_mut() {
        let i = index(name);
        let (db, ssm) = (format!("d{i}"), (format!("c{i}"), format!("a{i}-v2")));
        let mut changed = if i % 5 == 0 {
            Expect::new(&[], &[("a", &ssm.1), ("c", &ssm.0), ("d", &db)])
        } else {
            Expect::new(&[("d", &db)], &[("a", &ssm.1), ("c", &ssm.0)])
        };
        changed.foreign_db = e.foreign_db.clone();
        changed.foreign_ssm = e.foreign_ssm.clone();
        *e = changed;
        w.apply(ns, name, e).await;
    }
    let changed = w.converge(&expected, Duration::from_secs(300)).await;

    // Out-of-band changes still arrive by event while acknowledgements are lost.
    for i in (1..objects).step_by(10) {
        let (ns, name) = (w.ns(i % 2).to_string(), format!("c{i}"));
        w.put_foreign_ssm(&ns, &name, "z", &format!("z{i}")).await;
        expected.get_mut(&(ns, name)).unwrap().foreign_ssm.insert("z".into(), format!("z{i}"));
    }
    let by_event = w.converge(&expected, Duration::from_secs(120)).await;

    let deleting = Instant::now();
    delete_all(&w, Duration::from_secs(300)).await;
    let deleted = deleting.elapsed();
    watcher_0.abort();
    watcher_1.abort();
    let reasons: BTreeSet<String> = reasons_0.lock().unwrap().union(&reasons_1.lock().unwrap()).cloned().collect();
    let faults: Vec<String> = lossy.iter().map(|op| format!("{op} {}", w.proxy.seen(op))).collect();
    eprintln!(
        "{objects} objects with 30% of write answers lost: created in {created:?}, changed in {changed:?}, \
         out-of-band changes by event in {by_event:?}, deleted in {deleted:?}; {} faults injected over requests \
         [{}]; reasons seen: {reasons:?}",
        w.proxy.injected(),
        faults.join(", ")
    );
    assert!(!reasons.contains("Conflict"), "a retried write of our own is never a Conflict: {reasons:?}");
    assert!(controller.child.try_wait().unwrap().is_none(), "no crash: {}", controller.logs());
    controller.signal("TERM");
    controller.wait_exit(Duration::from_secs(30));
    // Everything was deleted under faults; `finish` proves the stores hold
    // nothing of the objects and every other writer's key.
    w.finish(None, &expected).await;
}

/// A scripted interleaving: the first write is applied but its answer lost,
/// the spec then moves the key to the other store, and the sweep of the first
/// store fails too. The failed reconcile's status already carries the new
/// generation; its retry must still sweep (it once trusted the status and left
/// the item behind for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_interrupted_by_a_failure_is_retried() {
    let _turn = SERIAL.lock().await;
    let w = World::new("rel-sweep", 1).await;
    let ns = w.ns(0).to_string();
    let tcs = Api::<TenantConfig>::namespaced(w.client.clone(), &ns);
    let mut controller = w.controller("rel-sweep", &["--ssm-write-rate", "0", "--aws-max-attempts", "1"], false, None);
    // Generation 1 routes `a` to DynamoDB: the first write lands, its answer is
    // lost, and from then on every read fails (throttled as soon as the item is
    // there; the retry comes at least a second later), so the object cannot
    // learn that it succeeded.
    w.proxy.inject("UpdateItem", Fault::AppliedThenServerError, Times::Next(1));
    w.apply(&ns, "moved", &Expect::new(&[("a", "1")], &[])).await;
    support::eventually("the first write applied", || async { (w.items().await.len() == 1).then_some(()) }).await;
    w.proxy.inject("GetItem", Fault::Throttle, Times::Always);
    support::eventually("the lost answer failed generation 1", || async {
        let tc = tcs.get("moved").await.ok()?;
        (tc.status.as_ref()?.observed_generation == Some(1) && reason_of(&tc)?.0 == "False").then_some(())
    })
    .await;
    // Generation 2 moves `a` to Parameter Store; the sweep of DynamoDB fails.
    let moved = Expect::new(&[], &[("a", "1")]);
    w.apply(&ns, "moved", &moved).await;
    support::eventually("a failed reconcile of generation 2", || async {
        let tc = tcs.get("moved").await.ok()?;
        let status = tc.status.as_ref()?;
        (status.observed_generation == Some(2) && reason_of(&tc)?.0 == "False").then_some(())
    })
    .await;
    w.proxy.clear();
    let expected = Expected::from([((ns.clone(), "moved".to_string()), moved)]);
    let took = w.converge(&expected, Duration::from_secs(60)).await;
    eprintln!("the interrupted sweep was retried; converged {took:?} after the store recovered");
    controller.signal("TERM");
    controller.wait_exit(Duration::from_secs(30));
    w.finish(None, &expected).await;
}

/// Deletion while a first reconcile is still retrying, while its writes are
/// in flight, after writes whose answers were lost, and while a store is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_races_leave_nothing_behind_and_never_hang() {
    let _turn = SERIAL.lock().await;
    let w = World::new("rel-delete", 1).await;
    let ns = w.ns(0).to_string();
    let tcs = Api::<TenantConfig>::namespaced(w.client.clone(), &ns);
    let mut controller = w.controller("rel-delete", &["--ssm-write-rate", "0", "--aws-max-attempts", "1"], false, None);
    let shape = |i: usize| Expect::new(&[("a", &format!("a{i}"))], &[("c", &format!("c{i}"))]);
    let stores_empty = || async {
        let (items, params) = (w.items().await, w.parameters(&w.prefix).await);
        assert!(items.is_empty(), "items left behind: {:?}", items.keys().collect::<Vec<_>>());
        assert!(params.is_empty(), "parameters left behind: {params:?}");
    };
    let apply_batch = |prefix: &'static str| {
        let (w, ns) = (&w, ns.clone());
        async move {
            for i in 0..10 {
                w.apply(&ns, &format!("{prefix}{i}"), &shape(i)).await;
            }
        }
    };

    // 1. Deleted before any write reached a store: every write is throttled,
    //    so each first reconcile is still retrying when the deletion comes.
    w.proxy.inject("UpdateItem", Fault::Throttle, Times::Always);
    w.proxy.inject("PutParameter", Fault::Throttle, Times::Always);
    apply_batch("never").await;
    for i in 0..10 {
        support::eventually(&format!("never{i} Throttled"), || async {
            let tc = tcs.get(&format!("never{i}")).await.ok()?;
            (reason_of(&tc)?.1 == "Throttled").then_some(())
        })
        .await;
    }
    let started = Instant::now();
    delete_all(&w, Duration::from_secs(60)).await;
    eprintln!("10 objects deleted mid-retry, writes still throttled, in {:?}", started.elapsed());
    w.proxy.clear();
    stores_empty().await;

    // 2. Deleted while the first writes are in flight on a slow store: they
    //    land after the deletion request.
    w.proxy.inject("UpdateItem", Fault::Slow(Duration::from_secs(3)), Times::Always);
    w.proxy.inject("PutParameter", Fault::Slow(Duration::from_secs(3)), Times::Always);
    let before = w.proxy.seen("UpdateItem");
    apply_batch("slow").await;
    support::eventually("10 writes in flight", || async { (w.proxy.seen("UpdateItem") >= before + 10).then_some(()) })
        .await;
    delete_all(&w, Duration::from_secs(90)).await;
    w.proxy.clear();
    stores_empty().await;

    // 3. Deleted after writes that were applied but answered with an error:
    //    the stores hold the keys, the objects never saw a success.
    w.proxy.inject("UpdateItem", Fault::AppliedThenServerError, Times::Always);
    w.proxy.inject("PutParameter", Fault::AppliedThenDropped, Times::Always);
    apply_batch("lost").await;
    support::eventually("every first write applied", || async { (w.items().await.len() == 10).then_some(()) }).await;
    delete_all(&w, Duration::from_secs(90)).await;
    w.proxy.clear();
    stores_empty().await;

    // 4. A store down during deletion holds the finalizer with a clear
    //    condition, and the deletion finishes when the store returns.
    let mut expected = Expected::new();
    apply_batch("down").await;
    for i in 0..10 {
        expected.insert((ns.clone(), format!("down{i}")), shape(i));
    }
    w.converge(&expected, Duration::from_secs(60)).await;
    w.proxy.inject(DDB, Fault::Unreachable, Times::Always);
    tcs.delete_collection(&DeleteParams::default(), &ListParams::default()).await.unwrap();
    for i in 0..10 {
        support::eventually(&format!("down{i} waits for its store"), || async {
            let tc = tcs.get(&format!("down{i}")).await.ok()?;
            let ready = tc.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready")?.clone();
            (ready.reason == "StoreUnavailable" && ready.message.contains("deletion waits")).then_some(())
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        tcs.list(&ListParams::default()).await.unwrap().items.len(),
        10,
        "finalizers hold while the store is down"
    );
    assert_eq!(w.items().await.len(), 10, "nothing is deleted while the store is unreachable");
    w.proxy.clear();
    delete_all(&w, Duration::from_secs(120)).await;
    stores_empty().await;

    assert!(controller.child.try_wait().unwrap().is_none(), "no crash: {}", controller.logs());
    controller.signal("TERM");
    controller.wait_exit(Duration::from_secs(30));
    w.finish(None, &Expected::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_and_queue_outages_recover_without_a_crash_loop() {
    let _turn = SERIAL.lock().await;
    let w = World::new("rel-outage", 1).await;
    let ns = w.ns(0).to_string();
    let mut expected = Expected::new();
    for i in 0..20 {
        let e = Expect::new(&[("a", &format!("a{i}"))], &[("c", &format!("c{i}"))]);
        w.apply(&ns, &format!("c{i}"), &e).await;
        expected.insert((ns.clone(), format!("c{i}")), e);
    }
    // Resync 10 minutes: whatever arrives within the test arrived by event.
    let mut controller = w.controller("rel-outage", &["--ssm-write-rate", "0"], true, None);
    w.converge(&expected, Duration::from_secs(120)).await;
    let pid = controller.child.id();

    // 1. Both stores unreachable (connections dropped) while specs change.
    let before = w.proxy.seen(DDB) + w.proxy.seen(SSM);
    w.proxy.inject(DDB, Fault::Unreachable, Times::Always);
    w.proxy.inject(SSM, Fault::Unreachable, Times::Always);
    let outage_started = Instant::now();
    let changed: Vec<String> = (0..5).map(|i| format!("c{i}")).collect();
    for name in &changed {
        let e = expected.get_mut(&(ns.clone(), name.clone())).unwrap();
        e.db.insert("a".into(), format!("{name}-during-outage"));
        w.apply(&ns, name, e).await;
    }
    let tcs = Api::<TenantConfig>::namespaced(w.client.clone(), &ns);
    for name in &changed {
        support::eventually(&format!("{name}: StoreUnavailable"), || async {
            let tc = tcs.get(name).await.ok()?;
            (reason_of(&tc)? == ("False".into(), "StoreUnavailable".into())).then_some(())
        })
        .await;
    }
    tokio::time::sleep(outage().saturating_sub(outage_started.elapsed())).await;
    let during = w.proxy.seen(DDB) + w.proxy.seen(SSM) - before;
    assert!(controller.child.try_wait().unwrap().is_none(), "no crash: {}", controller.logs());
    assert_eq!(controller.get("/healthz").map(|r| r.0), Some(200));
    w.proxy.clear();
    let recovered = w.converge(&expected, Duration::from_secs(240)).await;
    eprintln!(
        "store outage {:?}: {during} store requests for {} changed objects while unreachable; \
         converged {recovered:?} after it ended",
        outage(),
        changed.len()
    );
    // Backoff (1 s doubling, SDK retries inside) keeps an outage cheap: a
    // retry loop without backoff makes thousands of requests a minute.
    assert!(during < 600, "{during} requests during the outage");

    // 2. The queue unreachable while stores change out of band: picked up after.
    let polls = w.proxy.seen(SQS);
    w.proxy.inject(SQS, Fault::Unreachable, Times::Always);
    let outage_started = Instant::now();
    // A long poll already forwarded still completes; the outage is on once the next one fails.
    support::eventually("the next receive fails", || async { (w.proxy.seen(SQS) > polls).then_some(()) }).await;
    for i in 5..8 {
        let (name, value) = (format!("c{i}"), format!("oob-{i}"));
        w.put_foreign_db(&ns, &name, "oob", &value).await;
        expected.get_mut(&(ns.clone(), name)).unwrap().foreign_db.insert("oob".into(), value);
    }
    for i in 8..10 {
        let (name, value) = (format!("c{i}"), format!("oob-{i}"));
        w.put_foreign_ssm(&ns, &name, "oob", &value).await;
        expected.get_mut(&(ns.clone(), name)).unwrap().foreign_ssm.insert("oob".into(), value);
    }
    tokio::time::sleep(outage().saturating_sub(outage_started.elapsed())).await;
    let cms = w.config_maps(&ns).await;
    let arrived =
        (5..10).filter(|i| cms[&format!("c{i}")].data.as_ref().is_some_and(|d| d.contains_key("oob"))).count();
    assert_eq!(arrived, 0, "nothing arrives while the queue is unreachable (resync is 10 minutes)");
    assert!(controller.child.try_wait().unwrap().is_none(), "no crash: {}", controller.logs());
    w.proxy.clear();
    let recovered = w.converge(&expected, Duration::from_secs(120)).await;
    eprintln!("queue outage {:?}: the 5 out-of-band changes arrived {recovered:?} after it ended", outage());
    assert_eq!(controller.child.id(), pid, "one process throughout");

    // 3. Events lost altogether (no queue at all): the resync covers the gap.
    controller.signal("TERM");
    controller.wait_exit(Duration::from_secs(30));
    let controller = w.controller("rel-resync", &["--resync-interval", "15s"], false, None);
    w.converge(&expected, Duration::from_secs(60)).await;
    let resynced = |result: &str| {
        controller.metric(&format!("tenant_config_resync_objects_total{{result=\"{result}\"}}")).unwrap_or(0.0)
    };
    // The cluster holds other tests' objects too (some never Ready, so stale at
    // every resync): count what one resync with nothing changed finds stale.
    let next_resync = || async {
        let seen = resynced("stale") + resynced("current");
        support::eventually("the next resync", || async {
            (resynced("stale") + resynced("current") > seen).then_some(())
        })
        .await;
        // Both counters of that resync are in (the next is 15 s away).
        tokio::time::sleep(Duration::from_secs(1)).await;
        resynced("stale")
    };
    let settled = next_resync().await;
    let stale = next_resync().await;
    let quiet_stale = stale - settled;
    // Right after a resync: both changes are in place before the next one.
    w.put_foreign_db(&ns, "c10", "lost", "by-resync").await;
    w.put_foreign_ssm(&ns, "c11", "lost", "by-resync").await;
    expected.get_mut(&(ns.clone(), "c10".into())).unwrap().foreign_db.insert("lost".into(), "by-resync".into());
    expected.get_mut(&(ns.clone(), "c11".into())).unwrap().foreign_ssm.insert("lost".into(), "by-resync".into());
    let found = next_resync().await - stale;
    let took = w.converge(&expected, Duration::from_secs(60)).await;
    eprintln!("without any event, the bulk resync (15 s) brought both changes in {took:?}");
    assert_eq!(found - quiet_stale, 2.0, "the resync reconciled the two objects whose stores changed, not all twenty");
    drop(controller);
    w.finish(None, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_and_etcd_restart_mid_run() {
    let _turn = SERIAL.lock().await;
    let w = World::new("rel-apiserver", 2).await;
    let mut expected = Expected::new();
    let shape = |i: usize, v: &str| Expect::new(&[("a", &format!("a{i}{v}"))], &[("c", &format!("c{i}"))]);
    for i in 0..40 {
        w.apply(w.ns(i % 2), &format!("c{i}"), &shape(i, "")).await;
        expected.insert((w.ns(i % 2).to_string(), format!("c{i}")), shape(i, ""));
    }
    // With leader election, as deployed: the Lease must survive the restart too.
    let lease = format!("{}-lease", w.id);
    let controller = w.controller(
        "rel-apiserver",
        &["--leader-election", "true", "--lease-name", &lease, "--ssm-write-rate", "0"],
        true,
        None,
    );
    support::eventually("some objects Ready", || async { (w.ready_count(w.ns(0)).await >= 5).then_some(()) }).await;
    let restart = std::process::Command::new(repo_root().join("scripts/testenv.sh"))
        .arg("restart-kube")
        .env("TCC_STATE_DIR", support::env("TCC_TESTENV"))
        .output()
        .unwrap();
    assert!(restart.status.success(), "restart-kube: {}", String::from_utf8_lossy(&restart.stderr));
    // Work that arrives after the restart: new objects and changed ones.
    for i in 40..60 {
        w.apply(w.ns(i % 2), &format!("c{i}"), &shape(i, "")).await;
        expected.insert((w.ns(i % 2).to_string(), format!("c{i}")), shape(i, ""));
    }
    for i in (0..40).step_by(4) {
        w.apply(w.ns(i % 2), &format!("c{i}"), &shape(i, "-v2")).await;
        expected.insert((w.ns(i % 2).to_string(), format!("c{i}")), shape(i, "-v2"));
    }
    let took = w.converge(&expected, Duration::from_secs(180)).await;
    eprintln!("converged {took:?} after the API server came back");
    let mut controller = controller;
    assert!(controller.child.try_wait().unwrap().is_none(), "survived the restart: {}", controller.logs());
    controller.signal("TERM");
    assert!(controller.wait_exit(Duration::from_secs(30)).success());
    w.finish(None, &expected).await;
}

// ------------------------------------------------- hostile input, isolation --

/// How a hostile manifest must end.
enum Outcome {
    /// The API server refuses it; its message contains this.
    Refused(&'static str),
    /// Accepted, then `Ready=False` with this reason.
    Condition(&'static str),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_manifests_and_forged_events_write_nothing_and_cross_no_tenant() {
    let _turn = SERIAL.lock().await;
    let mut w = World::new("rel-hostile", 2).await;
    let (ns_a, ns_b) = (w.ns(0).to_string(), w.ns(1).to_string());
    let (tenant_a, tenant_b) = (w.tenant_of(&ns_a).to_string(), w.tenant_of(&ns_b).to_string());
    let (db, ssm, big) = (format!("{}-db", w.id), format!("{}-ssm", w.id), format!("{}-big", w.id));
    let big_prefix = format!("{}-big", w.prefix);
    w.store("big", json!({ "tags": ["big"], "parameterStore": { "pathPrefix": big_prefix, "tier": "Advanced" } }))
        .await;
    let unlabelled = w.namespace("nolabel", None).await;

    // The controller runs as the chart's ServiceAccount with the chart's RBAC.
    let release = format!("r{}", std::process::id());
    let release_ns = format!("{}-system", w.id);
    let mut installed = support::Release { name: release.clone(), namespace: release_ns.clone(), installed: true };
    let helm = |args: &[&str]| {
        let (ok, _, stderr) = support::helm(args);
        assert!(ok, "helm {args:?}: {stderr}");
    };
    helm(&[
        "install",
        &release,
        "charts/tenant-config-controller",
        "--namespace",
        &release_ns,
        "--create-namespace",
        "--set",
        "replicaCount=1",
        "--wait=false",
    ]);
    let sa = format!("{release}-tenant-config-controller");
    let kubeconfig = kubeconfig_as_service_account(&w.client, &release_ns, &sa).await;
    let kubeconfig = kubeconfig.to_str().unwrap().to_string();
    let chart_identity = client_from(std::path::Path::new(&kubeconfig)).await;
    let controller = w.controller("rel-hostile", &["--ssm-write-rate", "0"], true, Some(&kubeconfig));

    // Tenant B's data, tenant A's legitimate objects (one named like B's).
    w.ssm
        .put_parameter()
        .name(format!("{}/common/region", w.shared))
        .value("eu")
        .r#type(ParameterType::String)
        .send()
        .await
        .unwrap();
    let mut expected = Expected::new();
    let orders_b = Expect::new(&[("x", "b-secret-1")], &[("y", "b-secret-2")]);
    let orders_a = Expect::new(&[("x", "a-1")], &[]);
    let claimed = Expect::new(&[("k", "first")], &[]);
    w.apply(&ns_b, "orders", &orders_b).await;
    w.apply(&ns_a, "orders", &orders_a).await;
    w.apply(&ns_a, "claimed", &claimed).await;
    expected.insert((ns_b.clone(), "orders".into()), orders_b);
    expected.insert((ns_a.clone(), "orders".into()), orders_a);
    expected.insert((ns_a.clone(), "claimed".into()), claimed);
    w.converge(&expected, Duration::from_secs(90)).await;
    // A ConfigMap that is not ours, where a hostile object wants to project.
    let foreign: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "payments-config", "labels": { "team": "payments" } }, "data": { "owner": "humans" }
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(w.client.clone(), &ns_a).create(&PostParams::default(), &foreign).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await; // echo events of the seeding writes
    let items_before = w.items().await;
    let params_before = w.parameters(&w.prefix).await;
    let big_before = w.parameters(&format!("{}-big", w.prefix)).await;
    let (cms_a_before, cms_b_before) = (w.config_maps(&ns_a).await, w.config_maps(&ns_b).await);
    let writes_before: f64 = WRITES.iter().map(|op| calls(&controller, op)).sum();

    let entry = |key: &str, value: &str, tag: &str| json!({ "key": key, "value": value, "tags": [tag] });
    let long = "k".repeat(129);
    let many: Vec<_> = (0..257).map(|i| entry(&format!("k{i}"), "v", &db)).collect();
    let over_item: Vec<_> = (0..60).map(|i| entry(&format!("k{i}"), &"x".repeat(8000), &db)).collect();
    let over_projection: Vec<_> = (0..130).map(|i| entry(&format!("k{i}"), &"x".repeat(8100), &big)).collect();
    let cases: Vec<(&str, serde_json::Value, Outcome)> = vec![
        ("slash-key", json!({ "entries": [entry("a/b", "v", &db)] }), Outcome::Refused("spec.entries[0].key")),
        (
            "dotdot-key",
            json!({ "entries": [entry("..", "v", &db)] }),
            Outcome::Refused("key must not be '.' or start with '..'"),
        ),
        (
            "dot-key",
            json!({ "entries": [entry(".", "v", &db)] }),
            Outcome::Refused("key must not be '.' or start with '..'"),
        ),
        ("dotdot-prefix-key", json!({ "entries": [entry("..x", "v", &db)] }), Outcome::Refused("start with '..'")),
        ("empty-key", json!({ "entries": [entry("", "v", &db)] }), Outcome::Refused("spec.entries[0].key")),
        ("long-key", json!({ "entries": [entry(&long, "v", &db)] }), Outcome::Refused("Too long")),
        ("space-key", json!({ "entries": [entry("a b", "v", &db)] }), Outcome::Refused("spec.entries[0].key")),
        (
            "duplicate-keys",
            json!({ "entries": [entry("a", "1", &db), entry("a", "2", &db)] }),
            Outcome::Refused("Duplicate value"),
        ),
        (
            "oversize-value",
            json!({ "entries": [entry("a", &"v".repeat(8193), &ssm)] }),
            Outcome::Refused("spec.entries[0].value"),
        ),
        ("too-many-entries", json!({ "entries": many }), Outcome::Refused("spec.entries")),
        ("number-value", json!({ "entries": [{ "key": "a", "value": 5 }] }), Outcome::Refused("spec.entries[0].value")),
        ("bad-tag", json!({ "entries": [entry("a", "v", "bad tag!")] }), Outcome::Refused("spec.entries[0].tags[0]")),
        ("dotdot-config-type", json!({ "configType": "..", "entries": [] }), Outcome::Refused("configType must not")),
        ("slash-config-type", json!({ "configType": "x/y" }), Outcome::Refused("spec.configType")),
        (
            "traversal-include",
            json!({ "include": [{ "parameterPath": format!("{}/../{}/{tenant_b}", w.shared, w.prefix) }] }),
            Outcome::Refused("must not contain '.' or '..' segments"),
        ),
        (
            "relative-include",
            json!({ "include": [{ "parameterPath": "tenant-config-shared/x" }] }),
            Outcome::Refused("spec.include[0].parameterPath"),
        ),
        ("bad-policy", json!({ "managementPolicy": "Sometimes" }), Outcome::Refused("Unsupported value")),
        ("bad-deletion-policy", json!({ "deletionPolicy": "Never" }), Outcome::Refused("Unsupported value")),
        (
            "bad-config-map-name",
            json!({ "projection": { "configMapName": "Not_A_Name" } }),
            Outcome::Refused("spec.projection.configMapName"),
        ),
        ("unknown-field", json!({ "tenant": tenant_b.clone() }), Outcome::Refused("unknown field \"spec.tenant\"")),
        (
            "other-tenants-path",
            json!({ "include": [{ "parameterPath": format!("{}/{tenant_b}/_/orders", w.prefix) }] }),
            Outcome::Condition("IncludeNotAllowed"),
        ),
        (
            "lookalike-shared-path",
            json!({ "include": [{ "parameterPath": format!("{}-evil/common", w.shared) }] }),
            Outcome::Condition("IncludeNotAllowed"),
        ),
        (
            "aws-reserved-path",
            json!({ "include": [{ "parameterPath": "/aws/reference/secretsmanager/db" }] }),
            Outcome::Condition("IncludeNotAllowed"),
        ),
        ("unknown-tags", json!({ "entries": [entry("a", "v", "no-such-tag")] }), Outcome::Condition("NoStoreForTags")),
        (
            "secure-without-kms",
            json!({ "entries": [entry("a", "v", &db), { "key": "pw", "value": "s", "tags": [big], "secure": true }] }),
            Outcome::Condition("ValidationFailed"),
        ),
        (
            "secure-in-dynamodb",
            json!({ "entries": [entry("b", "v", &ssm), { "key": "pw", "value": "s", "tags": [db], "secure": true }] }),
            Outcome::Condition("ValidationFailed"),
        ),
        (
            "value-over-standard-tier",
            json!({ "entries": [entry("a", "v", &db), entry("b", &"v".repeat(5000), &ssm)] }),
            Outcome::Condition("ValidationFailed"),
        ),
        // Over the per-object total-size cap (256 KiB) long before the item's
        // 400 KB or the ConfigMap's 1 MiB (those limits are checked by the
        // controller too: store_backends, the plan's unit tests).
        ("item-over-400kb", json!({ "entries": over_item }), Outcome::Refused("at most 256 KiB of keys and values")),
        (
            "projection-over-1mib",
            json!({ "entries": over_projection }),
            Outcome::Refused("at most 256 KiB of keys and values"),
        ),
        (
            "foreign-config-map",
            json!({ "entries": [entry("a", "v", &db), entry("b", "v", &ssm)],
                    "projection": { "configMapName": "payments-config" } }),
            Outcome::Condition("ConfigMapConflict"),
        ),
        (
            "claims-another-objects-location",
            json!({ "configType": "claimed", "entries": [entry("k", "second", &db)] }),
            Outcome::Condition("Conflict"),
        ),
    ];
    assert!(cases.len() >= 25);
    let mut accepted: Vec<(String, String, &str)> = Vec::new();
    for (name, spec, outcome) in &cases {
        let ns = ns_a.as_str();
        let manifest = json!({
            "apiVersion": "tenantconfig.io/v1alpha1", "kind": "TenantConfig",
            "metadata": { "name": name, "namespace": ns }, "spec": spec
        });
        let out = support::kubectl(&["create", "-f", "-"], Some(&manifest.to_string()));
        let stderr = String::from_utf8_lossy(&out.stderr);
        match outcome {
            Outcome::Refused(why) => {
                assert!(!out.status.success(), "{name}: accepted, expected a refusal naming {why:?}");
                assert!(stderr.contains(why), "{name}: the refusal names {why:?}: {stderr}");
            }
            Outcome::Condition(reason) => {
                assert!(out.status.success(), "{name}: refused by the API server: {stderr}");
                accepted.push((ns.to_string(), name.to_string(), reason));
            }
        }
    }
    // No tenant label: nothing can be written for it.
    let no_tenant = json!({
        "apiVersion": "tenantconfig.io/v1alpha1", "kind": "TenantConfig",
        "metadata": { "name": "no-tenant", "namespace": unlabelled }, "spec": { "entries": [entry("a", "v", &db)] }
    });
    let out = support::kubectl(&["create", "-f", "-"], Some(&no_tenant.to_string()));
    assert!(out.status.success());
    accepted.push((unlabelled.clone(), "no-tenant".into(), "TenantUnknown"));
    for (ns, name, reason) in &accepted {
        let api = Api::<TenantConfig>::namespaced(w.client.clone(), ns);
        support::eventually(&format!("{name}: Ready=False {reason}"), || async {
            let got = reason_of(&api.get(name).await.ok()?)?;
            (got == ("False".to_string(), reason.to_string())).then_some(())
        })
        .await;
    }
    eprintln!(
        "{} manifests refused by the API server, {} refused by the controller",
        cases.len() + 1 - accepted.len(),
        accepted.len()
    );

    // Forged and malformed events: re-read, never trusted.
    let arn = format!("arn:aws:dynamodb:us-east-1:123456789012:table/{}/stream/2026-11-01T00:00:00.000", w.table);
    let image = |tenant: &str, data: serde_json::Value| json!({ "pk": { "S": format!("TENANT#{tenant}") }, "sk": { "S": "CONFIG#orders" }, "data": { "M": data } });
    let record = |tenant: &str, data: serde_json::Value| {
        json!({
            "eventID": "1", "eventName": "MODIFY", "eventVersion": "1.1", "eventSource": "aws:dynamodb",
            "awsRegion": "us-east-1", "eventSourceARN": arn,
            "dynamodb": { "Keys": { "pk": { "S": format!("TENANT#{tenant}") }, "sk": { "S": "CONFIG#orders" } },
                          "NewImage": image(tenant, data), "StreamViewType": "NEW_AND_OLD_IMAGES" }
        })
    };
    let forged = [
        // B's key, with a payload that would leak into B (or anyone) if trusted.
        json!({ "version": "0", "id": "f1", "detail-type": "Event from aws:dynamodb", "source": format!("Pipe {}-pipe", w.id),
                "time": "2026-11-26T08:17:45Z", "region": "us-east-1", "resources": [],
                "detail": record(&tenant_b, json!({ "x": { "S": "forged" } })) })
        .to_string(),
        // A's key, carrying B's data.
        record(&tenant_a, json!({ "x": { "S": "b-secret-1" }, "y": { "S": "b-secret-2" } })).to_string(),
        // B's parameter, named by an SSM change event.
        json!({ "version": "0", "id": "f3", "detail-type": "Parameter Store Change", "source": "aws.ssm",
                "time": "2026-11-26T08:15:30Z", "region": "us-east-1", "resources": [],
                "detail": { "operation": "Update", "name": format!("{}/{tenant_b}/_/orders/y", w.prefix), "type": "String" } })
        .to_string(),
    ];
    let malformed = [
        json!({ "version": "0", "id": "f4", "detail-type": "Parameter Store Change", "source": "aws.ssm",
                "detail": { "operation": "Update", "name": format!("{}/{tenant_a}/../{tenant_b}/orders/y", w.prefix) } })
        .to_string(),
        format!("{{\"padding\":\"{}\"}}", "x".repeat(250 * 1024)),
    ];
    let metric = |series: &str| controller.metric(series).unwrap_or(0.0);
    let acked_before = metric("tenant_config_event_messages_total{outcome=\"acked\"}");
    let malformed_before = metric("tenant_config_event_messages_total{outcome=\"malformed\"}");
    for body in forged.iter().chain(&malformed) {
        w.sqs.send_message().queue_url(w.queue_url()).message_body(body).send().await.unwrap();
    }
    support::eventually("forged events handled and malformed ones refused", || async {
        let acked = metric("tenant_config_event_messages_total{outcome=\"acked\"}") - acked_before;
        let refused = metric("tenant_config_event_messages_total{outcome=\"malformed\"}") - malformed_before;
        (acked >= forged.len() as f64 && refused >= malformed.len() as f64).then_some(())
    })
    .await;
    // Only the malformed ones remain (hidden until they reach the dead-letter queue).
    support::eventually("the queue holds only the malformed messages", || async {
        let attrs = w
            .sqs
            .get_queue_attributes()
            .queue_url(w.queue_url())
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
            .send()
            .await
            .ok()?;
        let attrs = attrs.attributes()?;
        let count =
            |name| attrs.get(&aws_sdk_sqs::types::QueueAttributeName::from(name)).and_then(|v| v.parse::<usize>().ok());
        (count("ApproximateNumberOfMessages")? + count("ApproximateNumberOfMessagesNotVisible")? == malformed.len())
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Zero store writes since the seeding, by the controller's own count and by
    // scanning the table and every parameter path; B's ConfigMaps untouched.
    let writes_after: f64 = WRITES.iter().map(|op| calls(&controller, op)).sum();
    assert_eq!(writes_after, writes_before, "no store write for any hostile manifest or forged event");
    assert_eq!(w.items().await, items_before, "the table is unchanged");
    assert_eq!(w.parameters(&w.prefix).await, params_before, "the parameters are unchanged");
    assert_eq!(w.parameters(&format!("{}-big", w.prefix)).await, big_before, "the Advanced store is unchanged");
    let data = |cms: BTreeMap<String, ConfigMap>| -> BTreeMap<String, _> {
        cms.into_iter().map(|(n, cm)| (n, cm.data)).collect()
    };
    assert_eq!(data(w.config_maps(&ns_b).await), data(cms_b_before), "tenant B's ConfigMaps are untouched");
    assert_eq!(data(w.config_maps(&ns_a).await), data(cms_a_before), "no ConfigMap appeared or changed in A");
    assert_eq!(w.discrepancy(&expected).await, None, "the legitimate objects are as they were");
    let foreign = Api::<ConfigMap>::namespaced(w.client.clone(), &ns_a).get("payments-config").await.unwrap();
    assert_eq!(foreign.data.unwrap()["owner"], "humans", "the foreign ConfigMap is never overwritten");

    // The chart's identity cannot reach around the controller either.
    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(chart_identity, &ns_b);
    assert!(secrets.list(&ListParams::default()).await.is_err(), "no Secrets without secure projection");

    for (ns, name, _) in &accepted {
        let _ = Api::<TenantConfig>::namespaced(w.client.clone(), ns).delete(name, &DeleteParams::default()).await;
    }
    drop(controller);
    let _ = Api::<ConfigStore>::all(w.client.clone()).delete(&big, &DeleteParams::default()).await;
    w.finish(Some(&kubeconfig), &expected).await;
    helm(&["uninstall", &release, "--namespace", &release_ns]);
    installed.installed = false;
}
