//! GitOps health of real objects: the Argo CD health checks in
//! `examples/argocd/` run by a Lua interpreter, and kstatus (the library Flux
//! uses to wait for resources, `tests/gitops/kstatus`), on TenantConfigs the
//! controller brought into each state on the local stack.

mod support;

use std::{collections::BTreeMap, io::Write, process::Stdio, time::Duration};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::{
    aws_config, create_table, eventually,
    fixtures::{self, InProcessController},
    install_crds, kube_client, repo_root, unique,
};
use tenant_config_controller::{
    api::{ConfigStore, TenantConfig},
    reconcile::Settings,
};

/// `(status, message)` an Argo CD health script gives `object`.
fn argocd_health(script: &str, object: &serde_json::Value) -> (String, String) {
    let runner = repo_root().join("tests/gitops/argocd-health.lua");
    let script = repo_root().join("examples/argocd").join(script);
    let out = run(&support::env("TCC_LUA"), &[runner.to_str().unwrap(), script.to_str().unwrap()], object);
    let (status, message) = out.split_once('\t').expect("status<TAB>message");
    (status.into(), message.trim_end().into())
}

/// `(status, message)` kstatus computes for `object`.
fn kstatus(object: &serde_json::Value) -> (String, String) {
    let out = run(&support::env("TCC_KSTATUS"), &[], object);
    let (status, message) = out.split_once('\t').expect("status<TAB>message");
    (status.into(), message.trim_end().into())
}

