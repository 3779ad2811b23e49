//! The event path end to end (DESIGN.md §6): store writes made outside the
//! controller reach ConfigMaps through EventBridge → SQS, with the local
//! emulator delivering the events AWS would (scripts/aws_emulator.py).
//!
//! Every test runs the controller with a 10-minute resync, so a change that
//! arrives within the test arrived by event. A controller reconciles every
//! TenantConfig in the cluster, so the tests take turns and each deletes its
//! objects before it stops its controller.

mod support;

use support::{eventually, eventually_within};

use std::time::Duration;

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use serde_json::json;
use support::fixtures::InProcessController;
use support::{
    fault_proxy::{Fault, FaultProxy, Times},
    world::World,
};
use tenant_config_controller::{
    events::sqs::ConsumerSettings,
    metrics::Metrics,
    reconcile::Settings,
    store::stats::{CallStats, Outcome},
};

/// Tests take turns: each runs a controller that sees the whole cluster.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One test's world (its stores, queue and namespaces) and its controller.
struct Harness {
    world: World,
    visibility: Duration,
    controller: Option<InProcessController>,
}

impl std::ops::Deref for Harness {
    type Target = World;
    fn deref(&self) -> &World {
        &self.world
    }
}

impl std::ops::DerefMut for Harness {
    fn deref_mut(&mut self) -> &mut World {
        &mut self.world
    }
}

impl Harness {
    async fn new(name: &str, max_receive_count: u32, visibility_secs: u32) -> Harness {
        let mut world = World::with_queue(name, max_receive_count, visibility_secs).await;
        world.standard_stores().await;
        Harness { world, visibility: Duration::from_secs(visibility_secs.into()), controller: None }
    }

    fn start(&mut self) {
        self.start_with(Settings { resync_interval: Duration::from_secs(600), ..Settings::default() });
    }

    fn start_with(&mut self, settings: Settings) {
        assert!(self.controller.is_none());
        let events =
            ConsumerSettings { visibility_timeout: self.visibility, ..ConsumerSettings::new(self.queue_url().into()) };
        self.controller = Some(InProcessController::start(&self.client, &self.sdk, settings, Some(events)));
    }

    /// Graceful stop, as on SIGTERM.
    async fn stop(&mut self) {
        self.controller.take().expect("controller running").stop_within(Duration::from_secs(30)).await;
    }

    /// Abrupt stop, as on SIGKILL: in-flight work is simply gone.
    async fn kill(&mut self) {
        self.controller.take().expect("controller running").kill().await;
    }

    fn metrics(&self) -> &Metrics {
        &self.controller.as_ref().expect("controller running").metrics
    }

    /// A counter of the controller's metrics exposition, by name (without prefix).
    fn counter(&self, name: &str) -> u64 {
        let exposition = self.metrics().encode();
        let line = format!("{}_{name} ", tenant_config_controller::metrics::PREFIX);
        let value = exposition.lines().find_map(|l| l.strip_prefix(&line));
        value.unwrap_or_else(|| panic!("{name} in the metrics:\n{exposition}")).trim().parse().unwrap()
    }

    fn stats(&self) -> &CallStats {
        &self.controller.as_ref().expect("controller running").stats
    }

    /// Deletes this test's objects (the controller must run to finish them),
    /// then its stores, and stops the controller.
    async fn finish(mut self) {
        if self.controller.is_none() {
            self.start();
        }
        self.world.clean_up().await;
        self.stop().await;
    }
}

