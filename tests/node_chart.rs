//! The product where users run it: the Helm chart on a real node (kubelet,
//! containerd, scheduler, controller manager; `scripts/testenv.sh up --node`),
//! the locally built controller image, and tenant pods reading the projected
//! ConfigMaps — with kubelet's defaults, as on EKS.
//!
//! Test-time values only (never chart defaults): the image is the local one
//! (`pullPolicy: Never`), and the pods reach the loopback-only API server and
//! moto through the node's bridge gateway (KUBERNETES_SERVICE_HOST/PORT and
//! AWS_ENDPOINT_URL in `extraEnv`). Both namespaces enforce the `restricted`
//! Pod Security Standard.

mod support;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use aws_sdk_dynamodb::types::AttributeValue;
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{ConfigMap, Namespace, Pod},
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, PostParams},
};
use serde_json::json;
use support::{aws_config, event_queue, eventually_within, helm, install_crds, kube_client, process::Process, unique};
use tenant_config_controller::api::{ConfigStore, TenantConfig};

const CHART: &str = "charts/tenant-config-controller";
const RELEASE: &str = "tcc";
/// The chart names the Deployment and its Lease `<release>-tenant-config-controller`.
const LEASE: &str = "tcc-tenant-config-controller";

/// The node must be there: this test fails, never skips, without it.
fn node_env() -> (String, String) {
    assert_eq!(
        std::env::var("TCC_NODE").as_deref(),
        Ok("1"),
        "these tests need the node: scripts/testenv.sh up --node (./scripts/test.sh starts it)"
    );
    (support::env("TCC_CONTROLLER_IMAGE"), support::env("TCC_BUSYBOX_IMAGE"))
}

async fn create_namespace(client: &Client, name: &str, tenant: Option<&str>) {
    let mut labels = json!({ "pod-security.kubernetes.io/enforce": "restricted" });
    if let Some(tenant) = tenant {
        labels["tenantconfig.io/tenant"] = json!(tenant);
    }
    let ns: Namespace = serde_json::from_value(json!({ "metadata": { "name": name, "labels": labels } })).unwrap();
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
}

/// The chart's controller pods, by name, with whether each is Ready.
async fn controller_pods(client: &Client, ns: &str) -> BTreeMap<String, bool> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("app.kubernetes.io/name=tenant-config-controller"))
        .await
        .unwrap();
    pods.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let ready = p
                .status
                .iter()
                .flat_map(|s| s.conditions.iter().flatten())
                .any(|c| c.type_ == "Ready" && c.status == "True");
            (p.metadata.name.unwrap(), ready)
        })
        .collect()
}

async fn wait_replicas_ready(client: &Client, ns: &str, within: Duration) -> Vec<String> {
    eventually_within(within, "2 controller replicas Ready through the kubelet's probes", || async {
        let pods = controller_pods(client, ns).await;
        (pods.len() == 2 && pods.values().all(|r| *r)).then(|| pods.into_keys().collect())
    })
    .await
}

async fn lease_holder(client: &Client, ns: &str) -> Option<String> {
    let lease = Api::<Lease>::namespaced(client.clone(), ns).get_opt(LEASE).await.ok()??;
    lease.spec?.holder_identity.filter(|h| !h.is_empty())
}

/// The last line a pod printed.
async fn last_line(client: &Client, ns: &str, pod: &str) -> Option<String> {
    let params = kube::api::LogParams { tail_lines: Some(1), ..Default::default() };
    let logs = Api::<Pod>::namespaced(client.clone(), ns).logs(pod, &params).await.ok()?;
    logs.lines().last().map(str::to_string)
}

