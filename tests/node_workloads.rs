//! Pods see a store change without the kubelet's delay, on a real node with
//! kubelet defaults (`scripts/testenv.sh up --node`): refreshed pods read the
//! new file at once, opted-in Deployments roll once per burst, and nothing
//! that did not opt in, or lives in another namespace, is touched. The
//! controller runs as a host process (the chart's rights are proven in
//! tests/helm_chart.rs); the tenant pods run on the node.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Namespace, Pod},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, LogParams, PostParams},
};
use serde_json::{Value, json};
use support::{eventually_within, process::Process, world::World};
use tenant_config_controller::api::{ConfigStore, TenantConfig};

const DIGEST: &str = "tenantconfig.io/config-digest";

fn busybox() -> String {
    assert_eq!(
        std::env::var("TCC_NODE").as_deref(),
        Ok("1"),
        "these tests need the node: scripts/testenv.sh up --node (./scripts/test.sh starts it)"
    );
    support::env("TCC_BUSYBOX_IMAGE")
}

/// A store, its event path, and tenant namespaces each with a TenantConfig
/// `payments` projecting ConfigMap `payments`.
struct Stack {
    world: World,
}

impl std::ops::Deref for Stack {
    type Target = World;
    fn deref(&self) -> &World {
        &self.world
    }
}

impl Stack {
    async fn new(prefix: &str) -> Stack {
        let mut world = World::with_queue(prefix, 5, 30).await;
        let table = world.table.clone();
        world.store("db", json!({ "tags": ["db"], "dynamodb": { "tableName": table } })).await;
        Stack { world }
    }

    /// A tenant namespace `{id}-{name}` (tenant `{id}-{name}`) with TenantConfig `payments`.
    async fn tenant(&self, name: &str) -> String {
        let ns = format!("{}-{name}", self.id);
        let namespace: Namespace = serde_json::from_value(json!({
            "metadata": { "name": ns, "labels": { "tenantconfig.io/tenant": ns } }
        }))
        .unwrap();
        Api::<Namespace>::all(self.client.clone()).create(&PostParams::default(), &namespace).await.unwrap();
        let tc: TenantConfig = serde_json::from_value(json!({
            "apiVersion": "tenantconfig.io/v1alpha1", "kind": "TenantConfig", "metadata": { "name": "payments" },
            "spec": { "defaultTags": [format!("{}-db", self.id)], "entries": [{ "key": "provider", "value": "stripe" }] }
        }))
        .unwrap();
        Api::<TenantConfig>::namespaced(self.client.clone(), &ns).create(&PostParams::default(), &tc).await.unwrap();
        eventually_within(Duration::from_secs(60), "ConfigMap payments projected", || async {
            let cm = Api::<ConfigMap>::namespaced(self.client.clone(), &ns).get_opt("payments").await.ok()??;
            (cm.data?.get("provider")? == "stripe").then_some(())
        })
        .await;
        ns
    }

    /// Another writer sets `key` in the tenant's item; the event path brings it.
    async fn store_write(&self, ns: &str, key: &str, value: &str) {
        support::put_foreign_key(&self.ddb, &self.table, (&format!("TENANT#{ns}"), "CONFIG#payments"), key, value)
            .await;
    }

    async fn config_map_has(&self, ns: &str, key: &str, value: &str) -> bool {
        let cm = Api::<ConfigMap>::namespaced(self.client.clone(), ns).get_opt("payments").await.ok().flatten();
        cm.and_then(|cm| cm.data).is_some_and(|d| d.get(key).map(String::as_str) == Some(value))
    }

    /// The controller with both features on, as a host process.
    fn controller(&self, name: &str, extra: &[&str]) -> Process {
        let args = [
            &["--leader-election", "false", "--event-queue-url", self.queue_url()][..],
            &["--refresh-pods", "true", "--rollout-workloads", "true"],
            extra,
        ]
        .concat();
        Process::spawn(&format!("{}-{name}", self.id), &args, &[])
    }

