//! The Helm chart: lint, render with default and non-default values (golden
//! checks on what matters), refuse bad values, install into the real API server,
//! and prove its RBAC by running the controller as the chart's ServiceAccount:
//! sufficient (a TenantConfig reconciles end to end, its Secret included) and
//! not excessive (no Secret read, even with secure projection; writes fenced by
//! the projection policy).

mod support;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, PostParams},
};
use serde_json::json;
use serde_yaml::Value;
use support::{
    event_queue, helm, install_crds, kube_client,
    process::{Process, client_from, kubeconfig_as_service_account},
    unique,
};
use tenant_config_controller::api::{ConfigStore, TenantConfig};

const CHART: &str = "charts/tenant-config-controller";

/// Renders the chart and returns its documents.
fn render(sets: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", "tcc", CHART, "--namespace", "tcc-system", "--kube-version", "1.37.2"];
    for set in sets {
        args.extend(["--set", set]);
    }
    let (ok, stdout, stderr) = helm(&args);
    assert!(ok, "helm template {sets:?}: {stderr}");
    serde_yaml::Deserializer::from_str(&stdout)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize;

fn find<'a>(docs: &'a [Value], kind: &str, name_suffix: &str) -> Option<&'a Value> {
    docs.iter().find(|d| {
        d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str().is_some_and(|n| n.ends_with(name_suffix))
    })
}