/// A busybox pod in the tenant namespace, as restricted as the namespace demands.
fn tenant_pod(name: &str, ns: &str, image: &str, script: &str, config_map: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": ns },
        "spec": {
            "securityContext": { "runAsNonRoot": true, "runAsUser": 65534, "runAsGroup": 65534,
                                 "seccompProfile": { "type": "RuntimeDefault" } },
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "app", "image": image, "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", script],
                "envFrom": [{ "configMapRef": { "name": config_map } }],
                "volumeMounts": [{ "name": "config", "mountPath": "/config" }],
                "securityContext": { "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                     "capabilities": { "drop": ["ALL"] } }
            }],
            "volumes": [{ "name": "config", "configMap": { "name": config_map } }]
        }
    }))
    .unwrap()
}

/// Another writer sets `key` in the tenant's item.
async fn foreign_write(ddb: &aws_sdk_dynamodb::Client, table: &str, tenant: &str, key: &str, value: &str) {
    support::put_foreign_key(ddb, table, (&format!("TENANT#{tenant}"), "CONFIG#payments"), key, value).await;
}

async fn config_map_has(client: &Client, ns: &str, key: &str, value: &str) -> Option<()> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns).get_opt("payments").await.ok()??;
    (cm.data?.get(key)? == value).then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_runs_on_a_node_and_tenant_pods_read_their_config() {
    let (controller_image, busybox) = node_env();
    install_crds();
    let client = kube_client().await;
    let id = unique("node");
    let (system, tenant_ns, tenant) = (format!("{id}-system"), format!("{id}-tenant"), format!("{id}-acme"));
    create_namespace(&client, &system, None).await;
    create_namespace(&client, &tenant_ns, Some(&tenant)).await;
    let queue = event_queue(&id, &[&format!("/{id}")], 3, 30);
    let table = format!("{id}-table");
    let store: ConfigStore = serde_json::from_value(json!({
        "apiVersion": "tenantconfig.io/v1alpha1", "kind": "ConfigStore", "metadata": { "name": format!("{id}-db") },
        "spec": { "tags": [format!("{id}-db")], "default": false, "dynamodb": { "tableName": table } }
    }))
    .unwrap();
    Api::<ConfigStore>::all(client.clone()).create(&PostParams::default(), &store).await.unwrap();

    // --- helm install: the local image, two replicas, the restricted namespace.
    let (repository, tag) = controller_image.rsplit_once(':').expect("image reference with a tag");
    let (local, pod_endpoint) = (support::env("AWS_ENDPOINT_URL"), support::env("TCC_POD_AWS_ENDPOINT_URL"));
    let env = |name: &str, value: &str| json!({ "name": name, "value": value });
    let values = json!({
        "image": { "repository": repository, "tag": tag, "pullPolicy": "Never" },
        "events": { "queueUrl": queue.queue_url.replace(&local, &pod_endpoint) },
        "aws": { "region": "us-east-1", "rateLimits": { "ssmWritesPerSecond": 0 } },
        "controller": { "logFormat": "text" },
        "extraEnv": [
            env("KUBERNETES_SERVICE_HOST", &support::env("TCC_POD_KUBERNETES_SERVICE_HOST")),
            env("KUBERNETES_SERVICE_PORT", &support::env("TCC_POD_KUBERNETES_SERVICE_PORT")),
            env("AWS_ENDPOINT_URL", &pod_endpoint),
            env("AWS_ACCESS_KEY_ID", "testing"),
            env("AWS_SECRET_ACCESS_KEY", "testing"),
            env("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    });
    let values_file = std::env::temp_dir().join(format!("{id}-values.json"));
    std::fs::write(&values_file, values.to_string()).unwrap();
    let values_file = values_file.to_str().unwrap();
    let installing = Instant::now();
    let mut release = support::Release { name: RELEASE.into(), namespace: system.clone(), installed: true };
    let (ok, _, stderr) =
        helm(&["install", RELEASE, CHART, "-n", &system, "-f", values_file, "--wait", "--timeout", "180s"]);
    assert!(ok, "helm install: {stderr}");
    let pods = wait_replicas_ready(&client, &system, Duration::from_secs(60)).await;
    println!("helm install: 2 replicas Ready in {:?}: {pods:?}", installing.elapsed());
    let leader = eventually_within(Duration::from_secs(60), "a Lease holder", || lease_holder(&client, &system)).await;
    assert!(pods.contains(&leader), "the Lease holder {leader} is one of the pods {pods:?}");
    let standby = pods.iter().find(|p| **p != leader).unwrap().clone();
    let logs = |pod: String| {
        let client = client.clone();
        let system = system.clone();
        async move { Api::<Pod>::namespaced(client, &system).logs(&pod, &Default::default()).await.unwrap_or_default() }
    };
    assert!(logs(leader.clone()).await.contains("acquired the lease"), "the holder says it leads");
    assert!(!logs(standby.clone()).await.contains("acquired the lease"), "exactly one holder: the standby never led");

    // --- A TenantConfig; one pod reads the ConfigMap as files, one as env.
    let tc: TenantConfig = serde_json::from_value(json!({
        "apiVersion": "tenantconfig.io/v1alpha1", "kind": "TenantConfig",
        "metadata": { "name": "payments", "namespace": tenant_ns },
        "spec": { "defaultTags": [format!("{id}-db")], "entries": [{ "key": "provider", "value": "stripe" }] }
    }))
    .unwrap();
    Api::<TenantConfig>::namespaced(client.clone(), &tenant_ns).create(&PostParams::default(), &tc).await.unwrap();
    let within = Duration::from_secs(60);
    eventually_within(within, "ConfigMap projected", || config_map_has(&client, &tenant_ns, "provider", "stripe"))
        .await;
    let pods_api = Api::<Pod>::namespaced(client.clone(), &tenant_ns);
    let files = "while true; do echo \"provider=$(cat /config/provider) region=$(cat /config/region 2>/dev/null)\"; sleep 1; done";
    let env_script = "echo \"env provider=$provider\"; while true; do sleep 3600; done";
    for (name, script) in [("reads-files", files), ("reads-env", env_script)] {
        pods_api
            .create(&PostParams::default(), &tenant_pod(name, &tenant_ns, &busybox, script, "payments"))
            .await
            .unwrap();
    }
    eventually_within(within, "the file reader sees the value", || async {
        (last_line(&client, &tenant_ns, "reads-files").await? == "provider=stripe region=").then_some(())
    })
    .await;
    eventually_within(within, "the env reader sees the value", || async {
        (last_line(&client, &tenant_ns, "reads-env").await? == "env provider=stripe").then_some(())
    })
    .await;

    // An out-of-band store change reaches the mounted file (event → ConfigMap →
    // the kubelet's own sync, up to about a minute with its defaults).
    let ddb = aws_sdk_dynamodb::Client::new(&aws_config().await);
    let changed = Instant::now();
    foreign_write(&ddb, &table, &tenant, "region", "eu-west-1").await;
    eventually_within(within, "the change reaches the ConfigMap", || {
        config_map_has(&client, &tenant_ns, "region", "eu-west-1")
    })
    .await;
    let to_config_map = changed.elapsed();
    eventually_within(Duration::from_secs(150), "the change reaches the mounted file", || async {
        (last_line(&client, &tenant_ns, "reads-files").await? == "provider=stripe region=eu-west-1").then_some(())
    })
    .await;
    println!("store write → ConfigMap {to_config_map:?}, → file in the pod {:?} (kubelet defaults)", changed.elapsed());

    // --- The leader pod deleted: the standby leads within the lease duration,
    // and a store change made meanwhile still arrives.
    let deleted = Instant::now();
    Api::<Pod>::namespaced(client.clone(), &system).delete(&leader, &DeleteParams::default()).await.unwrap();
    foreign_write(&ddb, &table, &tenant, "during-failover", "1").await;
    // The lease duration (15 s) bounds the takeover once the leader is gone;
    // the kubelet's own time to stop the deleted pod comes first, several
    // seconds under the full suite's load (this wait at 15 s failed there twice).
    eventually_within(Duration::from_secs(45), "the standby holds the Lease", || async {
        (lease_holder(&client, &system).await? == standby).then_some(())
    })
    .await;
    println!("leader pod deleted: the standby led after {:?}", deleted.elapsed());
    eventually_within(within, "the change made during the failover arrives", || {
        config_map_has(&client, &tenant_ns, "during-failover", "1")
    })
    .await;
    wait_replicas_ready(&client, &system, Duration::from_secs(90)).await;

    // --- helm upgrade with a changed value rolls both replicas; nothing lost.
    let before: Vec<String> = controller_pods(&client, &system).await.into_keys().collect();
    let (ok, _, stderr) = helm(&[
        "upgrade",
        RELEASE,
        CHART,
        "-n",
        &system,
        "-f",
        values_file,
        "--set",
        "controller.logLevel=debug",
        "--wait",
        "--timeout",
        "180s",
    ]);
    assert!(ok, "helm upgrade: {stderr}");
    foreign_write(&ddb, &table, &tenant, "after-upgrade", "1").await;
    let after = eventually_within(Duration::from_secs(120), "both replicas replaced and Ready", || async {
        let pods = controller_pods(&client, &system).await;
        (pods.len() == 2 && pods.values().all(|r| *r) && pods.keys().all(|p| !before.contains(p)))
            .then(|| pods.into_keys().collect::<Vec<_>>())
    })
    .await;
    println!("helm upgrade rolled {before:?} → {after:?}");
    // Also when the old leader's long poll, under way at its SIGTERM, got the
    // change's event: it releases the message instead of leaving it hidden for
    // the visibility timeout (tests/events_e2e.rs, a_stop_mid_long_poll_...).
    eventually_within(within, "the change made during the upgrade arrives", || {
        config_map_has(&client, &tenant_ns, "after-upgrade", "1")
    })
    .await;

    // --- helm uninstall: the controller goes; TenantConfigs, ConfigMaps and
    // store data stay (the CRDs are not removed with the release).
    let (ok, _, stderr) = helm(&["uninstall", RELEASE, "-n", &system, "--wait"]);
    assert!(ok, "helm uninstall: {stderr}");
    release.installed = false;
    eventually_within(within, "the controller pods are gone", || async {
        controller_pods(&client, &system).await.is_empty().then_some(())
    })
    .await;
    let tcs = Api::<TenantConfig>::namespaced(client.clone(), &tenant_ns);
    assert!(tcs.get_opt("payments").await.unwrap().is_some(), "the TenantConfig stays");
    assert!(config_map_has(&client, &tenant_ns, "provider", "stripe").await.is_some(), "the ConfigMap stays");
    let item = ddb
        .get_item()
        .table_name(&table)
        .key("pk", AttributeValue::S(format!("TENANT#{tenant}")))
        .key("sk", AttributeValue::S("CONFIG#payments".into()))
        .send()
        .await
        .unwrap();
    assert!(item.item.is_some(), "the store data stays");

    // Clean up with a controller process, as a reinstall would.
    for pod in ["reads-files", "reads-env"] {
        let _ = pods_api.delete(pod, &DeleteParams::default()).await;
    }
    let mut cleaner = Process::spawn(&format!("{id}-cleanup"), &["--leader-election", "false"], &[]);
    tcs.delete("payments", &DeleteParams::default()).await.unwrap();
    eventually_within(within, "the TenantConfig deleted", || async {
        tcs.get_opt("payments").await.ok()?.is_none().then_some(())
    })
    .await;
    cleaner.signal("TERM");
    assert!(cleaner.wait_exit(Duration::from_secs(30)).success());
    Api::<ConfigStore>::all(client.clone()).delete(&format!("{id}-db"), &DeleteParams::default()).await.unwrap();
    for ns in [&tenant_ns, &system] {
        let _ = Api::<Namespace>::all(client.clone()).delete(ns, &DeleteParams::default()).await;
    }
}