    async fn cleanup(&self, namespaces: &[&str]) {
        // TenantConfigs go first, while a controller still runs (finalizers).
        let mut cleaner = self.controller("cleanup", &[]);
        for ns in namespaces {
            let tcs = Api::<TenantConfig>::namespaced(self.client.clone(), ns);
            let _ = tcs.delete("payments", &DeleteParams::default()).await;
            eventually_within(Duration::from_secs(60), "TenantConfig deleted", || async {
                tcs.get_opt("payments").await.ok()?.is_none().then_some(())
            })
            .await;
        }
        cleaner.signal("TERM");
        cleaner.wait_exit(Duration::from_secs(30));
        let _ =
            Api::<ConfigStore>::all(self.client.clone()).delete(&format!("{}-db", self.id), &Default::default()).await;
        for ns in namespaces {
            let _ = Api::<Namespace>::all(self.client.clone()).delete(ns, &DeleteParams::default()).await;
        }
    }
}

/// A busybox container reading ConfigMap `payments` as files and as env.
fn reader(image: &str, script: &str) -> Value {
    json!({
        "name": "app", "image": image, "imagePullPolicy": "Never",
        "command": ["/bin/sh", "-c", script],
        "envFrom": [{ "configMapRef": { "name": "payments" } }],
        "volumeMounts": [{ "name": "config", "mountPath": "/config" }],
        "securityContext": { "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                             "capabilities": { "drop": ["ALL"] }, "runAsNonRoot": true, "runAsUser": 65534 }
    })
}

fn pod_spec(image: &str, script: &str) -> Value {
    json!({
        "terminationGracePeriodSeconds": 1,
        "containers": [reader(image, script)],
        "volumes": [{ "name": "config", "configMap": { "name": "payments" } }]
    })
}

const PRINTS_FILE: &str = "while true; do echo \"region=$(cat /config/region 2>/dev/null)\"; sleep 0.2; done";
const PRINTS_ENV: &str = "echo \"region=$region\"; while true; do sleep 3600; done";

async fn last_line(client: &Client, ns: &str, pod: &str) -> Option<String> {
    let params = LogParams { tail_lines: Some(1), ..Default::default() };
    let logs = Api::<Pod>::namespaced(client.clone(), ns).logs(pod, &params).await.ok()?;
    logs.lines().last().map(str::to_string)
}

fn digest_of(pod: &Pod) -> Option<String> {
    pod.annotations().get(DIGEST).cloned()
}

/// Event notes of one reason about the TenantConfig `payments` in `ns`.
async fn event_notes(client: &Client, ns: &str, reason: &str) -> Vec<String> {
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    events
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("payments")
        })
        .filter_map(|e| e.note)
        .collect()
}