fn args_of(docs: &[Value]) -> Vec<String> {
    let deployment = find(docs, "Deployment", "").expect("a Deployment");
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

fn grants(docs: &[Value], resource: &str) -> Vec<String> {
    let role = find(docs, "ClusterRole", "").expect("a ClusterRole");
    role["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter(|r| r["resources"].as_sequence().unwrap().iter().any(|x| x.as_str() == Some(resource)))
        .flat_map(|r| r["verbs"].as_sequence().unwrap().iter().map(|v| v.as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn chart_lints_and_renders_what_matters() {
    for sets in [vec![], vec!["secureProjection.enabled=true", "replicaCount=1", "metrics.serviceMonitor.enabled=true"]]
    {
        let mut args = vec!["lint", CHART, "--strict", "--kube-version", "1.37.2"];
        for s in &sets {
            args.extend(["--set", s]);
        }
        let (ok, stdout, stderr) = helm(&args);
        assert!(ok, "helm lint {sets:?}: {stdout}{stderr}");
    }

    // Defaults: two replicas with a PDB, restricted pod, no Secrets access.
    let docs = render(&[]);
    let deployment = find(&docs, "Deployment", "").unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], Value::Bool(true));
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"].as_str(), Some("RuntimeDefault"));
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], Value::Bool(true));
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], Value::Bool(false));
    assert_eq!(container["securityContext"]["capabilities"]["drop"][0].as_str(), Some("ALL"));
    assert_eq!(container["readinessProbe"]["httpGet"]["path"].as_str(), Some("/readyz"));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"].as_str(), Some("/healthz"));
    assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(2));
    let pdb = find(&docs, "PodDisruptionBudget", "").expect("a PDB for two replicas");
    assert_eq!(
        pdb["spec"]["unhealthyPodEvictionPolicy"].as_str(),
        Some("AlwaysAllow"),
        "crash loops never block drains"
    );
    let spread = &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(spread["podAffinityTerm"]["topologyKey"].as_str(), Some("kubernetes.io/hostname"));
    assert_eq!(
        spread["podAffinityTerm"]["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"].as_str(),
        Some("tcc")
    );
    assert!(find(&docs, "NetworkPolicy", "").is_none(), "the NetworkPolicy is opt-in");
    assert!(find(&docs, "ServiceMonitor", "").is_none());
    assert!(grants(&docs, "secrets").is_empty(), "no Secrets access by default");
    assert!(grants(&docs, "pods").is_empty(), "no pod access without refresh");
    assert!(grants(&docs, "deployments").is_empty(), "no workload access without rollout");
    assert!(
        find(&docs, "ValidatingAdmissionPolicy", "-config-digest-only").is_none(),
        "no workload policy without refresh or rollout"
    );
    let fence = find(&docs, "ValidatingAdmissionPolicy", "-own-projections-only").expect("the projection policy");
    let resources = fence["spec"]["matchConstraints"]["resourceRules"][0]["resources"].as_sequence().unwrap();
    assert_eq!(resources.len(), 2, "ConfigMaps and Secrets: {resources:?}");
    assert!(find(&docs, "ValidatingAdmissionPolicyBinding", "-own-projections-only").is_some());
    assert_eq!(grants(&docs, "configmaps"), ["get", "list", "watch", "create", "patch", "delete"]);
    assert_eq!(grants(&docs, "configstores"), ["get", "list", "watch"], "store specs are read-only");
    assert_eq!(grants(&docs, "configstores/status"), ["patch"], "Ready / Overlap");
    let args = args_of(&docs);
    assert!(args.contains(&"--leader-election=true".into()));
    assert!(args.contains(&"--lease-namespace=tcc-system".into()));
    assert!(!args.iter().any(|a| a.starts_with("--event-queue-url")), "no queue unless configured");
    let lease_role = find(&docs, "Role", "-leader-election").expect("lease Role");
    assert_eq!(lease_role["rules"][0]["resources"][0].as_str(), Some("leases"));

    // Non-default values reach the flags and the RBAC.
    let docs = render(&[
        "secureProjection.enabled=true",
        "replicaCount=1",
        "events.queueUrl=https://sqs.eu-west-1.amazonaws.com/123456789012/tenant-config-events",
        "controller.concurrency=7",
        "controller.resyncInterval=30m",
        "controller.resyncMode=per-object",
        "controller.leaderElection.enabled=false",
        "aws.rateLimits.ssmWritesPerSecond=2",
        "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::123456789012:role/tcc",
        "metrics.serviceMonitor.enabled=true",
    ]);
    let args = args_of(&docs);
    for expected in [
        "--event-queue-url=https://sqs.eu-west-1.amazonaws.com/123456789012/tenant-config-events",
        "--concurrency=7",
        "--resync-interval=30m",
        "--resync-mode=per-object",
        "--leader-election=false",
        "--ssm-write-rate=2",
        "--secure-projection",
    ] {
        assert!(args.contains(&expected.to_string()), "{expected} in {args:?}");
    }
    assert_eq!(grants(&docs, "secrets"), ["create", "patch", "delete"], "never a read of a Secret");

    assert!(find(&docs, "PodDisruptionBudget", "").is_none(), "no PDB for one replica");
    assert!(find(&docs, "Role", "-leader-election").is_none(), "no Lease access without election");
    assert!(find(&docs, "ServiceMonitor", "").is_some());
    let sa = find(&docs, "ServiceAccount", "").unwrap();
    assert_eq!(
        sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].as_str(),
        Some("arn:aws:iam::123456789012:role/tcc")
    );
    assert!(args.contains(&"--refresh-pods=false".into()) && args.contains(&"--rollout-workloads=false".into()));

    // Affinity set by the user replaces the default spread; the NetworkPolicy when asked for.
    let docs = render(&[
        "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=pool",
        "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
        "networkPolicy.enabled=true",
        "networkPolicy.egressCIDRs[0]=10.0.0.0/16",
    ]);
    let affinity = &find(&docs, "Deployment", "").unwrap()["spec"]["template"]["spec"]["affinity"];
    assert!(affinity.get("podAntiAffinity").is_none() && affinity.get("nodeAffinity").is_some(), "{affinity:?}");
    let policy = find(&docs, "NetworkPolicy", "").expect("the NetworkPolicy");
    let ingress = &policy["spec"]["ingress"][0];
    assert_eq!(ingress["ports"][0]["port"].as_str(), Some("http"), "only the metrics port");
    let from = &ingress["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"];
    assert_eq!(from.as_str(), Some("monitoring"));
    let egress = &policy["spec"]["egress"];
    assert_eq!(egress[0]["ports"][0]["port"].as_u64(), Some(53), "DNS");
    assert_eq!(egress[1]["to"][0]["ipBlock"]["cidr"].as_str(), Some("10.0.0.0/16"));
    assert_eq!(egress[1]["ports"][0]["port"].as_u64(), Some(443));
    assert_eq!(egress.as_sequence().unwrap().len(), 2, "nothing else leaves the pod");

    // Refresh and rollout: their rights, their flags, and the policy that narrows the rights.
    let docs =
        render(&["refresh.enabled=true", "rollout.enabled=true", "rollout.window=30s", "workloadPatches.perSecond=5"]);
    assert_eq!(grants(&docs, "pods"), ["list", "watch", "patch"]);
    for kind in ["deployments", "statefulsets", "daemonsets"] {
        assert_eq!(grants(&docs, kind), ["list", "watch", "patch"], "{kind}");
    }
    let args = args_of(&docs);
    for expected in
        ["--refresh-pods=true", "--rollout-workloads=true", "--rollout-window=30s", "--workload-patch-rate=5"]
    {
        assert!(args.contains(&expected.to_string()), "{expected} in {args:?}");
    }
    let policy = find(&docs, "ValidatingAdmissionPolicy", "-config-digest-only").expect("the admission policy");
    let condition = policy["spec"]["matchConditions"][0]["expression"].as_str().unwrap();
    assert!(condition.contains("system:serviceaccount:tcc-system:tcc-tenant-config-controller"), "{condition}");
    let binding = find(&docs, "ValidatingAdmissionPolicyBinding", "-config-digest-only").expect("its binding");
    assert_eq!(binding["spec"]["validationActions"][0].as_str(), Some("Deny"));
    // The config service: flags, its TLS Secret mounted, a Service, TokenReviews and nothing more.
    assert!(grants(&render(&[]), "tokenreviews").is_empty(), "no TokenReviews without the config service");
    let docs = render(&["configApi.enabled=true", "configApi.tls.secretName=tcc-config-api-tls"]);
    let args = args_of(&docs);
    for expected in [
        "--config-api-addr=0.0.0.0:8443",
        "--config-api-tls-cert=/etc/tenant-config/config-api-tls/tls.crt",
        "--config-api-tls-key=/etc/tenant-config/config-api-tls/tls.key",
        "--config-api-audience=tenantconfig.io",
        "--config-api-max-watches-per-tenant=1000",
    ] {
        assert!(args.contains(&expected.to_string()), "{expected} in {args:?}");
    }
    assert!(!args.iter().any(|a| a.contains("insecure")), "TLS only from the chart");
    let pod = &find(&docs, "Deployment", "").unwrap()["spec"]["template"]["spec"];
    assert_eq!(pod["volumes"][0]["secret"]["secretName"].as_str(), Some("tcc-config-api-tls"));
    assert_eq!(pod["containers"][0]["ports"][1]["containerPort"].as_u64(), Some(8443));
    let service = find(&docs, "Service", "-config-api").expect("the config service's Service");
    assert_eq!(service["spec"]["ports"][0]["targetPort"].as_str(), Some("grpc"));
    assert_eq!(grants(&docs, "tokenreviews"), ["create"]);
    assert_eq!(grants(&docs, "pods"), ["list", "watch"], "a bound token's pod gone ends its watches");
    let with_refresh = render(&["configApi.enabled=true", "configApi.tls.secretName=t", "refresh.enabled=true"]);
    assert_eq!(grants(&with_refresh, "pods"), ["list", "watch", "patch"], "one rule for pods");
    let docs = render(&["configApi.enabled=true", "configApi.tls.secretName=t", "networkPolicy.enabled=true"]);
    let ingress = &find(&docs, "NetworkPolicy", "").unwrap()["spec"]["ingress"];
    assert_eq!(ingress[1]["ports"][0]["port"].as_str(), Some("grpc"), "callers reach the config service");
    let from = &ingress[1]["from"][0]["namespaceSelector"]["matchExpressions"][0];
    assert_eq!((from["key"].as_str(), from["operator"].as_str()), (Some("tenantconfig.io/tenant"), Some("Exists")));
    let docs =
        render(&["refresh.enabled=true", "workloadPatches.admissionPolicy=false", "projectionPolicy.enabled=false"]);
    assert!(find(&docs, "ValidatingAdmissionPolicy", "").is_none(), "the policies can be left to the platform");
    assert!(grants(&docs, "deployments").is_empty(), "rollout stays off");
}

