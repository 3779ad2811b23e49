//! End-to-end freshness: a store write made outside the controller → the
//! ConfigMap updated → the file inside a pod that mounts it, on the local node
//! with the kubelet's defaults (syncFrequency 1 m, as on EKS).
//!
//! `scripts/bench.sh freshness [--samples N] [--spacing S]` runs it (release
//! controller, node stack) and prints a markdown table: p50/p95/p99/max for
//! "store write → ConfigMap" and "store write → file in the pod". N objects
//! each have a pod printing its mounted file every 0.2 s; their changes are
//! written S seconds apart, so they fall at different points of the kubelet's
//! sync cycle. The time a pod saw a value is the container log's own timestamp
//! of the first line that shows it (same clock as the writer's).

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use futures::StreamExt;
use k8s_openapi::{
    api::core::v1::{ConfigMap, Namespace, Pod},
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
}

fn args() -> Args {
    let mut args = Args { samples: 20, spacing: Duration::from_secs(3) };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--samples" => args.samples = it.next().and_then(|v| v.parse().ok()).expect("--samples N"),
            "--spacing" => {
                args.spacing = it.next().and_then(|v| humantime::parse_duration(&v).ok()).expect("--spacing 3s")
            }
            "--bench" => {}
            other => panic!("unknown argument {other}; use --samples N --spacing S"),
        }
    }
    args
}

/// A restricted busybox pod that prints its mounted `probe` file every 0.2 s.
fn reader(name: &str, ns: &str, config_map: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": ns },
        "spec": {
            "securityContext": { "runAsNonRoot": true, "runAsUser": 65534, "seccompProfile": { "type": "RuntimeDefault" } },
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "app", "image": support::env("TCC_BUSYBOX_IMAGE"), "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", "while true; do cat /config/probe; echo; sleep 0.2; done"],
                "volumeMounts": [{ "name": "config", "mountPath": "/config" }],
                "securityContext": { "allowPrivilegeEscalation": false, "capabilities": { "drop": ["ALL"] } }
            }],
            "volumes": [{ "name": "config", "configMap": { "name": config_map } }]
        }
    }))
    .unwrap()
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
    let mut controller =
        Process::spawn(&id, &["--leader-election", "false", "--event-queue-url", &queue.queue_url], &[]);

    let (tcs, pods) =
        (Api::<TenantConfig>::namespaced(client.clone(), &ns), Api::<Pod>::namespaced(client.clone(), &ns));
    for i in 0..args.samples {
        let tc: TenantConfig = serde_json::from_value(json!({
            "apiVersion": "tenantconfig.io/v1alpha1", "kind": "TenantConfig", "metadata": { "name": format!("f{i}") },
            "spec": { "defaultTags": [id], "entries": [{ "key": "owned", "value": "1" }] }
        }))
        .unwrap();
        tcs.create(&PostParams::default(), &tc).await.unwrap();
        pods.create(&PostParams::default(), &reader(&format!("f{i}-app"), &ns, &format!("f{i}"))).await.unwrap();
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
    support::eventually_within(Duration::from_secs(120), "every reader pod Running", || async {
        let list = pods.list(&Default::default()).await.ok()?;
        let running =
            list.items.iter().filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
        (running.count() == args.samples).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await; // the first projections settle

    let ddb = aws_sdk_dynamodb::Client::new(&support::aws_config().await);
    let mut written = Vec::new();
    for i in 0..args.samples {
        let value = format!("v{i}-{id}");
        support::put_foreign_key(&ddb, &table, (&format!("TENANT#{tenant}"), &format!("CONFIG#f{i}")), "probe", &value)
            .await;
        written.push((i, value, SystemTime::now()));
        tokio::time::sleep(args.spacing).await;
    }
    let mut to_config_map = Vec::new();
    let mut to_file = Vec::new();
    for (i, value, at) in &written {
        let pod = format!("f{i}-app");
        let in_pod = support::eventually_within(Duration::from_secs(180), &format!("{pod} shows {value}"), || {
            first_seen_in_pod(&pods, &pod, value)
        })
        .await;
        to_file.push(in_pod.duration_since(*at).unwrap_or_default());
        let cm = seen_cm.lock().unwrap().get(value).copied().expect("the watch saw the ConfigMap change first");
        to_config_map.push(cm.duration_since(*at).unwrap_or_default());
    }
    recorder.abort();

    println!(
        "\nstore write → what the pod sees ({} objects, changes {:?} apart, kubelet defaults)\n",
        args.samples, args.spacing
    );
    println!("| path | samples | p50 | p95 | p99 | max |");
    println!("|---|---|---|---|---|---|");
    println!("{}", row("store write → ConfigMap (event path)", to_config_map));
    println!("{}", row("store write → mounted file in the pod", to_file));

    for i in 0..args.samples {
        let _ = pods.delete(&format!("f{i}-app"), &DeleteParams::default()).await;
        let _ = tcs.delete(&format!("f{i}"), &DeleteParams::default()).await;
    }
    support::eventually_within(Duration::from_secs(120), "the TenantConfigs deleted", || async {
        tcs.list(&Default::default()).await.ok()?.items.is_empty().then_some(())
    })
    .await;
    controller.signal("TERM");
    controller.wait_exit(Duration::from_secs(30));
}