/// Tests take turns: each runs a controller that sees the whole cluster, and
/// one test's controller refreshing another test's pod first left the other's
/// patch count at 0 (seen once in the full suite).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshed_pod_reads_the_change_at_once_and_nothing_else_is_touched() {
    let _turn = SERIAL.lock().await;
    let image = busybox();
    let stack = Stack::new("refresh").await;
    // A per-object resync every 3 s: unchanged reconciles keep happening, and
    // must not patch anything.
    let controller = stack.controller("refresh", &["--resync-mode", "per-object", "--resync-interval", "3s"]);
    let ns = stack.tenant("acme").await;
    let pods = Api::<Pod>::namespaced(stack.client.clone(), &ns);
    for (name, labels) in [("refreshed", json!({ "tenantconfig.io/refresh": "true" })), ("plain", json!({}))] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": name, "labels": labels }, "spec": pod_spec(&image, PRINTS_FILE)
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    for name in ["refreshed", "plain"] {
        eventually_within(Duration::from_secs(60), "the pod runs and reads its file", || async {
            (last_line(&stack.client, &ns, name).await? == "region=").then_some(())
        })
        .await;
    }
    assert_eq!(digest_of(&pods.get("refreshed").await.unwrap()), None, "no change yet: not patched");
    // Past the kubelet's syncs that follow a container start: a settled pod,
    // as in production (right after a start the kubelet syncs often).
    tokio::time::sleep(Duration::from_secs(10)).await;

    // A store write reaches the refreshed pod's file long before the kubelet's
    // own sync (about a minute with its defaults).
    let written = Instant::now();
    stack.store_write(&ns, "region", "eu-west-1").await;
    eventually_within(Duration::from_secs(20), "the change reaches the refreshed pod's file", || async {
        (last_line(&stack.client, &ns, "refreshed").await? == "region=eu-west-1").then_some(())
    })
    .await;
    let refreshed_after = written.elapsed();
    let plain_saw_it = last_line(&stack.client, &ns, "plain").await == Some("region=eu-west-1".into());
    println!("store write → refreshed pod's file {refreshed_after:?}; the plain pod had it by then: {plain_saw_it}");
    let digest = digest_of(&pods.get("refreshed").await.unwrap()).expect("the refreshed pod carries the digest");
    assert!(digest.starts_with("sha256:"), "{digest}");
    assert_eq!(digest_of(&pods.get("plain").await.unwrap()), None, "a pod without the label is never touched");
    let notes = eventually_within(Duration::from_secs(10), "an Event names the refreshed pod", || async {
        Some(event_notes(&stack.client, &ns, "PodsRefreshed").await).filter(|n| !n.is_empty())
    })
    .await;
    assert!(notes[0].contains("refreshed") && !notes[0].contains("plain"), "{notes:?}");

    // Unchanged reconciles (resyncs) patch nothing more.
    let patched =
        |c: &Process| c.metric_sum("tenant_config_workload_patches_total", &["kind=\"Pod\"", "result=\"ok\""]);
    assert_eq!(patched(&controller), 1.0, "one pod patched, once");
    let reconciled = |c: &Process| c.metric_sum("tenant_config_reconciles_total", &["result=\"success\""]);
    let before = reconciled(&controller);
    eventually_within(Duration::from_secs(30), "two more (unchanged) resyncs of the object", || async {
        (reconciled(&controller) >= before + 2.0).then_some(())
    })
    .await;
    assert_eq!(patched(&controller), 1.0, "an unchanged reconcile refreshes nothing");
    assert_eq!(digest_of(&pods.get("refreshed").await.unwrap()), Some(digest.clone()));

    // A second change: a new digest, the file follows at once again.
    let written = Instant::now();
    stack.store_write(&ns, "region", "eu-central-1").await;
    eventually_within(Duration::from_secs(20), "the second change reaches the file", || async {
        (last_line(&stack.client, &ns, "refreshed").await? == "region=eu-central-1").then_some(())
    })
    .await;
    println!("second change → refreshed pod's file {:?}", written.elapsed());
    assert_ne!(digest_of(&pods.get("refreshed").await.unwrap()), Some(digest), "a new digest");
    assert_eq!(digest_of(&pods.get("plain").await.unwrap()), None);

    drop(controller);
    for pod in ["refreshed", "plain"] {
        let _ = pods.delete(pod, &DeleteParams::default()).await;
    }
    stack.cleanup(&[&ns]).await;
}

fn deployment(name: &str, image: &str, opted_in: bool) -> Deployment {
    let labels = if opted_in { json!({ "tenantconfig.io/rollout": "true" }) } else { json!({}) };
    serde_json::from_value(json!({
        "metadata": { "name": name, "labels": labels },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": name } },
            "template": { "metadata": { "labels": { "app": name } }, "spec": pod_spec(image, PRINTS_ENV) }
        }
    }))
    .unwrap()
}

/// The Deployment's generation and its pod template's digest annotation.
async fn rollout_state(client: &Client, ns: &str, name: &str) -> (i64, Option<String>) {
    let d = Api::<Deployment>::namespaced(client.clone(), ns).get(name).await.unwrap();
    let digest = d.spec.template.metadata.and_then(|m| m.annotations).and_then(|a| a.get(DIGEST).cloned());
    (d.metadata.generation.unwrap_or_default(), digest)
}

/// The one live pod of Deployment `name` printed `line`, and the rollout is complete.
async fn rolled_to(client: &Client, ns: &str, name: &str, line: &str) -> Option<()> {
    let d = Api::<Deployment>::namespaced(client.clone(), ns).get(name).await.ok()?;
    let status = d.status?;
    let complete = status.observed_generation == d.metadata.generation
        && status.updated_replicas == Some(1)
        && status.ready_replicas == Some(1)
        && status.replicas == Some(1);
    if !complete {
        return None;
    }
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("app={name}")))
        .await
        .ok()?;
    let [pod] = &pods.items[..] else { return None };
    (last_line(client, ns, &pod.name_any()).await? == line).then_some(())
}