#[test]
fn wrong_values_fail_with_a_clear_message() {
    for (set, mentions) in [
        ("replicaCount=many", "replicaCount"),
        ("controller.logFormat=xml", "logFormat"),
        ("controller.resyncInterval=soon", "resyncInterval"),
        ("controller.resyncMode=sometimes", "resyncMode"),
        ("events.queueUrl=not-a-url", "queueUrl"),
        ("secureProjection.enable=true", "enable"),
        ("rollout.window=soon", "window"),
        ("workloadPatches.perSecond=0", "perSecond"),
        ("networkPolicy.egressCIDRs[0]=everywhere", "egressCIDRs"),
        ("networkPolicy.egressPorts[0]=70000", "egressPorts"),
        ("configApi.enabled=true", "configApi.tls.secretName"),
        ("configApi.port=0", "port"),
    ] {
        let (ok, _, stderr) = helm(&["template", "tcc", CHART, "--kube-version", "1.37.2", "--set", set]);
        assert!(!ok, "{set} must be refused");
        assert!(stderr.contains(mentions), "{set}: the error names {mentions}: {stderr}");
    }
}

/// Installs the chart as `name` into a new namespace, one replica, not
/// waiting for pods; uninstalled by the returned guard if the test fails.
fn install(name: &str, namespace: &str, sets: &[&str]) -> (support::Release, String) {
    let mut args =
        vec!["install", name, CHART, "--namespace", namespace, "--create-namespace", "--set", "replicaCount=1"];
    for set in sets {
        args.extend(["--set", set]);
    }
    args.push("--wait=false");
    let release = support::Release { name: name.into(), namespace: namespace.into(), installed: true };
    let (ok, stdout, stderr) = helm(&args);
    assert!(ok, "helm install {name}: {stdout}{stderr}");
    (release, stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installed_chart_rbac_is_sufficient_and_not_excessive() {
    install_crds();
    let admin = kube_client().await;
    let id = unique("helm");
    let release_ns = format!("{id}-system");
    // With secure projection: the widest rights the chart can grant.
    let (mut release, stdout) = install("tcc", &release_ns, &["secureProjection.enabled=true"]);
    assert!(stdout.contains("events.queueUrl is empty"), "NOTES warn about the missing queue: {stdout}");

    // The chart's identity.
    let kubeconfig_path = kubeconfig_as_service_account(&admin, &release_ns, "tcc-tenant-config-controller").await;
    let chart_client = client_from(&kubeconfig_path).await;

    // Not excessive: no Secret is ever read, even with secure projection.
    fn forbidden<T>(result: &Result<T, kube::Error>) -> bool {
        matches!(result, Err(kube::Error::Api(e)) if e.code == 403)
    }
    for ns in [release_ns.as_str(), "kube-system", "default"] {
        let secrets = Api::<Secret>::namespaced(chart_client.clone(), ns);
        let listed = secrets.list(&ListParams::default()).await;
        assert!(forbidden(&listed), "list Secrets in {ns}: {listed:?}");
        let got = secrets.get("anything").await;
        assert!(forbidden(&got), "get a Secret in {ns}: {got:?}");
    }
    let listed = Api::<Secret>::all(chart_client.clone()).list(&ListParams::default()).await;
    assert!(forbidden(&listed), "list Secrets cluster-wide: {listed:?}");
    let denied = Api::<ConfigStore>::all(chart_client.clone()).delete("anything", &DeleteParams::default()).await;
    assert!(matches!(denied, Err(kube::Error::Api(ref e)) if e.code == 403), "ConfigStores are read-only: {denied:?}");

    let tenant_ns = format!("{id}-tenant");
    let ns: Namespace = serde_json::from_value(json!({
        "metadata": { "name": tenant_ns, "labels": { "tenantconfig.io/tenant": format!("{id}-t") } }
    }))
    .unwrap();
    Api::<Namespace>::all(admin.clone()).create(&PostParams::default(), &ns).await.unwrap();
    projections_are_fenced(&admin, &chart_client, &release_ns, &tenant_ns).await;
    secrets_are_fenced(&admin, &chart_client, &tenant_ns).await;

    // Sufficient: the controller, as that identity, reconciles end to end
    // (its own ConfigMap is created, updated and deleted under the policy).
    let prefix = format!("/{id}");
    let queue = event_queue(&id, &[&prefix], 5, 30);
    let store: ConfigStore = serde_json::from_value(json!({
        "apiVersion": "tenantconfig.io/v1alpha1", "kind": "ConfigStore", "metadata": { "name": format!("{id}-db") },
        "spec": { "tags": [format!("{id}-db")], "dynamodb": { "tableName": format!("{id}-table") } }
    }))
    .unwrap();
    Api::<ConfigStore>::all(admin.clone()).create(&PostParams::default(), &store).await.unwrap();
    let ssm_store: ConfigStore = serde_json::from_value(json!({
        "apiVersion": "tenantconfig.io/v1alpha1", "kind": "ConfigStore", "metadata": { "name": format!("{id}-ssm") },
        "spec": { "tags": [format!("{id}-ssm")], "parameterStore": { "pathPrefix": prefix, "kmsKeyId": "alias/tc" } }
    }))
    .unwrap();
    Api::<ConfigStore>::all(admin.clone()).create(&PostParams::default(), &ssm_store).await.unwrap();
    // Killed on drop: a failed assertion must not leave a controller running
    // that reconciles every later test's objects as the chart's identity.
    let queue_url = queue.queue_url.clone();
    let args = ["--event-queue-url", &queue_url, "--lease-namespace", &release_ns];
    let mut controller = Process::spawn(
        &id,
        &[&args[..], &["--lease-name", "tcc-tenant-config-controller", "--secure-projection"]].concat(),
        &[("KUBECONFIG", kubeconfig_path.to_str().unwrap())],
    );
    let tcs = Api::<TenantConfig>::namespaced(admin.clone(), &tenant_ns);
    let tc: TenantConfig = serde_json::from_value(json!({
        "apiVersion": "tenantconfig.io/v1alpha1", "kind": "TenantConfig", "metadata": { "name": "payments" },
        "spec": { "defaultTags": [format!("{id}-db")], "entries": [
            { "key": "provider", "value": "stripe" },
            { "key": "password", "value": "s3cret", "secure": true, "tags": [format!("{id}-ssm")] }
        ], "projection": { "secretName": "payments-secrets" } }
    }))
    .unwrap();
    tcs.create(&PostParams::default(), &tc).await.unwrap();
    let started = Instant::now();
    loop {
        let tc = tcs.get("payments").await.unwrap();
        let ready = tc.status.iter().flat_map(|s| &s.conditions).any(|c| c.type_ == "Ready" && c.status == "True");
        if ready {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not Ready as the chart's identity: {:?}\nlog: {}",
            tc.status,
            controller.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cm = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(admin.clone(), &tenant_ns)
        .get("payments")
        .await
        .unwrap();
    assert_eq!(cm.data.unwrap()["provider"], "stripe");
    let secrets = Api::<Secret>::namespaced(admin.clone(), &tenant_ns);
    let secret = secrets.get("payments-secrets").await.unwrap();
    assert_eq!(secret.data.unwrap()["password"].0, b"s3cret", "its own Secret is written without a read");
    // Out-of-band drift of its own Secret is corrected at the next reconcile.
    let drift = json!({ "data": { "password": "ZHJpZnQ=", "added": "eA==" } });
    secrets
        .patch("payments-secrets", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&drift))
        .await
        .unwrap();
    let touch = json!({ "metadata": { "annotations": { "test/touch": "1" } }, "spec": { "entries": [
        { "key": "provider", "value": "adyen" },
        { "key": "password", "value": "s3cret", "secure": true, "tags": [format!("{id}-ssm")] }
    ] } });
    tcs.patch("payments", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&touch)).await.unwrap();
    let started = Instant::now();
    loop {
        let data = secrets.get("payments-secrets").await.unwrap().data.unwrap_or_default();
        if data.get("password").is_some_and(|v| v.0 == b"s3cret") && !data.contains_key("added") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "drift of the Secret kept: {data:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Not a bare "403": a port in a logged queue URL can contain it.
    let logs = controller.logs();
    let refused = logs.to_lowercase().contains("forbidden") || logs.contains("code: 403");
    assert!(!refused, "no permission errors: {logs}");

    // Deletion (finalizer, ConfigMap removal) works with the same identity.
    tcs.delete("payments", &DeleteParams::default()).await.unwrap();
    let started = Instant::now();
    while tcs.get_opt("payments").await.unwrap().is_some() {
        assert!(started.elapsed() < Duration::from_secs(60), "deletion as the chart's identity");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(secrets.get_opt("payments-secrets").await.unwrap().is_none(), "its Secret deleted with it");
    controller.signal("TERM");
    assert!(controller.wait_exit(Duration::from_secs(30)).success());
    for store in ["db", "ssm"] {
        Api::<ConfigStore>::all(admin.clone())
            .delete(&format!("{id}-{store}"), &DeleteParams::default())
            .await
            .unwrap();
    }
    let (ok, _, stderr) = helm(&["uninstall", "tcc", "--namespace", &release_ns]);
    assert!(ok, "helm uninstall: {stderr}");
    release.installed = false;
}

/// With the chart's ServiceAccount token, the ConfigMap rights RBAC must
/// grant cluster-wide are fenced by the projection policy: no write outside
/// tenant namespaces (a ConfigMap in the release namespace, kube-system's
/// aws-auth — cluster-admin on EKS), none of an object without the managed-by
/// label and a TenantConfig controller owner, no change or deletion of a
/// tenant's ConfigMap the controller does not own.
async fn projections_are_fenced(admin: &Client, chart: &Client, release_ns: &str, tenant_ns: &str) {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Patch, PatchParams};
    let cm = |name: &str, ours: bool| -> ConfigMap {
        let mut cm = json!({ "metadata": { "name": name }, "data": { "k": "v" } });
        if ours {
            cm["metadata"]["labels"] = json!({ "app.kubernetes.io/managed-by": "tenant-config-controller" });
            cm["metadata"]["ownerReferences"] = json!([{ "apiVersion": "tenantconfig.io/v1alpha1", "kind": "TenantConfig",
                "name": "x", "uid": "00000000-0000-0000-0000-000000000000", "controller": true }]);
        }
        serde_json::from_value(cm).unwrap()
    };
    let denied = |result: Result<ConfigMap, kube::Error>, what: &str, says: &str| match result {
        Err(kube::Error::Api(e)) => {
            assert!(e.message.contains(says), "{what}: denied for the wrong reason: {}", e.message)
        }
        other => panic!("{what} must be denied: {other:?}"),
    };
    let as_chart = |ns: &str| Api::<ConfigMap>::namespaced(chart.clone(), ns);
    // The policy takes effect once the API server has loaded it.
    let started = Instant::now();
    loop {
        match as_chart(release_ns).create(&PostParams::default(), &cm(&unique("probe"), true)).await {
            Err(kube::Error::Api(e)) if e.message.contains("own-projections-only") => break,
            other => {
                assert!(started.elapsed() < Duration::from_secs(30), "the policy never denied anything: {other:?}");
                if let Ok(created) = other {
                    // Its owner does not exist: the garbage collector may have taken it already.
                    let deleted = Api::<ConfigMap>::namespaced(admin.clone(), release_ns)
                        .delete(&created.metadata.name.unwrap(), &DeleteParams::default())
                        .await;
                    match deleted {
                        Err(kube::Error::Api(e)) if e.code == 404 => {}
                        other => drop(other.unwrap()),
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let tenant_only = "only in tenant namespaces";
    denied(as_chart(release_ns).create(&PostParams::default(), &cm("x", true)).await, "outside", tenant_only);
    // kube-system/aws-auth: made here (this stack is not EKS), then attacked.
    let kube_system = Api::<ConfigMap>::namespaced(admin.clone(), "kube-system");
    if kube_system.get_opt("aws-auth").await.unwrap().is_none() {
        kube_system.create(&PostParams::default(), &cm("aws-auth", false)).await.unwrap();
    }
    let take_over =
        json!({ "data": { "mapRoles": "- rolearn: arn:aws:iam::1:role/evil\n  groups: [system:masters]" } });
    let patched = as_chart("kube-system").patch("aws-auth", &PatchParams::default(), &Patch::Merge(&take_over)).await;
    denied(patched, "kube-system/aws-auth", tenant_only);
    assert_eq!(kube_system.get("aws-auth").await.unwrap().data.unwrap()["k"], "v");
    // In a tenant namespace: nothing that is not a projection, nobody else's object.
    let tenant = as_chart(tenant_ns);
    let not_ours = "labelled app.kubernetes.io/managed-by=tenant-config-controller";
    denied(tenant.create(&PostParams::default(), &cm("bare", false)).await, "a bare ConfigMap", not_ours);
    let theirs = Api::<ConfigMap>::namespaced(admin.clone(), tenant_ns);
    theirs.create(&PostParams::default(), &cm("team-config", false)).await.unwrap();
    let own_label = json!({ "metadata": { "labels": { "app.kubernetes.io/managed-by": "tenant-config-controller" } },
        "data": { "k": "overwritten" } });
    let only_own = "only its own projected";
    let patched = tenant.patch("team-config", &PatchParams::default(), &Patch::Merge(&own_label)).await;
    denied(patched, "another team's ConfigMap", not_ours);
    let mut hijack = own_label.clone();
    hijack["metadata"]["ownerReferences"] = serde_json::to_value(cm("x", true).metadata.owner_references).unwrap();
    let patched = tenant.patch("team-config", &PatchParams::default(), &Patch::Merge(&hijack)).await;
    denied(patched, "dressing another team's ConfigMap up as a projection", only_own);
    let deleted = tenant.delete("team-config", &DeleteParams::default()).await.map(|_| cm("gone", false));
    denied(deleted, "deleting another team's ConfigMap", only_own);
    assert_eq!(theirs.get("team-config").await.unwrap().data.unwrap()["k"], "v");
    theirs.delete("team-config", &DeleteParams::default()).await.unwrap();
}

/// With the chart's ServiceAccount token and secure projection on, Secrets are
/// fenced like ConfigMaps: none created that is not a projection, none of a
/// tenant's own changed or deleted. The ownership probe the controller uses
/// instead of a read (a patch of `test` operations) tells it nothing about a
/// Secret that is not its own: a refusal, no content.
async fn secrets_are_fenced(admin: &Client, chart: &Client, tenant_ns: &str) {
    use kube::api::{Patch, PatchParams};
    let bare: Secret =
        serde_json::from_value(json!({ "metadata": { "name": "bare" }, "stringData": { "k": "v" } })).unwrap();
    let as_chart = Api::<Secret>::namespaced(chart.clone(), tenant_ns);
    let denied = |result: Result<Secret, kube::Error>, what: &str| match result {
        Err(kube::Error::Api(e)) => assert!(e.code == 403 || e.code == 422, "{what}: {e:?}"),
        Ok(secret) => panic!("{what} must be denied, got {:?}", secret.data),
        Err(other) => panic!("{what}: {other:?}"),
    };
    denied(as_chart.create(&PostParams::default(), &bare).await, "a bare Secret in a tenant namespace");
    let theirs = Api::<Secret>::namespaced(admin.clone(), tenant_ns);
    theirs.create(&PostParams::default(), &bare).await.unwrap();
    let overwrite = json!({ "metadata": { "labels": { "app.kubernetes.io/managed-by": "tenant-config-controller" } },
        "stringData": { "k": "overwritten" } });
    denied(as_chart.patch("bare", &PatchParams::default(), &Patch::Merge(&overwrite)).await, "a tenant's Secret");
    let probe: json_patch::Patch = serde_json::from_value(json!([
        { "op": "test", "path": "/metadata/labels/app.kubernetes.io~1managed-by", "value": "tenant-config-controller" }
    ]))
    .unwrap();
    let probed = as_chart.patch("bare", &PatchParams::default(), &Patch::<()>::Json(probe)).await;
    denied(probed, "the ownership probe of a tenant's Secret");
    denied(as_chart.delete("bare", &DeleteParams::default()).await.map(|_| bare.clone()), "deleting a tenant's Secret");
    assert_eq!(theirs.get("bare").await.unwrap().data.unwrap()["k"].0, b"v");
    theirs.delete("bare", &DeleteParams::default()).await.unwrap();
}

/// The one right refresh and rollout need, and no more: with the chart's
/// ServiceAccount token, the config-digest annotation of a pod and of a
/// workload's pod template can be set in a tenant namespace; a pod's image, a
/// Deployment's containers or replicas, other labels and annotations, and
/// anything outside tenant namespaces cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_rights_allow_only_the_config_digest_annotation() {
    use k8s_openapi::api::{
        apps::v1::{Deployment, StatefulSet},
        core::v1::Pod,
    };
    use kube::api::{Patch, PatchParams};
    install_crds();
    let admin = kube_client().await;
    let id = unique("vap");
    let release_ns = format!("{id}-system");
    // Only the rights are under test: no controller pod needs to run.
    let sets = ["refresh.enabled=true", "rollout.enabled=true", "image.repository=tenant-config-controller-not-pulled"];
    let (mut release, _) = install("tccw", &release_ns, &sets);
    let kubeconfig = kubeconfig_as_service_account(&admin, &release_ns, "tccw-tenant-config-controller").await;
    let controller = client_from(&kubeconfig).await;

    let (tenant_ns, plain_ns) = (format!("{id}-tenant"), format!("{id}-plain"));
    for (name, labels) in [(&tenant_ns, json!({ "tenantconfig.io/tenant": format!("{id}-t") })), (&plain_ns, json!({}))]
    {
        let ns: Namespace = serde_json::from_value(json!({ "metadata": { "name": name, "labels": labels } })).unwrap();
        Api::<Namespace>::all(admin.clone()).create(&PostParams::default(), &ns).await.unwrap();
    }
    let container = json!({ "name": "app", "image": "registry.example/app:1" });
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "app", "labels": { "tenantconfig.io/refresh": "true" }, "annotations": { "team": "a" } },
        "spec": { "containers": [container] }
    }))
    .unwrap();
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "web", "labels": { "tenantconfig.io/rollout": "true" } },
        "spec": { "replicas": 0, "selector": { "matchLabels": { "app": "web" } },
                  "template": { "metadata": { "labels": { "app": "web" } }, "spec": { "containers": [container] } } }
    }))
    .unwrap();
    for ns in [&tenant_ns, &plain_ns] {
        Api::<Pod>::namespaced(admin.clone(), ns).create(&PostParams::default(), &pod).await.unwrap();
        Api::<Deployment>::namespaced(admin.clone(), ns).create(&PostParams::default(), &deployment).await.unwrap();
    }
    let digest = |value: &str| json!({ "metadata": { "annotations": { "tenantconfig.io/config-digest": value } } });
    let template = |patch: serde_json::Value| json!({ "spec": { "template": patch } });
    // Strategic merge patches: a container is changed by name, as kubectl does.
    let patch_pod = |ns: &str, patch: serde_json::Value| {
        let api = Api::<Pod>::namespaced(controller.clone(), ns);
        async move { api.patch("app", &PatchParams::default(), &Patch::Strategic(&patch)).await.map(|_| ()) }
    };
    let patch_deployment = |ns: &str, patch: serde_json::Value| {
        let api = Api::<Deployment>::namespaced(controller.clone(), ns);
        async move { api.patch("web", &PatchParams::default(), &Patch::Strategic(&patch)).await.map(|_| ()) }
    };
    let denied = |result: Result<(), kube::Error>, what: &str, says: &str| match result {
        Err(kube::Error::Api(e)) => {
            assert!(e.message.contains(says), "{what}: denied for the wrong reason: {}", e.message)
        }
        other => panic!("{what} must be denied: {other:?}"),
    };

    // The policy takes effect once the API server has loaded it: probe with a
    // change it denies (a new value each time: an unchanged object passes).
    let started = Instant::now();
    for attempt in 0.. {
        match patch_pod(&tenant_ns, json!({ "metadata": { "annotations": { "probe": attempt.to_string() } } })).await {
            Err(kube::Error::Api(e)) if e.message.contains("config-digest-only") => break,
            other => {
                assert!(started.elapsed() < Duration::from_secs(30), "the policy never denied anything: {other:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    denied(
        patch_pod(&tenant_ns, json!({ "spec": { "containers": [{ "name": "app", "image": "evil:1" }] } })).await,
        "a pod's image",
        "may not change a pod's spec",
    );
    let pods = Api::<Pod>::namespaced(admin.clone(), &tenant_ns);
    assert_eq!(
        pods.get("app").await.unwrap().spec.unwrap().containers[0].image.as_deref(),
        Some("registry.example/app:1")
    );

    // Allowed: the annotation, on a pod and on a pod template, in a tenant namespace.
    patch_pod(&tenant_ns, digest("sha256:1")).await.expect("the pod's config digest");
    patch_pod(&tenant_ns, digest("sha256:2")).await.expect("changed again");
    patch_deployment(&tenant_ns, template(digest("sha256:1"))).await.expect("the template's config digest");
    let web = Api::<Deployment>::namespaced(admin.clone(), &tenant_ns).get("web").await.unwrap();
    let annotations = web.spec.template.metadata.unwrap().annotations.unwrap();
    assert_eq!(annotations["tenantconfig.io/config-digest"], "sha256:1");

    // Denied: everything else.
    let message = "may change only the tenantconfig.io/config-digest annotation";
    denied(
        patch_pod(&tenant_ns, json!({ "metadata": { "annotations": { "team": "b" } } })).await,
        "another annotation",
        message,
    );
    denied(
        patch_pod(&tenant_ns, json!({ "metadata": { "annotations": { "added": "x" } } })).await,
        "a new annotation",
        message,
    );
    denied(
        patch_pod(&tenant_ns, json!({ "metadata": { "labels": { "tenantconfig.io/refresh": null } } })).await,
        "a label",
        "may not change labels",
    );
    let evil = json!({ "spec": { "template": { "spec": { "containers": [{ "name": "app", "image": "evil:1" }] } } } });
    denied(patch_deployment(&tenant_ns, evil).await, "a Deployment's containers", "may not change a workload's spec");
    denied(
        patch_deployment(&tenant_ns, json!({ "spec": { "replicas": 5 } })).await,
        "replicas",
        "may not change a workload's spec",
    );
    denied(
        patch_deployment(&tenant_ns, template(json!({ "metadata": { "annotations": { "other": "x" } } }))).await,
        "another template annotation",
        "pod template's tenantconfig.io/config-digest",
    );
    let template_meta = "may not change a pod template's name, finalizers or owner references";
    for (field, value) in [
        ("finalizers", json!(["example.com/hold"])),
        ("name", json!("other")),
        ("ownerReferences", json!([{ "apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "u" }])),
    ] {
        let patch = template(json!({ "metadata": { field: value } }));
        denied(patch_deployment(&tenant_ns, patch).await, &format!("the template's {field}"), template_meta);
    }
    // A StatefulSet's claim retention and ordinals are its spec too.
    let set: StatefulSet = serde_json::from_value(json!({
        "metadata": { "name": "db", "labels": { "tenantconfig.io/rollout": "true" } },
        "spec": { "replicas": 0, "serviceName": "db", "selector": { "matchLabels": { "app": "db" } },
                  "template": { "metadata": { "labels": { "app": "db" } }, "spec": { "containers": [container] } } }
    }))
    .unwrap();
    Api::<StatefulSet>::namespaced(admin.clone(), &tenant_ns).create(&PostParams::default(), &set).await.unwrap();
    let sets = Api::<StatefulSet>::namespaced(controller.clone(), &tenant_ns);
    for patch in [
        json!({ "spec": { "persistentVolumeClaimRetentionPolicy": { "whenDeleted": "Delete", "whenScaled": "Delete" } } }),
        json!({ "spec": { "ordinals": { "start": 5 } } }),
    ] {
        let result = sets.patch("db", &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ());
        denied(result, &format!("a StatefulSet's {patch}"), "may not change a workload's spec");
    }
    // Only objects that opted in, as they were: not one whose label was removed (or never set).
    let pods_admin = Api::<Pod>::namespaced(admin.clone(), &tenant_ns);
    let opted_out: Pod = serde_json::from_value(json!({
        "metadata": { "name": "plain" }, "spec": { "containers": [container] }
    }))
    .unwrap();
    pods_admin.create(&PostParams::default(), &opted_out).await.unwrap();
    let api = Api::<Pod>::namespaced(controller.clone(), &tenant_ns);
    let result = api.patch("plain", &PatchParams::default(), &Patch::Merge(&digest("sha256:1"))).await.map(|_| ());
    denied(result, "a pod that never opted in", "only pods and workloads that opted in");
    // The controller's patches name the uid of the object it cached: one
    // deleted and recreated since (which may never have opted in) is not patched.
    let mut stale = digest("sha256:3");
    stale["metadata"]["uid"] = json!("00000000-0000-0000-0000-000000000000");
    let result = api.patch("app", &PatchParams::default(), &Patch::Merge(&stale)).await.map(|_| ());
    denied(result, "a patch of a replaced pod", "metadata.uid");
    let outside = "only in tenant namespaces";
    denied(patch_pod(&plain_ns, digest("sha256:1")).await, "a pod outside tenant namespaces", outside);
    denied(patch_deployment(&plain_ns, template(digest("sha256:1"))).await, "a Deployment outside", outside);
    // And RBAC grants no other verb.
    let create = Api::<Pod>::namespaced(controller.clone(), &tenant_ns).create(&PostParams::default(), &pod).await;
    assert!(matches!(create, Err(kube::Error::Api(ref e)) if e.code == 403), "no pod creation: {create:?}");
    let delete = Api::<Pod>::namespaced(controller.clone(), &tenant_ns).delete("app", &DeleteParams::default()).await;
    assert!(matches!(delete, Err(kube::Error::Api(ref e)) if e.code == 403), "no pod deletion: {delete:?}");
    // The policy binds the controller only: the admin still changes images.
    pods.patch(
        "app",
        &PatchParams::default(),
        &Patch::Strategic(json!({ "spec": { "containers": [{ "name": "app", "image": "registry.example/app:2" }] } })),
    )
    .await
    .expect("other users are not restricted");

    for ns in [&tenant_ns, &plain_ns, &release_ns] {
        let _ = Api::<Namespace>::all(admin.clone()).delete(ns, &DeleteParams::default()).await;
    }
    let (ok, _, stderr) = helm(&["uninstall", "tccw", "--namespace", &release_ns]);
    assert!(ok, "helm uninstall: {stderr}");
    release.installed = false;
}

/// Every value of values.yaml as a dotted path, with its default as YAML
/// prints it (maps are walked; an empty map, a list or a scalar is a value).
fn value_paths(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Mapping(map) if !map.is_empty() => {
            for (key, value) in map {
                let key = key.as_str().expect("string keys");
                let path = if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") };
                value_paths(&path, value, out);
            }
        }
        Value::String(s) if s.is_empty() => out.push((prefix.into(), "\"\"".into())),
        other => {
            let rendered = serde_yaml::to_string(other).unwrap().trim_end().to_string();
            out.push((prefix.into(), rendered));
        }
    }
}

/// README's values reference lists every value of values.yaml with its
/// default, and nothing else.
#[test]
fn readme_documents_every_chart_value() {
    let values: Value =
        serde_yaml::from_str(&std::fs::read_to_string(support::repo_root().join(CHART).join("values.yaml")).unwrap())
            .unwrap();
    let mut in_chart = Vec::new();
    value_paths("", &values, &mut in_chart);
    let readme = std::fs::read_to_string(support::repo_root().join("README.md")).unwrap();
    let table = readme
        .split("<!-- values-reference:start -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- values-reference:end -->").next())
        .expect("README has the values reference markers");
    let documented: Vec<(String, String)> = table
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let key = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            let default = cells.get(2)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((key.to_string(), default.to_string()))
        })
        .collect();
    let chart_keys: std::collections::BTreeSet<&str> = in_chart.iter().map(|(k, _)| k.as_str()).collect();
    let readme_keys: std::collections::BTreeSet<&str> = documented.iter().map(|(k, _)| k.as_str()).collect();
    let undocumented: Vec<_> = chart_keys.difference(&readme_keys).collect();
    let stale: Vec<_> = readme_keys.difference(&chart_keys).collect();
    assert!(undocumented.is_empty() && stale.is_empty(), "undocumented values {undocumented:?}; stale rows {stale:?}");
    for (key, default) in &in_chart {
        let (_, written) = documented.iter().find(|(k, _)| k == key).unwrap();
        assert_eq!(written, default, "README's default of {key}");
    }
}

/// `helm package` makes the chart archive, versioned as the crate.
#[test]
fn the_chart_packages_with_the_crate_version() {
    let chart: Value =
        serde_yaml::from_str(&std::fs::read_to_string(support::repo_root().join(CHART).join("Chart.yaml")).unwrap())
            .unwrap();
    let crate_version = env!("CARGO_PKG_VERSION");
    assert_eq!(chart["version"].as_str(), Some(crate_version), "Chart.yaml version");
    assert_eq!(chart["appVersion"].as_str(), Some(crate_version), "Chart.yaml appVersion");
    let out = std::env::temp_dir().join(unique("chart-package"));
    let (ok, stdout, stderr) = helm(&["package", CHART, "--destination", out.to_str().unwrap()]);
    assert!(ok, "helm package: {stderr}");
    let archive = out.join(format!("tenant-config-controller-{crate_version}.tgz"));
    assert!(archive.is_file(), "{stdout}");
    let listing = Command::new("tar").arg("-tzf").arg(&archive).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    for file in ["Chart.yaml", "values.yaml", "values.schema.json", "crds/tenantconfigs.tenantconfig.io.yaml"] {
        assert!(
            listing.lines().any(|l| l == format!("tenant-config-controller/{file}")),
            "{file} in the archive: {listing}"
        );
    }
    std::fs::remove_dir_all(&out).unwrap();
}
