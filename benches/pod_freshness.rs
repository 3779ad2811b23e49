//! End-to-end freshness: a store write made outside the controller → the
//! ConfigMap updated → the file inside a pod that mounts it, on the local node
//! with the kubelet's defaults (syncFrequency 1 m, as on EKS).
//!
//! `scripts/bench.sh freshness [--samples N] [--spacing S] [--rollout-window W]`
//! runs it (release controller with refresh and rollout on, node stack) and
//! prints a markdown table: p50/p95/p99/max for "store write → ConfigMap",
//! "→ mounted file" in a pod labelled for refresh and in one that is not, and
//! "→ env value" of a Deployment labelled for rollout (until its new pod is
//! Ready). N objects each have the two pods printing the mounted file every
//! 0.2 s and the Deployment; their changes are written S seconds apart, so
//! they fall at different points of the kubelet's sync cycle. The time a pod
//! saw a value is the container log's own timestamp of the first line that
//! shows it (same clock as the writer's).

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Namespace, Pod},
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{DeleteParams, LogParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;
use support::{percentile, process::Process};
use tenant_config_controller::api::{ConfigStore, TenantConfig};

struct Args {
    samples: usize,
    spacing: Duration,
    rollout_window: String,
}

fn args() -> Args {
    // 16: three pods per sample and a rollout's surge pod stay within the
    // local node's maxPods (60).
    let mut args = Args { samples: 16, spacing: Duration::from_secs(3), rollout_window: "10s".into() };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--samples" => args.samples = it.next().and_then(|v| v.parse().ok()).expect("--samples N"),
            "--spacing" => {
                args.spacing = it.next().and_then(|v| humantime::parse_duration(&v).ok()).expect("--spacing 3s")
            }
            "--rollout-window" => args.rollout_window = it.next().expect("--rollout-window 10s"),
            "--bench" => {}
            other => panic!("unknown argument {other}; use --samples N --spacing S --rollout-window W"),
        }
    }
    args
}

/// A restricted busybox pod spec that runs `script` with ConfigMap
/// `config_map` mounted at /config and as its environment.
fn reader_spec(config_map: &str, script: &str) -> serde_json::Value {
    json!({
        "securityContext": { "runAsNonRoot": true, "runAsUser": 65534, "seccompProfile": { "type": "RuntimeDefault" } },
        "terminationGracePeriodSeconds": 1,
        "containers": [{
            "name": "app", "image": support::env("TCC_BUSYBOX_IMAGE"), "imagePullPolicy": "Never",
            "command": ["/bin/sh", "-c", script],
            "envFrom": [{ "configMapRef": { "name": config_map } }],
            "volumeMounts": [{ "name": "config", "mountPath": "/config" }],
            "securityContext": { "allowPrivilegeEscalation": false, "capabilities": { "drop": ["ALL"] } }
        }],
        "volumes": [{ "name": "config", "configMap": { "name": config_map } }]
    })
}

/// A pod that prints its mounted `probe` file every 0.2 s; `refresh` opts it in.
fn reader(name: &str, ns: &str, config_map: &str, refresh: bool) -> Pod {
    let labels = if refresh { json!({ "tenantconfig.io/refresh": "true" }) } else { json!({}) };
    serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": ns, "labels": labels },
        "spec": reader_spec(config_map, "while true; do cat /config/probe; echo; sleep 0.2; done")
    }))
    .unwrap()
}

/// A Deployment opted in to rollout whose pod prints its `probe` env value.
fn env_reader(name: &str, config_map: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { "tenantconfig.io/rollout": "true" } },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": name } },
            "template": { "metadata": { "labels": { "app": name } },
                          "spec": reader_spec(config_map, "echo \"$probe\"; while true; do sleep 3600; done") }
        }
    }))
    .unwrap()
}

/// The Deployment's rollout is complete: its latest generation observed,
/// updated, and its only pod Ready.
fn rolled_out(d: &Deployment) -> bool {
    let Some(status) = &d.status else { return false };
    status.observed_generation == d.metadata.generation
        && status.updated_replicas == Some(1)
        && status.ready_replicas == Some(1)
        && status.replicas == Some(1)
}