async fn wait_rolled(stack: &Stack, ns: &str, name: &str, line: &str, what: &str) {
    eventually_within(Duration::from_secs(90), what, || rolled_to(&stack.client, ns, name, line)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opted_in_deployment_rolls_once_per_burst_and_survives_a_controller_kill() {
    let _turn = SERIAL.lock().await;
    let image = busybox();
    let stack = Stack::new("rollout").await;
    let window = ["--rollout-window", "5s"];
    let mut controller = stack.controller("rollout-1", &window);
    let (ns, other_ns) = (stack.tenant("acme").await, stack.tenant("globex").await);
    let deployments = Api::<Deployment>::namespaced(stack.client.clone(), &ns);
    deployments.create(&PostParams::default(), &deployment("web", &image, true)).await.unwrap();
    deployments.create(&PostParams::default(), &deployment("plain-web", &image, false)).await.unwrap();
    // Another tenant's Deployment, opted in, reading a ConfigMap of the same name.
    Api::<Deployment>::namespaced(stack.client.clone(), &other_ns)
        .create(&PostParams::default(), &deployment("web", &image, true))
        .await
        .unwrap();
    for (ns, name) in [(&ns, "web"), (&ns, "plain-web"), (&other_ns, "web")] {
        wait_rolled(&stack, ns, name, "region=", "the Deployments run").await;
    }
    assert_eq!(rollout_state(&stack.client, &ns, "web").await, (1, None), "nothing changed yet: not rolled");

    // One store write → one rollout; the new pod has the new env value.
    let written = Instant::now();
    stack.store_write(&ns, "region", "eu-west-1").await;
    wait_rolled(&stack, &ns, "web", "region=eu-west-1", "web rolled to the new value").await;
    println!("store write → new pod Ready with the new env {:?} (window 5 s)", written.elapsed());
    let (generation, digest) = rollout_state(&stack.client, &ns, "web").await;
    assert_eq!(generation, 2, "one rollout");
    assert!(digest.is_some_and(|d| d.starts_with("sha256:")));

    // Five changes inside the window → exactly one more rollout, to the last value.
    for i in 1..=5 {
        stack.store_write(&ns, "region", &format!("burst-{i}")).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    wait_rolled(&stack, &ns, "web", "region=burst-5", "web rolled to the burst's last value").await;
    tokio::time::sleep(Duration::from_secs(11)).await; // two windows: nothing else follows
    assert_eq!(rollout_state(&stack.client, &ns, "web").await.0, 3, "five changes in the window: one rollout");
    let notes = event_notes(&stack.client, &ns, "RolledOut").await;
    assert!(notes.iter().any(|n| n.contains("Deployment web")), "{notes:?}");

    // SIGKILL after the ConfigMap changed and before the window ended: the
    // next controller rolls it, once.
    stack.store_write(&ns, "region", "after-kill").await;
    eventually_within(Duration::from_secs(4), "the ConfigMap changed", || async {
        stack.config_map_has(&ns, "region", "after-kill").await.then_some(())
    })
    .await;
    controller.signal("KILL");
    controller.wait_exit(Duration::from_secs(10));
    assert_eq!(rollout_state(&stack.client, &ns, "web").await.0, 3, "killed inside the window: not rolled yet");
    let mut controller = stack.controller("rollout-2", &window);
    wait_rolled(&stack, &ns, "web", "region=after-kill", "the restarted controller rolls the missed change").await;
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(rollout_state(&stack.client, &ns, "web").await.0, 4, "rolled once for the change it missed");

    // Killed and restarted with nothing changed: no rollout for the same digest.
    controller.signal("KILL");
    controller.wait_exit(Duration::from_secs(10));
    let controller = stack.controller("rollout-3", &window);
    eventually_within(Duration::from_secs(30), "the third controller is ready", || async {
        (controller.get("/readyz")?.0 == 200).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(rollout_state(&stack.client, &ns, "web").await.0, 4, "the same digest is never rolled twice");

    // Never touched: the Deployment without the label, and the other tenant's.
    assert_eq!(rollout_state(&stack.client, &ns, "plain-web").await, (1, None), "not opted in");
    assert_eq!(rollout_state(&stack.client, &other_ns, "web").await, (1, None), "another namespace");
    assert!(rolled_to(&stack.client, &ns, "plain-web", "region=").await.is_some(), "its pod still has the old env");

    drop(controller);
    for (ns, name) in [(&ns, "web"), (&ns, "plain-web"), (&other_ns, "web")] {
        let _ = Api::<Deployment>::namespaced(stack.client.clone(), ns).delete(name, &DeleteParams::default()).await;
    }
    stack.cleanup(&[&ns, &other_ns]).await;
}