/// A DynamoDB stream record as a Pipe delivers it, for forged and replayed events.
fn pipe_event(table: &str, tenant: &str, config_type: &str) -> String {
    json!({
        "version": "0", "id": format!("forged-{tenant}-{config_type}"), "detail-type": "Event from aws:dynamodb",
        "source": "Pipe forged", "time": "2026-11-26T08:17:45Z", "region": "us-east-1", "resources": [],
        "detail": {
            "eventID": "1", "eventName": "MODIFY", "eventVersion": "1.1", "eventSource": "aws:dynamodb",
            "awsRegion": "us-east-1",
            "dynamodb": { "Keys": { "pk": { "S": format!("TENANT#{tenant}") }, "sk": { "S": format!("CONFIG#{config_type}") } } },
            "eventSourceARN": format!("arn:aws:dynamodb:us-east-1:123456789012:table/{table}/stream/2026-11-01T00:00:00.000")
        }
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_band_changes_arrive_by_event() {
    let _turn = SERIAL.lock().await;
    let mut h = Harness::new("ev-oob", 5, 30).await;
    let tenant = h.tenant(0);
    let ns = h.namespace("a", Some(&tenant)).await;
    let (db, ssm_tag, shared) = (h.tag("db"), h.tag("ssm"), h.shared.clone());
    h.put_parameter(&format!("{shared}/prod/region"), "eu").await;
    h.tenant_config(
        &ns,
        "payments",
        json!({
            "defaultTags": [db],
            "entries": [{ "key": "provider", "value": "stripe" }],
            "include": [{ "parameterPath": format!("{shared}/prod") }]
        }),
    )
    .await;
    // Its own SSM keys are read with GetParametersByPath too: kept apart from
    // the shared fan-out below, which counts those calls.
    h.tenant_config(&ns, "web", json!({ "defaultTags": [ssm_tag], "entries": [{ "key": "api", "value": "v1" }] }))
        .await;
    h.start();
    h.wait_ready(&ns, "payments").await;
    h.wait_ready(&ns, "web").await;
    let cm = "payments";
    h.wait_config_map(&ns, cm, "initial projection", |d| d.get("provider").map(String::as_str) == Some("stripe")).await;

    // Another writer adds a key to the tenant's item.
    h.set_item_key(&tenant, "payments", "feature-x", Some("on")).await;
    let took =
        h.wait_config_map(&ns, cm, "DynamoDB insert", |d| d.get("feature-x").map(String::as_str) == Some("on")).await;
    println!("DynamoDB out-of-band write → ConfigMap: {took:?}");
    // ... and removes it again.
    h.set_item_key(&tenant, "payments", "feature-x", None).await;
    h.wait_config_map(&ns, cm, "DynamoDB remove", |d| !d.contains_key("feature-x")).await;

    // An SSM parameter under the tenant's path that no TenantConfig manages.
    let extra = format!("{}/{tenant}/_/web/extra", h.prefix);
    h.put_parameter(&extra, "1").await;
    let took = h.wait_config_map(&ns, "web", "SSM create", |d| d.get("extra").map(String::as_str) == Some("1")).await;
    println!("SSM out-of-band write → ConfigMap: {took:?}");
    h.ssm.delete_parameter().name(&extra).send().await.unwrap();
    h.wait_config_map(&ns, "web", "SSM delete", |d| !d.contains_key("extra") && d.contains_key("api")).await;

    // A shared parameter included by 50 TenantConfigs in 10 namespaces (plus
    // `payments`): every ConfigMap updates, the path is walked once.
    let mut fan_out = Vec::new();
    for n in 0..10 {
        let tenant = h.tenant(n + 1);
        let ns = h.namespace(&format!("fan{n}"), Some(&tenant)).await;
        for k in 0..5 {
            h.tenant_config(
                &ns,
                &format!("app{k}"),
                json!({
                    "defaultTags": [db], "entries": [{ "key": "app", "value": format!("{k}") }],
                    "include": [{ "parameterPath": format!("{shared}/prod") }]
                }),
            )
            .await;
            fan_out.push((ns.clone(), format!("app{k}")));
        }
    }
    for (ns, name) in &fan_out {
        h.wait_ready(ns, name).await;
    }
    h.wait_queue_empty().await; // the controller's own writes echo back as events; let them settle
    let walks = || h.stats().count("ParameterStore", "GetParametersByPath", Outcome::Ok);
    let (walks_before, misses_before) = (walks(), h.metrics().shared_cache_lookups("miss"));
    // The objects' own store (DynamoDB) did not change: none of them reads it again.
    let own_reads = || {
        let stats = h.stats();
        stats.count("DynamoDB", "GetItem", Outcome::Ok) + stats.count("DynamoDB", "Query", Outcome::Ok)
    };
    let own_reads_before = own_reads();
    h.put_parameter(&format!("{shared}/prod/timeout-ms"), "30").await;
    let started = std::time::Instant::now();
    fan_out.push((ns.clone(), "payments".into()));
    for (ns, name) in &fan_out {
        let cm = name.clone();
        h.wait_config_map(ns, &cm, "shared change", |d| d.get("timeout-ms").map(String::as_str) == Some("30")).await;
    }
    println!("shared parameter → {} ConfigMaps: {:?}", fan_out.len(), started.elapsed());
    h.wait_queue_empty().await;
    assert_eq!(walks() - walks_before, 1, "one GetParametersByPath walk for {} TenantConfigs", fan_out.len());
    assert_eq!(h.metrics().shared_cache_lookups("miss") - misses_before, 1);
    assert_eq!(own_reads() - own_reads_before, 0, "a shared change re-reads no object's own store");
    for (ns, name) in &fan_out {
        let data = h.config_map(ns, name).await;
        assert!(data.contains_key("app") || data.contains_key("provider"), "{ns}/{name} kept its own keys: {data:?}");
    }
    // A change of an object's own store right after: a full reconcile projects it.
    let (fan_ns, fan_name) = fan_out[0].clone();
    let fan_tenant = h.tenant(1);
    h.set_item_key(&fan_tenant, &fan_name, "after-shared", Some("1")).await;
    h.put_parameter(&format!("{shared}/prod/timeout-ms"), "31").await;
    h.wait_config_map(&fan_ns, &fan_name, "own and shared change", |d| {
        d.get("after-shared").map(String::as_str) == Some("1") && d.get("timeout-ms").map(String::as_str) == Some("31")
    })
    .await;
    assert!(h.metrics().message("acked") >= 5, "messages acknowledged");
    assert_eq!(h.metrics().message("malformed"), 0);
    h.finish().await;
}

/// A restart's first applies to Parameter Store: one walk of the tenant's path
/// serves every object that existed before it, keys nobody manages included;
/// an object created after the walk reads its own path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_up_pass_walks_each_tenant_once() {
    let _turn = SERIAL.lock().await;
    let mut h = Harness::new("ev-walk", 5, 30).await;
    let tenant = h.tenant(0);
    // The walk counters are the process's: under a tenant label of its own,
    // this controller gives no other test's leftover objects a tenant to walk.
    let tenant_label = format!("{}/tenant", h.id);
    let ns = h.namespace_labelled("a", &[(tenant_label.as_str(), tenant.as_str())]).await;
    let ssm_tag = h.tag("ssm");
    // A parameter under one object's path that no TenantConfig manages.
    h.put_parameter(&format!("{}/{tenant}/_/app0/extra", h.prefix), "before").await;
    let apps: Vec<String> = (0..6).map(|i| format!("app{i}")).collect();
    for app in &apps {
        h.tenant_config(&ns, app, json!({ "defaultTags": [ssm_tag], "entries": [{ "key": "own", "value": app }] }))
            .await;
    }
    // Existing objects, as on a restart: created before the walk by more than
    // the creation time's granularity.
    tokio::time::sleep(Duration::from_secs(3)).await;
    h.start_with(Settings { resync_interval: Duration::from_secs(600), tenant_label, ..Settings::default() });
    for app in &apps {
        h.wait_ready(&ns, app).await;
    }
    // Counted by the controller's metrics: the echo of each write as an event
    // triggers a reconcile that reads its path anyway, at no fixed moment.
    assert_eq!(h.counter("start_up_walks_total"), 1, "one walk of the tenant's path");
    assert_eq!(h.counter("start_up_walk_first_applies_total"), apps.len() as u64, "every first apply served by it");
    let data = h.config_map(&ns, "app0").await;
    assert_eq!(data.get("extra").map(String::as_str), Some("before"), "the walk found the unmanaged key: {data:?}");
    assert_eq!(data.get("own").map(String::as_str), Some("app0"));
    assert_eq!(h.config_map(&ns, "app5").await.get("own").map(String::as_str), Some("app5"));

    // Created after the walk, beside a parameter written after it: read on its own.
    h.put_parameter(&format!("{}/{tenant}/_/late/extra", h.prefix), "after").await;
    h.tenant_config(&ns, "late", json!({ "defaultTags": [ssm_tag], "entries": [{ "key": "own", "value": "late" }] }))
        .await;
    h.wait_ready(&ns, "late").await;
    let data = h.config_map(&ns, "late").await;
    assert_eq!(data.get("extra").map(String::as_str), Some("after"), "its own read found the new key: {data:?}");
    assert_eq!(h.counter("start_up_walks_total"), 1, "no second walk of the tenant");
    assert_eq!(h.counter("start_up_walk_first_applies_total"), apps.len() as u64, "the late object read on its own");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_backwards_under_shuffled_duplicated_events() {
    let _turn = SERIAL.lock().await;
    let mut h = Harness::new("ev-order", 5, 30).await;
    let db = h.tag("db");
    let mut objects = Vec::new();
    for n in 0..3 {
        let tenant = h.tenant(n);
        let ns = h.namespace(&format!("o{n}"), Some(&tenant)).await;
        for k in 0..10 {
            let name = format!("c{k}");
            h.tenant_config(
                &ns,
                &name,
                json!({ "defaultTags": [db], "entries": [{ "key": "managed", "value": "m" }] }),
            )
            .await;
            objects.push((ns.clone(), tenant.clone(), name));
        }
    }
    h.start();
    for (ns, _, name) in &objects {
        h.wait_ready(ns, name).await;
    }

    // 10 rounds of real writes to each of the 30 items (300 real events),
    // interleaved with replays of stale events in shuffled order, each twice.
    let mut rng = 0x2545F4914F6CDD1Du64;
    let mut next = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    let mut sent_forged = 0;
    for round in 0..10 {
        let mut order: Vec<usize> = (0..objects.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, next(i + 1));
        }
        for i in order {
            let (_, tenant, name) = &objects[i];
            h.set_item_key(tenant, name, "round", Some(&round.to_string())).await;
        }
        let entries: Vec<SendMessageBatchRequestEntry> = (0..10)
            .map(|i| {
                let (_, tenant, name) = &objects[next(objects.len())];
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(pipe_event(&h.table, tenant, name))
                    .build()
                    .unwrap()
            })
            .collect();
        for _ in 0..2 {
            h.sqs
                .send_message_batch()
                .queue_url(h.queue_url())
                .set_entries(Some(entries.clone()))
                .send()
                .await
                .unwrap();
            sent_forged += entries.len();
        }
    }
    assert_eq!(sent_forged, 200);
    h.wait_queue_empty().await;
    for (ns, tenant, name) in &objects {
        let cm = name.clone();
        let store = h.item_data(tenant, name).await;
        assert_eq!(store.get("round").map(String::as_str), Some("9"));
        h.wait_config_map(ns, &cm, "equals the store", |d| *d == store).await;
    }
    assert_eq!(h.metrics().message("malformed"), 0);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_end_in_the_dead_letter_queue() {
    let _turn = SERIAL.lock().await;
    let mut h = Harness::new("ev-poison", 2, 2).await;
    let tenant = h.tenant(0);
    let ns = h.namespace("p", Some(&tenant)).await;
    let db = h.tag("db");
    h.tenant_config(&ns, "payments", json!({ "defaultTags": [db], "entries": [{ "key": "k", "value": "v" }] })).await;
    h.start();
    h.wait_ready(&ns, "payments").await;
    h.wait_queue_empty().await;

    let poison = [
        "{not json".to_string(),
        "[]".to_string(),
        json!({ "source": "aws.ssm", "detail-type": "Parameter Store Change", "detail": { "name": 42 } }).to_string(),
        json!({ "source": "aws.ec2", "detail-type": "EC2 Instance State-change Notification", "detail": {} })
            .to_string(),
        json!({ "eventSource": "aws:dynamodb", "eventName": "MODIFY", "dynamodb": { "Keys": "pk" } }).to_string(),
        format!(r#"{{"pad":"{}"}}"#, "x".repeat(900 * 1024)),
    ];
    let valid = [pipe_event(&h.table, &tenant, "payments"), pipe_event(&h.table, "someone-else", "payments")];
    let entries: Vec<SendMessageBatchRequestEntry> = poison
        .iter()
        .chain(valid.iter())
        .enumerate()
        .map(|(i, body)| SendMessageBatchRequestEntry::builder().id(i.to_string()).message_body(body).build().unwrap())
        .collect();
    // One batch of messages over 1 MiB would be refused: send the big one alone.
    let (big, rest): (Vec<_>, Vec<_>) = entries.into_iter().partition(|e| e.message_body().len() > 1024);
    h.sqs.send_message_batch().queue_url(h.queue_url()).set_entries(Some(rest)).send().await.unwrap();
    h.sqs.send_message_batch().queue_url(h.queue_url()).set_entries(Some(big)).send().await.unwrap();

    let dlq = h.dead_letter_queue_url().to_string();
    eventually("poison in the dead-letter queue", || async {
        (h.queue_depth(&dlq).await.0 == poison.len() as u64).then_some(())
    })
    .await;
    h.wait_queue_empty().await;
    let metrics = h.metrics();
    assert!(metrics.message("malformed") >= 2 * poison.len() as u64, "each poison message was received twice");
    assert!(metrics.message("ignored") >= 1, "the event for no object was acknowledged");
    assert!(metrics.message("acked") >= 2, "valid messages of the same batch were handled");
    assert_eq!(h.queue_depth(&dlq).await.0, poison.len() as u64, "nothing valid reached the dead-letter queue");

    // The controller keeps working.
    h.set_item_key(&tenant, "payments", "after", Some("yes")).await;
    h.wait_config_map(&ns, "payments", "works after poison", |d| d.get("after").map(String::as_str) == Some("yes"))
        .await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_reconcile_fails_is_kept_until_it_succeeds() {
    let _turn = SERIAL.lock().await;
    let mut h = Harness::new("ev-fail", 20, 3).await;
    let proxy = FaultProxy::start(&support::env("AWS_ENDPOINT_URL")).await;
    let table = h.table.clone();
    h.store("flaky", json!({ "tags": ["flaky"], "dynamodb": { "tableName": table, "endpoint": proxy.url } })).await;
    let tenant = h.tenant(0);
    let ns = h.namespace("f", Some(&tenant)).await;
    let flaky = h.tag("flaky");
    h.tenant_config(&ns, "payments", json!({ "defaultTags": [flaky], "entries": [{ "key": "k", "value": "v" }] }))
        .await;
    h.start();
    h.wait_ready(&ns, "payments").await;
    h.wait_queue_empty().await;

    proxy.inject("GetItem", Fault::ServerError, Times::Always);
    let acked_before = h.metrics().message("acked");
    h.set_item_key(&tenant, "payments", "late", Some("1")).await; // straight to the store, not via the proxy
    eventually("the event was received and not handled", || async {
        (h.metrics().message("unhandled") >= 1).then_some(())
    })
    .await;
    // Not deleted while its reconcile fails. (An older message for the same
    // object — the echo of the controller's own first write, if it came late —
    // is superseded by this one and acknowledged: an object holds one.)
    let (visible, in_flight) = h.queue_depth(h.queue_url()).await;
    assert!(visible + in_flight >= 1, "the message is still in the queue");
    assert!(h.metrics().message("acked") <= acked_before + 1, "at most a superseded older message was acknowledged");
    assert!(!h.config_map(&ns, "payments").await.contains_key("late"));

    proxy.clear();
    h.wait_config_map(&ns, "payments", "projected after recovery", |d| d.get("late").map(String::as_str) == Some("1"))
        .await;
    // The message left the queue and not for the dead-letter queue: only the
    // controller's DeleteMessage removes messages from it.
    h.wait_queue_empty().await;
    assert_eq!(h.queue_depth(h.dead_letter_queue_url()).await.0, 0);
    // ... and it was the controller that deleted it. (A drained queue without an
    // ack once exposed a moto race that lost messages sent during a delete; the
    // emulator now closes it.)
    assert!(h.metrics().message("acked") > acked_before, "handled and acknowledged after recovery");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_messages_in_flight_loses_nothing() {
    let _turn = SERIAL.lock().await;
    let mut h = Harness::new("ev-restart", 20, 3).await;
    let proxy = FaultProxy::start(&support::env("AWS_ENDPOINT_URL")).await;
    let table = h.table.clone();
    h.store("flaky", json!({ "tags": ["flaky"], "dynamodb": { "tableName": table, "endpoint": proxy.url } })).await;
    let tenant = h.tenant(0);
    let ns = h.namespace("r", Some(&tenant)).await;
    let flaky = h.tag("flaky");
    for k in 0..5 {
        h.tenant_config(
            &ns,
            &format!("c{k}"),
            json!({ "defaultTags": [flaky], "entries": [{ "key": "k", "value": "v" }] }),
        )
        .await;
    }
    h.start();
    for k in 0..5 {
        h.wait_ready(&ns, &format!("c{k}")).await;
    }
    h.wait_queue_empty().await;

    // Reconciles hang on a failing store while their events are in flight; the
    // process dies; a new one starts after the store is back.
    proxy.inject("GetItem", Fault::ServerError, Times::Always);
    for k in 0..5 {
        h.set_item_key(&tenant, &format!("c{k}"), "late", Some(&k.to_string())).await;
    }
    eventually("events received", || async { (h.metrics().message("received") >= 5).then_some(()) }).await;
    h.kill().await;
    proxy.clear();
    h.start();
    for k in 0..5 {
        let (name, want) = (format!("c{k}"), k.to_string());
        h.wait_config_map(&ns, &name, "projected after restart", |d| d.get("late") == Some(&want)).await;
    }
    h.wait_queue_empty().await;
    assert_eq!(h.queue_depth(h.dead_letter_queue_url()).await.0, 0, "nothing went to the dead-letter queue");
    h.finish().await;
}

/// A graceful stop in the middle of a long poll: SQS keeps the poll open
/// after its client has gone and hands it what arrives, which nobody would
/// handle — hidden for the visibility timeout from whoever leads next. The
/// stopping consumer lets the poll finish and releases what it brings, and
/// releases the messages it received and had not handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_mid_long_poll_leaves_no_message_hidden() {
    let _turn = SERIAL.lock().await;
    let mut h = Harness::new("ev-stop-poll", 5, 120).await;
    let tenant = h.tenant(0);
    let ns = h.namespace("a", Some(&tenant)).await;
    let ssm_tag = h.tag("ssm");
    h.tenant_config(&ns, "web", json!({ "defaultTags": [ssm_tag], "entries": [{ "key": "api", "value": "v1" }] }))
        .await;
    h.start();
    h.wait_ready(&ns, "web").await;
    h.wait_queue_empty().await;
    // Idle: the consumer sits in a long poll. Stop it, then make a change.
    let controller = h.controller.take().expect("controller running");
    let stopped = tokio::spawn(controller.stop_within(Duration::from_secs(60)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.put_parameter(&format!("{}/{tenant}/_/web/extra", h.prefix), "1").await;
    stopped.await.unwrap();
    // Nobody consumes now. The change's message must be visible to the next
    // leader well before the 120 s visibility timeout.
    let url = h.queue_url().to_string();
    let depth = eventually_within(Duration::from_secs(40), "the change's message is visible", || async {
        let (visible, hidden) = h.queue_depth(&url).await;
        (visible >= 1 && hidden == 0).then_some((visible, hidden))
    })
    .await;
    println!("queue after the stop: {depth:?} (visible, not visible)");
    h.start();
    h.wait_config_map(&ns, "web", "the change after the restart", |d| d.get("extra").map(String::as_str) == Some("1"))
        .await;
    h.finish().await;
}

/// One object no projection can reach (its tenant made its ConfigMap
/// immutable) is edited 200 times; another tenant's store change still
/// arrives by event at once. The consumer's in-flight cap is 100 here (1,000
/// in production): before, each edit's message was held until the object
/// projected, the cap filled and event delivery stopped for every tenant.
/// Now the refusal is a condition for the current generation and the
/// object's messages are acknowledged (and coalesced while it retries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_never_projectable_object_does_not_stall_other_tenants_events() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Patch, PatchParams};

    let _turn = SERIAL.lock().await;
    let mut h = Harness::new("ev-stall", 5, 30).await;
    let (noisy, quiet) = (h.tenant(0), h.tenant(1));
    let noisy_ns = h.namespace("noisy", Some(&noisy)).await;
    let quiet_ns = h.namespace("quiet", Some(&quiet)).await;
    let db = h.tag("db");
    let entry = json!({ "defaultTags": [db], "entries": [{ "key": "a", "value": "1" }] });
    h.tenant_config(&noisy_ns, "stuck", entry.clone()).await;
    h.tenant_config(&quiet_ns, "calm", entry).await;
    let events = ConsumerSettings {
        visibility_timeout: h.visibility,
        max_in_flight: 100,
        ..ConsumerSettings::new(h.queue_url().into())
    };
    let settings = Settings { resync_interval: Duration::from_secs(600), ..Settings::default() };
    h.controller = Some(InProcessController::start(&h.client, &h.sdk, settings, Some(events)));
    h.wait_ready(&noisy_ns, "stuck").await;
    h.wait_ready(&quiet_ns, "calm").await;

    // The tenant freezes the controller's ConfigMap; a store change can no longer be projected.
    let immutable = json!({ "immutable": true });
    let cms = kube::Api::<ConfigMap>::namespaced(h.client.clone(), &noisy_ns);
    cms.patch("stuck", &PatchParams::default(), &Patch::Merge(&immutable)).await.unwrap();
    h.set_item_key(&noisy, "stuck", "b", Some("0")).await;
    let refused = h.wait_reason(&noisy_ns, "stuck", "False", "ProjectionRefused").await;
    assert_eq!(refused.status.as_ref().unwrap().observed_generation, refused.metadata.generation);

    // 200 edits of it, as events.
    for round in 0..20 {
        let entries: Vec<_> = (0..10)
            .map(|i| {
                let body = pipe_event(&h.table, &noisy, "stuck").replace("forged-", &format!("edit-{round}-{i}-"));
                SendMessageBatchRequestEntry::builder().id(i.to_string()).message_body(body).build().unwrap()
            })
            .collect();
        h.sqs.send_message_batch().queue_url(h.queue_url()).set_entries(Some(entries)).send().await.unwrap();
    }
    // Once they are in, the quiet tenant's change arrives by event.
    tokio::time::sleep(Duration::from_secs(2)).await;
    h.set_item_key(&quiet, "calm", "b", Some("1")).await;
    let took = h
        .wait_config_map(&quiet_ns, "calm", "the quiet tenant's change", |d| {
            d.get("b").map(String::as_str) == Some("1")
        })
        .await;
    println!("quiet tenant's store change → ConfigMap with 200 edits of a stuck object queued: {took:?}");
    let (visible, in_flight) = h.queue_depth(h.queue_url()).await;
    assert!(
        visible + in_flight <= 1,
        "the stuck object's messages are not held: {visible} visible, {in_flight} in flight"
    );
    assert!(took < Duration::from_secs(1), "event-driven, not delayed: {took:?}");
    // Unfreezing (a new ConfigMap) lets it converge.
    cms.delete("stuck", &Default::default()).await.unwrap();
    h.wait_reason(&noisy_ns, "stuck", "True", "Reconciled").await;
    h.finish().await;
}

/// Puts one event on an EventBridge bus as any principal of the account could
/// (boto3: the Rust build carries no EventBridge client for the sake of a test).
fn put_event(bus: &str, source: &str, detail: &serde_json::Value) {
    let script = "import boto3, os, sys\n\
        e = boto3.client('events', endpoint_url=os.environ['AWS_ENDPOINT_URL'], region_name=os.environ.get('AWS_REGION', 'us-east-1'))\n\
        r = e.put_events(Entries=[{'EventBusName': sys.argv[1], 'Source': sys.argv[2], 'DetailType': 'Event from aws:dynamodb', 'Detail': sys.argv[3]}])\n\
        sys.exit(r['FailedEntryCount'])\n";
    let out = std::process::Command::new(support::env("TCC_PYTHON"))
        .args(["-c", script, bus, source, &detail.to_string()])
        .output()
        .expect("python runs");
    assert!(out.status.success(), "PutEvents on {bus}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The DynamoDB rule listens on the Pipe's own bus, so a "Pipe <name>" event
/// forged on the default bus (which any principal allowed events:PutEvents can
/// write to) never reaches the queue, while a real table change does. moto
/// stores the bus policy that denies every principal but the Pipe's role and
/// does not enforce it (it enforces no IAM): that half is the template's, and
/// tests/aws_template.rs checks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_pipe_event_on_the_default_bus_never_reaches_the_queue() {
    let _turn = SERIAL.lock().await;
    let h = Harness::new("ev-forge", 5, 30).await;
    let pipe = format!("{}-pipe", h.id);
    let forged = json!({
        "eventID": "forged", "eventName": "MODIFY", "eventVersion": "1.1", "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": { "Keys": { "pk": { "S": "TENANT#victim" }, "sk": { "S": "CONFIG#forged" } } },
    });
    put_event("default", &format!("Pipe {pipe}"), &forged);
    // The real change goes after it: delivery is in order, so once it is in
    // the queue a forged event the rules let through would be there too.
    use aws_sdk_dynamodb::types::AttributeValue;
    let s = |v: &str| AttributeValue::S(v.into());
    h.ddb
        .put_item()
        .table_name(&h.table)
        .item("pk", s("TENANT#real"))
        .item("sk", s("CONFIG#real"))
        .item("data", AttributeValue::M([("k".to_string(), s("v"))].into()))
        .send()
        .await
        .unwrap();
    let mut bodies = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !bodies.iter().any(|b: &String| b.contains("TENANT#real")) {
        assert!(std::time::Instant::now() < deadline, "the real change never arrived: {bodies:?}");
        let received = h.sqs.receive_message().queue_url(h.queue_url()).max_number_of_messages(10);
        let received = received.wait_time_seconds(1).send().await.unwrap();
        bodies.extend(received.messages().iter().filter_map(|m| m.body().map(String::from)));
    }
    for body in &bodies {
        let event: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(!body.contains("TENANT#victim"), "a forged event reached the queue: {body}");
        assert_eq!(event["source"], format!("Pipe {pipe}"), "{body}");
    }
    h.finish().await;
}