/// When the pod first printed `value`, from the container log's timestamps.
async fn first_seen_in_pod(pods: &Api<Pod>, pod: &str, value: &str) -> Option<SystemTime> {
    let logs = pods.logs(pod, &LogParams { timestamps: true, ..Default::default() }).await.ok()?;
    logs.lines().find_map(|line| {
        let (at, text) = line.split_once(' ')?;
        if text != value {
            return None;
        }
        at.parse::<Timestamp>().ok().map(SystemTime::from)
    })
}

fn row(path: &str, mut samples: Vec<Duration>) -> String {
    samples.sort();
    let s = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    format!(
        "| {path} | {} | {} | {} | {} | {} |",
        samples.len(),
        s(percentile(&samples, 50.0)),
        s(percentile(&samples, 95.0)),
        s(percentile(&samples, 99.0)),
        s(*samples.last().unwrap())
    )
}

#[tokio::main]
async fn main() {
    let args = args();
    assert_eq!(
        std::env::var("TCC_NODE").as_deref(),
        Ok("1"),
        "needs the node stack (scripts/bench.sh freshness starts it)"
    );
    support::install_crds();
    let client: Client = support::kube_client().await;
    let id = support::unique("fresh");
    let (ns, tenant) = (format!("{id}-ns"), format!("{id}-t"));
    let queue = support::event_queue(&id, &[&format!("/{id}")], 3, 30);
    let table = format!("{id}-table");
    let namespace: Namespace = serde_json::from_value(json!({ "metadata": { "name": ns,
        "labels": { "tenantconfig.io/tenant": tenant, "pod-security.kubernetes.io/enforce": "restricted" } } }))
    .unwrap();
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &namespace).await.unwrap();
    let store: ConfigStore = serde_json::from_value(json!({
        "apiVersion": "tenantconfig.io/v1alpha1", "kind": "ConfigStore", "metadata": { "name": id },
        "spec": { "tags": [id], "dynamodb": { "tableName": table } }
    }))
    .unwrap();
    Api::<ConfigStore>::all(client.clone()).create(&PostParams::default(), &store).await.unwrap();
    let mut controller = Process::spawn(
        &id,
        &[
            &["--leader-election", "false", "--event-queue-url", &queue.queue_url][..],
            &["--refresh-pods", "true", "--rollout-workloads", "true", "--rollout-window", &args.rollout_window],
        ]
        .concat(),
        &[],
    );

    let (tcs, pods) =
        (Api::<TenantConfig>::namespaced(client.clone(), &ns), Api::<Pod>::namespaced(client.clone(), &ns));
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    for i in 0..args.samples {
        let tc: TenantConfig = serde_json::from_value(json!({
            "apiVersion": "tenantconfig.io/v1alpha1", "kind": "TenantConfig", "metadata": { "name": format!("f{i}") },
            "spec": { "defaultTags": [id], "entries": [{ "key": "owned", "value": "1" }] }
        }))
        .unwrap();
        tcs.create(&PostParams::default(), &tc).await.unwrap();
        for (pod, refresh) in [(format!("f{i}-refreshed"), true), (format!("f{i}-plain"), false)] {
            pods.create(&PostParams::default(), &reader(&pod, &ns, &format!("f{i}"), refresh)).await.unwrap();
        }
        deployments.create(&PostParams::default(), &env_reader(&format!("f{i}-env"), &format!("f{i}"))).await.unwrap();
    }
    // ConfigMap updates, as the watch sees them.
    let seen_cm: Arc<Mutex<HashMap<String, SystemTime>>> = Arc::default();
    let recorder = {
        let (seen, api) = (seen_cm.clone(), Api::<ConfigMap>::namespaced(client.clone(), &ns));
        tokio::spawn(async move {
            let mut events = watcher(api, Default::default()).applied_objects().boxed();
            while let Some(Ok(cm)) = events.next().await {
                if let Some(probe) = cm.data.as_ref().and_then(|d| d.get("probe")) {
                    seen.lock().unwrap().entry(probe.clone()).or_insert_with(SystemTime::now);
                }
            }
        })
    };
    support::eventually_within(Duration::from_secs(180), "every reader pod Running", || async {
        let list = pods.list(&Default::default()).await.ok()?;
        let running =
            list.items.iter().filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
        (running.count() == 3 * args.samples).then_some(())
    })
    .await;
    support::eventually_within(Duration::from_secs(300), "every Deployment rolled out", || async {
        let list = deployments.list(&Default::default()).await.ok()?;
        (list.items.iter().filter(|d| rolled_out(d)).count() == args.samples).then_some(())
    })
    .await;
    // Past the kubelet's syncs that follow a container start: what is measured
    // below is a settled pod, as in production.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let generations: HashMap<String, i64> = deployments
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|d| (d.metadata.name.clone().unwrap(), d.metadata.generation.unwrap_or_default()))
        .collect();
    // Rollouts completed after the write, as a poll of the Deployments sees them.
    let rolled: Arc<Mutex<HashMap<String, SystemTime>>> = Arc::default();
    let rollout_poller = {
        let (rolled, api) = (rolled.clone(), deployments.clone());
        tokio::spawn(async move {
            loop {
                if let Ok(list) = api.list(&Default::default()).await {
                    for d in list.items {
                        let name = d.metadata.name.clone().unwrap_or_default();
                        let newer = d.metadata.generation.unwrap_or_default() > generations[&name];
                        if newer && rolled_out(&d) {
                            rolled.lock().unwrap().entry(name).or_insert_with(SystemTime::now);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let ddb = aws_sdk_dynamodb::Client::new(&support::aws_config().await);
    let mut written = Vec::new();
    for i in 0..args.samples {
        let value = format!("v{i}-{id}");
        support::put_foreign_key(&ddb, &table, (&format!("TENANT#{tenant}"), &format!("CONFIG#f{i}")), "probe", &value)
            .await;
        written.push((i, value, SystemTime::now()));
        tokio::time::sleep(args.spacing).await;
    }
    let (mut to_config_map, mut refreshed, mut plain, mut rollout) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, value, at) in &written {
        for (pod, samples) in [(format!("f{i}-refreshed"), &mut refreshed), (format!("f{i}-plain"), &mut plain)] {
            let in_pod = support::eventually_within(Duration::from_secs(180), &format!("{pod} shows {value}"), || {
                first_seen_in_pod(&pods, &pod, value)
            })
            .await;
            samples.push(in_pod.duration_since(*at).unwrap_or_default());
        }
        let cm = seen_cm.lock().unwrap().get(value).copied().expect("the watch saw the ConfigMap change first");
        to_config_map.push(cm.duration_since(*at).unwrap_or_default());
        let deployment = format!("f{i}-env");
        let done =
            support::eventually_within(Duration::from_secs(120), &format!("{deployment} rolled out"), || async {
                rolled.lock().unwrap().get(&deployment).copied()
            })
            .await;
        rollout.push(done.duration_since(*at).unwrap_or_default());
        // The rolled pod has the new value in its environment.
        let list = pods.list(&kube::api::ListParams::default().labels(&format!("app={deployment}"))).await.unwrap();
        let live: Vec<_> = list.items.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
        let [pod] = &live[..] else { panic!("{deployment}: one live pod after the rollout, found {}", live.len()) };
        let printed = pods.logs(pod.metadata.name.as_deref().unwrap(), &Default::default()).await.unwrap();
        assert_eq!(printed.trim(), value, "{deployment}'s new pod has the new env value");
    }
    recorder.abort();
    rollout_poller.abort();

    println!(
        "\nstore write → what the pod sees ({} objects, changes {:?} apart, kubelet defaults, rollout window {})\n",
        args.samples, args.spacing, args.rollout_window
    );
    println!("| path | samples | p50 | p95 | p99 | max |");
    println!("|---|---|---|---|---|---|");
    println!("{}", row("store write → ConfigMap (event path)", to_config_map));
    println!("{}", row("→ mounted file, pod labelled `tenantconfig.io/refresh`", refreshed));
    println!("{}", row("→ mounted file, pod not labelled (kubelet's own sync)", plain));
    println!("{}", row("→ env value: Deployment labelled `tenantconfig.io/rollout`, new pod Ready", rollout));

    for i in 0..args.samples {
        let _ = deployments.delete(&format!("f{i}-env"), &DeleteParams::default()).await;
        for pod in [format!("f{i}-refreshed"), format!("f{i}-plain")] {
            let _ = pods.delete(&pod, &DeleteParams::default()).await;
        }
        let _ = tcs.delete(&format!("f{i}"), &DeleteParams::default()).await;
    }
    support::eventually_within(Duration::from_secs(120), "the TenantConfigs deleted", || async {
        tcs.list(&Default::default()).await.ok()?.items.is_empty().then_some(())
    })
    .await;
    controller.signal("TERM");
    controller.wait_exit(Duration::from_secs(30));
}
