//! The controller binary as it runs in a pod: metrics and probes over HTTP,
//! leader election between processes, SIGTERM and SIGKILL, and logs that never
//! carry a secure value. Real kube-apiserver and moto; the controller runs as
//! separate processes of the built binary.
//!
//! A controller sees the whole cluster, so these tests take turns.

mod support;

use support::{
    eventually,
    process::{Process, kubeconfig_as_service_account},
};

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_ssm::types::ParameterType;
use k8s_openapi::api::{core::v1::ServiceAccount, rbac::v1::ClusterRoleBinding};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use serde_json::json;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One test's world (stores, queue) with one tenant namespace.
struct World {
    world: support::world::World,
    ns: String,
    tenant: String,
}

impl std::ops::Deref for World {
    type Target = support::world::World;
    fn deref(&self) -> &support::world::World {
        &self.world
    }
}

impl World {
    async fn new(name: &str) -> World {
        let mut world = support::world::World::with_queue(name, 5, 30).await;
        world.standard_stores().await;
        let tenant = world.tenant(0);
        let ns = world.namespace("ns", Some(&tenant)).await;
        World { world, ns, tenant }
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--event-queue-url".into(),
            self.queue_url().into(),
            "--lease-name".into(),
            format!("{}-lease", self.id),
            "--log-format".into(),
            "json".into(),
        ]
    }

    async fn tenant_config(&self, name: &str, spec: serde_json::Value) {
        self.world.tenant_config(&self.ns, name, spec).await;
    }

    async fn wait_ready(&self, n: usize) {
        self.world.wait_ready_count(&self.ns, n).await
    }

    async fn config_map(&self, name: &str) -> BTreeMap<String, String> {
        self.world.config_map(&self.ns, name).await
    }

    /// Messages on the event queue, visible or being handled.
    async fn queued_messages(&self) -> u64 {
        let (visible, in_flight) = self.queue_depth(self.queue_url()).await;
        visible + in_flight
    }

    async fn parameters(&self) -> usize {
        self.parameter_count(&format!("{}/{}", self.prefix, self.tenant)).await
    }

    /// Deletes the test's objects with a controller running, then its stores.
    async fn finish(self) {
        let mut cleaner = Process::spawn("cleanup", &["--leader-election", "false"], &[]);
        self.world.clean_up().await;
        cleaner.signal("TERM");
        assert!(cleaner.wait_exit(Duration::from_secs(30)).success());
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_and_readiness_follows_the_caches() {
    let _turn = SERIAL.lock().await;
    let w = World::new("ops-metrics").await;

    // An identity that may not list anything: the caches cannot sync, /readyz says so.
    let sa_name = format!("{}-sa", w.id);
    let sas = Api::<ServiceAccount>::namespaced(w.client.clone(), &w.ns);
    let sa: ServiceAccount = serde_json::from_value(json!({ "metadata": { "name": sa_name } })).unwrap();
    sas.create(&PostParams::default(), &sa).await.unwrap();
    let kubeconfig = kubeconfig_as_service_account(&w.client, &w.ns, &sa_name).await;
    // A backlog waiting when the controller starts, as a new leader finds it:
    // an object and an out-of-band change to its item, its event queued.
    let db = format!("{}-db", w.id);
    w.tenant_config("payments", json!({ "defaultTags": [db], "entries": [{ "key": "k", "value": "v" }] })).await;
    let item = [("pk", format!("TENANT#{}", w.tenant)), ("sk", "CONFIG#payments".to_string())];
    let backlog = w
        .ddb
        .update_item()
        .table_name(format!("{}-table", w.id))
        .set_key(Some(item.into_iter().map(|(k, v)| (k.to_string(), AttributeValue::S(v))).collect()))
        .update_expression("SET #d = :m")
        .expression_attribute_names("#d", "data")
        .expression_attribute_values(
            ":m",
            AttributeValue::M([("backlog".to_string(), AttributeValue::S("1".into()))].into()),
        );
    backlog.send().await.unwrap();
    eventually("the change's event waits in the queue", || async { (w.queued_messages().await >= 1).then_some(()) })
        .await;
    let mut args = w.args();
    args.extend(["--leader-election".into(), "false".into()]);
    let mut p = Process::spawn("ops-metrics", &strs(&args), &[("KUBECONFIG", kubeconfig.to_str().unwrap())]);
    eventually("/healthz answers", || async { (p.get("/healthz")?.0 == 200).then_some(()) }).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(p.get("/readyz").unwrap().0, 503, "not ready before the caches sync");
    // Routed against empty caches the event would concern no object and be
    // deleted: nothing is received before the caches sync.
    let received = r#"tenant_config_event_messages_total{outcome="received"}"#;
    assert_eq!(p.metric(received), Some(0.0), "no message received before the caches sync");

    // Grant access: the watches retry, the caches sync, /readyz turns 200.
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": { "name": sa_name },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin" },
        "subjects": [{ "kind": "ServiceAccount", "name": sa_name, "namespace": w.ns }]
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(w.client.clone()).create(&PostParams::default(), &binding).await.unwrap();
    eventually("/readyz 200 after the caches sync", || async { (p.get("/readyz")?.0 == 200).then_some(()) }).await;

    w.wait_ready(1).await;
    eventually("the backlog's event acknowledged, not ignored", || async {
        let acked = p.metric(r#"tenant_config_event_messages_total{outcome="acked"}"#)? >= 1.0;
        (acked && w.queued_messages().await == 0).then_some(())
    })
    .await;
    assert_eq!(p.metric(r#"tenant_config_event_messages_total{outcome="ignored"}"#), Some(0.0));
    assert_eq!(w.config_map("payments").await.get("backlog").map(String::as_str), Some("1"));
    eventually("reconcile and store metrics", || async {
        let ok = p.metric(r#"tenant_config_reconciles_total{result="success",error=""}"#)? >= 1.0;
        let writes =
            p.metric(r#"tenant_config_store_calls_total{backend="DynamoDB",operation="UpdateItem",outcome="ok"}"#)?;
        let ready = p.metric(r#"tenant_config_tenant_configs{ready="true"}"#)?;
        (ok && writes >= 1.0 && ready >= 1.0).then_some(())
    })
    .await;
    assert_eq!(p.metric("tenant_config_leader"), Some(1.0));

    // An out-of-band change: the event metrics move, the lag is observed.
    // Let the follow-up reconciles of the first projection (its own status and
    // ConfigMap changes) finish: a change made while one of them runs would be
    // projected by it, not by the event this part measures.
    let reconciles = || p.metric(r#"tenant_config_reconciles_total{result="success",error=""}"#).unwrap_or(0.0);
    let mut last = reconciles();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = reconciles();
        if now == last {
            break;
        }
        last = now;
    }
    let acked = p.metric(r#"tenant_config_event_messages_total{outcome="acked"}"#).unwrap_or(0.0);
    w.ddb
        .update_item()
        .table_name(format!("{}-table", w.id))
        .key("pk", AttributeValue::S(format!("TENANT#{}", w.tenant)))
        .key("sk", AttributeValue::S("CONFIG#payments".into()))
        .update_expression("SET #d.#k = :v")
        .expression_attribute_names("#d", "data")
        .expression_attribute_names("#k", "extra")
        .expression_attribute_values(":v", AttributeValue::S("1".into()))
        .send()
        .await
        .unwrap();
    eventually("event metrics", || async {
        let now = p.metric(r#"tenant_config_event_messages_total{outcome="acked"}"#)?;
        let lag = p.metric("tenant_config_event_to_projection_seconds_count")?;
        (now > acked && lag >= 1.0).then_some(())
    })
    .await;
    assert!(w.config_map("payments").await.contains_key("extra"));
    let body = p.get("/metrics").unwrap().1;
    assert!(!body.contains(&w.ns) && !body.contains(&w.tenant), "no namespace or tenant in metric labels");

    p.signal("TERM");
    assert!(p.wait_exit(Duration::from_secs(30)).success(), "exit 0 on SIGTERM");
    Api::<ClusterRoleBinding>::all(w.client.clone()).delete(&sa_name, &DeleteParams::default()).await.unwrap();
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time_and_prompt_handover() {
    let _turn = SERIAL.lock().await;
    let w = World::new("ops-lease").await;
    let mut args = w.args();
    // A resync every second: a standby must not make it (or any AWS call).
    args.extend(["--lease-duration".into(), "6s".into(), "--resync-interval".into(), "1s".into()]);
    let db = format!("{}-db", w.id);
    w.tenant_config("payments", json!({ "defaultTags": [db], "entries": [{ "key": "k", "value": "v" }] })).await;

    let mut a = Process::spawn("ops-lease-a", &strs(&args), &[]);
    let leader_a = || async { (a.metric("tenant_config_leader")? == 1.0).then_some(()) };
    eventually("a leads", leader_a).await;
    let mut b = Process::spawn("ops-lease-b", &strs(&args), &[]);
    eventually("b is up and standing by", || async { (b.get("/readyz")?.0 == 200).then_some(()) }).await;
    w.wait_ready(1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(b.metric("tenant_config_leader"), Some(0.0), "b stands by");
    // The series exists from the start (at zero), so that alerts see it.
    assert_eq!(
        b.metric(r#"tenant_config_reconciles_total{result="success",error=""}"#),
        Some(0.0),
        "b reconciles nothing"
    );
    assert_eq!(
        b.metric(r#"tenant_config_store_calls_total{backend="sqs",operation="ReceiveMessage",outcome="ok"}"#),
        None,
        "b reads nothing from the queue"
    );
    assert_eq!(b.metric_sum("tenant_config_store_calls_total", &[]), 0.0, "b makes no AWS call at all");
    let resynced = |p: &Process| p.metric_sum("tenant_config_resync_objects_total", &[]);
    assert!(resynced(&a) >= 1.0, "a resyncs");
    assert_eq!(resynced(&b), 0.0, "b does not");
    assert!(a.metric(r#"tenant_config_reconciles_total{result="success",error=""}"#).unwrap_or(0.0) >= 1.0);

    // SIGKILL the leader: b takes over within the lease duration.
    a.signal("KILL");
    a.wait_exit(Duration::from_secs(5));
    let killed = Instant::now();
    eventually("b leads after a is killed", || async { (b.metric("tenant_config_leader")? == 1.0).then_some(()) })
        .await;
    let takeover = killed.elapsed();
    println!("takeover after SIGKILL: {takeover:?}");
    assert!(takeover < Duration::from_secs(6 + 4), "within the lease duration (+ a renew period): {takeover:?}");

    // SIGTERM releases the lease: a new standby takes over without waiting for expiry.
    let c = Process::spawn("ops-lease-c", &strs(&args), &[]);
    eventually("c standing by", || async { (c.get("/readyz")?.0 == 200).then_some(()) }).await;
    b.signal("TERM");
    let terminated = Instant::now();
    eventually("c leads after b stops", || async { (c.metric("tenant_config_leader")? == 1.0).then_some(()) }).await;
    let handover = terminated.elapsed();
    println!("handover after SIGTERM: {handover:?}");
    // Well before the lease would expire (6 s), also when b releases it before
    // c's watch on it has started (then c waits a second for its manager).
    assert!(handover < Duration::from_secs(3), "SIGTERM hands over before the lease would expire: {handover:?}");
    // After the Lease, b lets its long poll end (≤ 20 s) to release what it brings.
    assert!(b.wait_exit(Duration::from_secs(30)).success(), "exit 0 on SIGTERM; log: {}", b.logs());
    println!("b exited {:?} after SIGTERM", terminated.elapsed());
    assert!(b.logs().contains("lease released"), "b released the lease");

    // The new leader works: a change arrives.
    w.tenant_config("second", json!({ "defaultTags": [db], "entries": [{ "key": "k", "value": "v" }] })).await;
    w.wait_ready(2).await;
    drop(c);
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_leaves_nothing_half_done() {
    let _turn = SERIAL.lock().await;
    let w = World::new("ops-term").await;
    let mut args = w.args();
    args.extend(["--leader-election".into(), "false".into()]);
    let ssm_tag = format!("{}-ssm", w.id);
    // 30 objects × 2 parameters at 3 writes/s: about 20 s of work.
    for n in 0..30 {
        w.tenant_config(
            &format!("c{n}"),
            json!({ "defaultTags": [ssm_tag], "entries": [{ "key": "a", "value": "1" }, { "key": "b", "value": "2" }] }),
        )
        .await;
    }
    let mut first = Process::spawn("ops-term-1", &strs(&args), &[]);
    eventually("busy: some parameters written", || async { (w.parameters().await >= 10).then_some(()) }).await;
    first.signal("TERM");
    let status = first.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit 0 on SIGTERM; log: {}", first.logs());
    let written_before = w.parameters().await;
    assert!(written_before < 60, "stopped mid-run ({written_before} of 60 written)");

    let second = Process::spawn("ops-term-2", &strs(&args), &[]);
    w.wait_ready(30).await;
    assert_eq!(w.parameters().await, 60);
    let puts = eventually("second process metrics", || async {
        second.metric(
            r#"tenant_config_store_calls_total{backend="ParameterStore",operation="PutParameter",outcome="ok"}"#,
        )
    })
    .await;
    assert_eq!(puts as usize, 60 - written_before, "the restart wrote exactly what was pending");
    drop(second);

    // SIGTERM while still starting (before the caches have listed), as when a
    // pod is stopped right after it started: a prompt, clean exit.
    for (n, leader_election) in [(3, "false"), (4, "true")] {
        let mut args = w.args();
        args.extend(["--leader-election".into(), leader_election.into()]);
        let mut early = Process::spawn(&format!("ops-term-{n}"), &strs(&args), &[]);
        std::thread::sleep(Duration::from_millis(30));
        early.signal("TERM");
        let started = std::time::Instant::now();
        let status = early.wait_exit(Duration::from_secs(10));
        assert!(status.success(), "exit 0 on an early SIGTERM; log: {}", early.logs());
        println!("SIGTERM 30 ms after start (leader election {leader_election}): exited in {:?}", started.elapsed());
    }
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_values_never_reach_the_logs() {
    let _turn = SERIAL.lock().await;
    let w = World::new("ops-secret").await;
    let mut args = w.args();
    args.extend([
        "--leader-election".into(),
        "false".into(),
        "--secure-projection".into(),
        "--log-level".into(),
        "trace".into(),
    ]);
    let secret = "sEcReT-vAlUe-7d1f";
    let ssm_tag = format!("{}-ssm", w.id);
    let mut p = Process::spawn("ops-secret", &strs(&args), &[]);
    w.tenant_config("payments", json!({
        "defaultTags": [ssm_tag], "entries": [{ "key": "password", "value": secret, "secure": true }, { "key": "user", "value": "u" }],
        "projection": { "secretName": "payments-secret" }
    }))
    .await;
    w.wait_ready(1).await;
    // Secure values also travel back: an operator adds one out of band, the event brings it.
    let rotated = "oUtOfBaNd-vAlUe-91c2";
    w.ssm
        .put_parameter()
        .name(format!("/{}/{}/_/payments/api-token", w.id, w.tenant))
        .value(rotated)
        .r#type(ParameterType::SecureString)
        .overwrite(true)
        .send()
        .await
        .unwrap();
    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(w.client.clone(), &w.ns);
    eventually("rotated value projected", || async {
        let s = secrets.get_opt("payments-secret").await.ok()??;
        (s.data?.get("api-token")?.0 == rotated.as_bytes()).then_some(())
    })
    .await;
    p.signal("TERM");
    assert!(p.wait_exit(Duration::from_secs(30)).success());
    let logs = p.logs();
    assert!(logs.len() > 10_000, "trace logging was on ({} bytes)", logs.len());
    use base64::Engine;
    for value in [secret, rotated] {
        let b64 = base64::engine::general_purpose::STANDARD.encode(value);
        assert!(!logs.contains(value), "{value} appears in the logs");
        assert!(!logs.contains(&b64), "{value} appears base64-encoded in the logs");
    }
    w.finish().await;
}

/// An HTTP endpoint that cannot bind is an error at start with the address
/// named, not a controller running without probes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_is_an_error_at_start() {
    support::env("KUBECONFIG");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tenant-config-controller"))
        .args(["run", "--leader-election", "false", "--http-addr", &address])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the controller runs");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the controller kept running with its HTTP port taken");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "a taken port fails the start; stderr: {stderr}");
    assert!(stderr.contains(&format!("HTTP endpoint {address}")), "the error names the address: {stderr}");
}

/// The memory bound a namespace within its quota cannot break: 40 objects at
/// the CRD's total-size cap (256 KiB of entries each, as a ResourceQuota of
/// 40 TenantConfigs would allow), half including a shared path (whose own-store
/// values a shared-path change could reuse), reconciled and projected, keep
/// the controller's RSS, read from its /metrics, under the chart's memory
/// limit; the process never restarts. Prints the cost per object, from which
/// README's memory model is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_of_maximum_size_objects_stays_under_the_charts_memory_limit() {
    let _turn = SERIAL.lock().await;
    let w = World::new("ops-memory").await;
    let values =
        std::fs::read_to_string(support::repo_root().join("charts/tenant-config-controller/values.yaml")).unwrap();
    let limit_mib: f64 = values
        .lines()
        .find_map(|l| l.trim().strip_prefix("limits: { memory: ")?.strip_suffix("Mi }")?.parse().ok())
        .expect("the chart's memory limit in values.yaml");
    let mut p = Process::spawn("ops-memory", &strs(&w.args()), &[]);
    eventually("ready", || async { (p.get("/readyz")?.0 == 200).then_some(()) }).await;
    let rss_mib = |p: &Process| p.metric("process_resident_memory_bytes").expect("RSS in /metrics") / 1048576.0;
    let before = rss_mib(&p);
    let objects = 40;
    let value = "x".repeat(8000);
    for n in 0..objects {
        // 32 × (3 + 8000) bytes: just under the 256 KiB cap.
        let entries: Vec<_> = (0..32).map(|k| json!({ "key": format!("k{k:02}"), "value": value })).collect();
        let mut spec = json!({ "defaultTags": [w.tag("db")], "entries": entries });
        if n % 2 == 0 {
            spec["include"] = json!([{ "parameterPath": format!("{}/prod", w.shared) }]);
        }
        w.tenant_config(&format!("big{n}"), spec).await;
    }
    w.wait_ready(objects).await;
    let peak = rss_mib(&p);
    // The allocator gives freed pages back after about ten seconds.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let settled = rss_mib(&p);
    println!(
        "RSS {before:.0} MiB → {peak:.0} MiB when all were Ready, {settled:.0} MiB 15 s later, with {objects} objects \
         of 256 KiB ({:.2} MiB per object settled); chart limit {limit_mib:.0} MiB",
        (settled - before) / objects as f64
    );
    for rss in [peak, settled] {
        assert!(rss < limit_mib, "RSS {rss:.0} MiB over the chart's limit {limit_mib} MiB");
    }
    assert!(p.child.try_wait().unwrap().is_none(), "the controller is still the same process");
    p.signal("TERM");
    assert!(p.wait_exit(Duration::from_secs(30)).success());
    w.finish().await;
}