fn run(program: &str, args: &[&str], object: &serde_json::Value) -> String {
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    writeln!(child.stdin.take().unwrap(), "{object}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{program}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The object as the API server serves it (what Argo CD and Flux read).
async fn served(client: &Client, ns: &str, name: &str) -> serde_json::Value {
    serde_json::to_value(Api::<TenantConfig>::namespaced(client.clone(), ns).get(name).await.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argocd_and_kstatus_read_each_state_right() {
    install_crds();
    let client = kube_client().await;
    let sdk = aws_config().await;
    let id = unique("gitops");
    let table = format!("{id}-table");
    create_table(&aws_sdk_dynamodb::Client::new(&sdk), &table).await;
    let stores = Api::<ConfigStore>::all(client.clone());
    let db = format!("{id}-db");
    let db_spec = json!({ "tags": [db], "dynamodb": { "tableName": table } });
    stores.create(&PostParams::default(), &fixtures::config_store(&db, db_spec)).await.unwrap();
    let namespaces = Api::<Namespace>::all(client.clone());
    let (ns, no_tenant) = (format!("{id}-t"), format!("{id}-none"));
    namespaces
        .create(&PostParams::default(), &fixtures::namespace(&ns, &[("tenantconfig.io/tenant", &id)]))
        .await
        .unwrap();
    namespaces.create(&PostParams::default(), &fixtures::namespace(&no_tenant, &[])).await.unwrap();
    let create = |ns: &str, name: &str, spec: serde_json::Value| {
        let (api, tc) = (Api::<TenantConfig>::namespaced(client.clone(), ns), fixtures::tenant_config(ns, name, spec));
        async move { api.create(&PostParams::default(), &tc).await.unwrap() }
    };
    let objects = [
        (ns.as_str(), "ready", json!({ "defaultTags": [db], "entries": [{ "key": "k", "value": "v" }] })),
        (ns.as_str(), "refused", json!({ "defaultTags": [db], "include": [{ "parameterPath": "/not/shared" }] })),
        (no_tenant.as_str(), "no-tenant", json!({ "defaultTags": [db], "entries": [{ "key": "k", "value": "v" }] })),
    ];
    for (ns, name, spec) in &objects {
        create(ns, name, spec.clone()).await;
    }

    // Before any controller: not reconciled yet.
    let fresh = served(&client, &ns, "ready").await;
    assert_eq!(argocd_health("tenantconfig-health.lua", &fresh).0, "Progressing");

    let controller = InProcessController::start(&client, &sdk, Settings::default(), None);
    fixtures::wait_ready(&client, &ns, "ready", "True", None).await;
    fixtures::wait_ready(&client, &ns, "refused", "False", Some("IncludeNotAllowed")).await;
    fixtures::wait_ready(&client, &no_tenant, "no-tenant", "False", Some("TenantUnknown")).await;
    // A store nothing answers at, and an object routed there: it waits for it.
    // (Created last: an object never reconciled checks every store for keys an
    // interrupted reconcile may have left, so an unreachable store holds up
    // every new object until it answers or is deleted.)
    let down = format!("{id}-down");
    let closed_port = support::process::free_port();
    let down_spec = json!({ "tags": [down], "dynamodb": { "tableName": table, "endpoint": format!("http://127.0.0.1:{closed_port}") } });
    stores.create(&PostParams::default(), &fixtures::config_store(&down, down_spec)).await.unwrap();
    create(&ns, "waiting", json!({ "defaultTags": [down], "entries": [{ "key": "k", "value": "v" }] })).await;
    fixtures::wait_ready(&client, &ns, "waiting", "False", Some("StoreUnavailable")).await;

    let expected: BTreeMap<(&str, &str), (&str, &str, &str)> = BTreeMap::from([
        // (namespace, name) → (Argo CD, kstatus, a word of the message)
        ((ns.as_str(), "ready"), ("Healthy", "Current", "1 key(s) projected")),
        ((ns.as_str(), "refused"), ("Degraded", "Failed", "IncludeNotAllowed")),
        ((ns.as_str(), "waiting"), ("Progressing", "InProgress", "StoreUnavailable")),
        ((no_tenant.as_str(), "no-tenant"), ("Degraded", "Failed", "TenantUnknown")),
    ]);
    for ((ns, name), (argo, flux, word)) in &expected {
        let object = served(&client, ns, name).await;
        let (argo_status, argo_message) = argocd_health("tenantconfig-health.lua", &object);
        assert_eq!(argo_status, *argo, "Argo CD health of {ns}/{name}: {argo_message}");
        assert!(argo_message.contains(word), "Argo CD message of {ns}/{name}: {argo_message}");
        let (kstatus_status, kstatus_message) = kstatus(&object);
        assert_eq!(kstatus_status, *flux, "kstatus of {ns}/{name}: {kstatus_message}");
        println!("{ns}/{name}: Argo CD {argo_status} ({argo_message}); kstatus {kstatus_status} ({kstatus_message})");
    }

    // A spec change not reconciled yet is the new generation's business: both
    // say so until the controller catches up.
    let api = Api::<TenantConfig>::namespaced(client.clone(), &ns);
    controller.stop_within(Duration::from_secs(30)).await;
    let patch = json!({ "spec": { "entries": [{ "key": "k", "value": "changed" }] } });
    api.patch("ready", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let changed = served(&client, &ns, "ready").await;
    assert_eq!(argocd_health("tenantconfig-health.lua", &changed).0, "Progressing");
    assert_eq!(kstatus(&changed).0, "InProgress");

    // ConfigStores: healthy when they name one backend (they have no status).
    let store = serde_json::to_value(stores.get(&db).await.unwrap()).unwrap();
    assert_eq!(argocd_health("configstore-health.lua", &store).0, "Healthy");

    // Clean up with a controller, so the finalizers are released, after the
    // unreachable store is gone (a deletion would wait for it too).
    stores.delete(&down, &DeleteParams::default()).await.unwrap();
    let controller = InProcessController::start(&client, &sdk, Settings::default(), None);
    let everything: Vec<(&str, &str)> =
        objects.iter().map(|(ns, name, _)| (*ns, *name)).chain([(ns.as_str(), "waiting")]).collect();
    for (ns, name) in &everything {
        let api = Api::<TenantConfig>::namespaced(client.clone(), ns);
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }
    for (ns, name) in &everything {
        let api = Api::<TenantConfig>::namespaced(client.clone(), ns);
        eventually(&format!("{ns}/{name} deleted"), || async {
            api.get_opt(name).await.unwrap().is_none().then_some(())
        })
        .await;
    }
    controller.stop_within(Duration::from_secs(30)).await;
    stores.delete(&db, &DeleteParams::default()).await.unwrap();
    for name in [ns, no_tenant] {
        namespaces.delete(&name, &DeleteParams::default()).await.unwrap();
    }
}

/// The `argocd-cm` snippet carries exactly the scripts that are tested.
#[test]
fn the_argocd_cm_snippet_embeds_the_tested_scripts() {
    let dir = repo_root().join("examples/argocd");
    let snippet: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("argocd-cm.yaml")).unwrap()).unwrap();
    for (key, script) in [
        ("resource.customizations.health.tenantconfig.io_TenantConfig", "tenantconfig-health.lua"),
        ("resource.customizations.health.tenantconfig.io_ConfigStore", "configstore-health.lua"),
    ] {
        let embedded = snippet["data"][key].as_str().unwrap_or_else(|| panic!("argocd-cm.yaml has no {key}"));
        assert_eq!(embedded, std::fs::read_to_string(dir.join(script)).unwrap(), "{key} differs from {script}");
    }
}
