//! The controller end to end: real kube-apiserver, moto, the controller running
//! in this process. One scenario per test, each in a world of its own; a
//! controller reconciles every TenantConfig in the cluster, so the tests take
//! turns and each deletes its objects before it stops its controller.

mod support;

use support::eventually;

use std::{collections::BTreeMap, time::Duration};

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_ssm::types::ParameterType;
use k8s_openapi::api::{
    core::v1::{ConfigMap, Secret},
    events::v1::Event,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::{
    fault_proxy::{Fault, FaultProxy, Times},
    fixtures::{InProcessController, condition},
    world::World,
};
use tenant_config_controller::{
    api::{ConfigStore, TenantConfig, names},
    reconcile::Settings,
    store::stats::Outcome,
};

/// Tests take turns: each runs a controller that sees the whole cluster.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One scenario's world: a DynamoDB store (tag `tenant`), a Parameter Store
/// store (tag `static`, with a shared path holding `prod/region=eu`), a
/// tenant namespace, and the controller with a 2 s resync so that drift shows
/// quickly. No event queue: the event path has its own tests (events_e2e).
struct Scene {
    world: World,
    controller: InProcessController,
    tenant: String,
    /// The tenant's namespace.
    ns: String,
}

impl Scene {
    async fn new(name: &str) -> Scene {
        let mut world = World::new(name).await;
        let (table, prefix, shared) = (world.table.clone(), world.prefix.clone(), world.shared.clone());
        world.store("ddb", json!({ "tags": ["tenant"], "dynamodb": { "tableName": table } })).await;
        let ssm = json!({ "tags": ["static"], "parameterStore": { "pathPrefix": prefix, "sharedPaths": [shared], "kmsKeyId": "alias/tenant-config" } });
        world.store("ssm", ssm).await;
        world.put_parameter(&format!("{shared}/prod/region"), "eu").await;
        let tenant = world.tenant(0);
        let ns = world.namespace("a", Some(&tenant)).await;
        let settings =
            Settings { resync_interval: Duration::from_secs(2), secure_projection: true, ..Settings::default() };
        let controller = InProcessController::start(&world.client, &world.sdk, settings, None);
        Scene { world, controller, tenant, ns }
    }

    fn tag(&self, t: &str) -> String {
        self.world.tag(t)
    }

    /// `payments`: two DynamoDB entries, a Parameter Store entry, a secure
    /// one, an include of the shared path; ConfigMap `payments-config`,
    /// Secret `payments-secrets`. Waits until it is Ready.
    async fn payments(&self) -> TenantConfig {
        let spec = json!({
            "defaultTags": [self.tag("tenant")],
            "entries": [
                { "key": "provider", "value": "stripe" },
                { "key": "retry-limit", "value": "5" },
                { "key": "api-endpoint", "value": "https://pay.example.com", "tags": [self.tag("static")] },
                { "key": "db-password", "value": "s3cret", "tags": [self.tag("static")], "secure": true }
            ],
            "include": [{ "parameterPath": format!("{}/prod", self.world.shared) }],
            "projection": { "configMapName": "payments-config", "secretName": "payments-secrets" }
        });
        self.world.tenant_config(&self.ns, "payments", spec).await;
        self.world.wait_reason(&self.ns, "payments", "True", "Reconciled").await
    }

    /// A TenantConfig with one entry routed to the DynamoDB store, and `extra` fields.
    async fn simple(&self, ns: &str, name: &str, extra: serde_json::Value) {
        let mut spec = json!({ "defaultTags": [self.tag("tenant")], "entries": [{ "key": "a", "value": "1" }] });
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        self.world.tenant_config(ns, name, spec).await;
    }

    async fn item(&self, config_type: &str) -> Option<BTreeMap<String, String>> {
        let (pk, sk) = (format!("TENANT#{}", self.tenant), format!("CONFIG#{config_type}"));
        support::fixtures::item_data(&self.world.ddb, &self.world.table, &pk, &sk).await
    }

    /// Deletes the scene's objects with the controller running, then stops it.
    async fn finish(self) {
        self.world.clean_up().await;
        self.controller.stop_within(Duration::from_secs(30)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_config_is_stored_by_tag_and_projected_in_layers() {
    let _turn = SERIAL.lock().await;
    let s = Scene::new("e2e-project").await;
    let (w, tenant) = (&s.world, &s.tenant);
    let tc = s.payments().await;
    let status = tc.status.clone().unwrap();
    assert_eq!(status.tenant.as_deref(), Some(tenant.as_str()));
    assert_eq!(condition(&tc, "StoreSynced").unwrap().0, "True");
    assert_eq!(condition(&tc, "Projected").unwrap().0, "True");
    assert_eq!(status.projected_keys, Some(5));
    assert_eq!(status.observed_generation, tc.metadata.generation);
    let mut summary: Vec<(String, String, i32)> =
        status.stores.iter().map(|s| (s.kind.clone(), s.location.clone(), s.keys)).collect();
    summary.sort();
    assert_eq!(
        summary,
        [
            ("DynamoDB".to_string(), format!("TENANT#{tenant}/CONFIG#payments"), 2),
            ("ParameterStore".to_string(), format!("{}/{tenant}/_/payments", w.prefix), 2)
        ]
    );
    assert!(tc.finalizers().contains(&names::FINALIZER.to_string()));

    // What the stores hold.
    let data = s.item("payments").await.unwrap();
    assert_eq!(data, BTreeMap::from([("provider".into(), "stripe".into()), ("retry-limit".into(), "5".into())]));
    let pw = w.ssm.get_parameter().name(format!("{}/{tenant}/_/payments/db-password", w.prefix)).send().await.unwrap();
    assert_eq!(pw.parameter().unwrap().r#type(), Some(&ParameterType::SecureString));

    // What the namespace sees.
    let cm = w.config_maps(&s.ns).get("payments-config").await.unwrap();
    assert_eq!(
        cm.data.clone().unwrap(),
        BTreeMap::from([
            ("api-endpoint".into(), "https://pay.example.com".into()),
            ("provider".into(), "stripe".into()),
            ("region".into(), "eu".into()),
            ("retry-limit".into(), "5".into()),
        ]),
        "shared include + SSM + DynamoDB; the secure value is not in the ConfigMap"
    );
    assert_eq!(cm.labels()["app.kubernetes.io/managed-by"], "tenant-config-controller");
    assert_eq!(cm.labels()["tenantconfig.io/tenant"], *tenant);
    assert_eq!(cm.annotations().get("tenantconfig.io/source-digest"), status.source_digest.as_ref());
    assert_eq!(cm.owner_references()[0].uid, tc.uid().unwrap());
    let secret = Api::<Secret>::namespaced(w.client.clone(), &s.ns).get("payments-secrets").await.unwrap();
    assert_eq!(secret.data.unwrap()["db-password"].0, b"s3cret");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resyncs_of_an_unchanged_object_write_nothing_anywhere() {
    let _turn = SERIAL.lock().await;
    let s = Scene::new("e2e-quiet").await;
    let tc = s.payments().await;
    let stats = s.controller.stats.clone();
    let cm = s.world.config_maps(&s.ns).get("payments-config").await.unwrap();
    let (ddb_writes, ssm_writes) = (stats.writes("DynamoDB"), stats.writes("ParameterStore"));
    let (cm_version, tc_version) = (cm.resource_version(), tc.resource_version());
    let calls = |operation: &str| stats.count("DynamoDB", operation, Outcome::Ok);
    let (queries_before, get_items_before) = (calls("Query"), calls("GetItem"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(calls("Query") >= queries_before + 2, "resyncs happened, each a bulk read of the tenant's partition");
    assert_eq!(calls("GetItem"), get_items_before, "an unchanged object costs no read of its own");
    assert_eq!((stats.writes("DynamoDB"), stats.writes("ParameterStore")), (ddb_writes, ssm_writes), "no store writes");
    let cm_now = s.world.config_maps(&s.ns).get("payments-config").await.unwrap();
    assert_eq!(cm_now.resource_version(), cm_version, "no ConfigMap write");
    let tc_now = s.world.tenant_configs(&s.ns).get("payments").await.unwrap();
    assert_eq!(tc_now.resource_version(), tc_version, "no status write");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_reverted_and_other_writers_keys_are_projected() {
    let _turn = SERIAL.lock().await;
    let s = Scene::new("e2e-drift").await;
    let w = &s.world;
    s.payments().await;
    let cms = w.config_maps(&s.ns);

    // A hand edit of the projected ConfigMap (annotation untouched) is reverted.
    let edit = json!({ "data": { "provider": "hand-edited" } });
    cms.patch("payments-config", &PatchParams::default(), &Patch::Merge(&edit)).await.unwrap();
    eventually("hand edit reverted", || async {
        (cms.get("payments-config").await.ok()?.data?["provider"] == "stripe").then_some(())
    })
    .await;

    // Another writer adds a key to the tenant's item; drift on a managed key is reverted.
    w.ddb
        .update_item()
        .table_name(&w.table)
        .key("pk", AttributeValue::S(format!("TENANT#{}", s.tenant)))
        .key("sk", AttributeValue::S("CONFIG#payments".into()))
        .update_expression("SET #d.#k = :v, #d.#p = :evil")
        .expression_attribute_names("#d", "data")
        .expression_attribute_names("#k", "feature-x")
        .expression_attribute_names("#p", "provider")
        .expression_attribute_values(":v", AttributeValue::S("on".into()))
        .expression_attribute_values(":evil", AttributeValue::S("evil".into()))
        .send()
        .await
        .unwrap();
    eventually("foreign key projected, drift reverted", || async {
        let data = cms.get("payments-config").await.ok()?.data?;
        (data.get("feature-x").map(String::as_str) == Some("on") && data["provider"] == "stripe").then_some(())
    })
    .await;
    assert_eq!(s.item("payments").await.unwrap()["provider"], "stripe");
    let events = Api::<Event>::namespaced(w.client.clone(), &s.ns);
    eventually("DriftCorrected event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.iter().any(|e| e.reason.as_deref() == Some("DriftCorrected")).then_some(())
    })
    .await;

    // A key another writer put there that Kubernetes refuses as a ConfigMap
    // key ("..x", IsConfigMapKey) is skipped and named; the rest still projects.
    w.set_item_key(&s.tenant, "payments", "..hidden", Some("x")).await;
    eventually("the refused key named in status", || async {
        let tc = w.tenant_configs(&s.ns).get("payments").await.ok()?;
        let projected = tc.status?.conditions.into_iter().find(|c| c.type_ == "Projected")?;
        (projected.status == "True" && projected.message.contains("..hidden")).then_some(())
    })
    .await;
    assert!(!w.config_map(&s.ns, "payments-config").await.contains_key("..hidden"));

    // A shared parameter changed with no event: the resync reads the path
    // once, finds it changed and the include is read afresh (not from the
    // shared cache, whose entries live 5 minutes).
    w.put_parameter(&format!("{}/prod/region", w.shared), "us").await;
    eventually("the changed shared parameter projected by the resync", || async {
        (cms.get("payments-config").await.ok()?.data?.get("region")? == "us").then_some(())
    })
    .await;
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_their_reason_and_write_nothing() {
    let _turn = SERIAL.lock().await;
    let mut s = Scene::new("e2e-refuse").await;
    // NoStoreForTags below needs a cluster without a default store; other tests
    // remove the ones they create. A leftover is a broken precondition, not a skip.
    let defaults: Vec<String> = Api::<ConfigStore>::all(s.world.client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|s| s.spec.default)
        .map(|s| s.name_any())
        .collect();
    assert!(defaults.is_empty(), "run on a fresh stack: default ConfigStores exist: {defaults:?}");
    s.payments().await;
    let tenant = s.tenant.clone();
    let unlabelled = s.world.namespace("nolabel", None).await;
    let same_tenant = s.world.namespace("c", Some(&tenant)).await;
    let ns = s.ns.clone();

    s.simple(&unlabelled, "orphan", json!({})).await;
    let other_tenants = format!("{}/other-tenant/payments", s.world.prefix);
    s.simple(&ns, "sneaky", json!({ "include": [{ "parameterPath": other_tenants }] })).await;
    let claimant = json!({ "defaultTags": [s.tag("tenant")], "entries": [{ "key": "provider", "value": "adyen" }] });
    s.world.tenant_config(&same_tenant, "payments", claimant).await;
    let foreign: ConfigMap =
        serde_json::from_value(json!({ "metadata": { "name": "foreign-cm" }, "data": { "mine": "yes" } })).unwrap();
    s.world.config_maps(&ns).create(&PostParams::default(), &foreign).await.unwrap();
    s.simple(&ns, "collide", json!({ "projection": { "configMapName": "foreign-cm" } })).await;
    // The same for a Secret, which the controller learns about without reading it.
    let foreign: Secret =
        serde_json::from_value(json!({ "metadata": { "name": "foreign-secret" }, "stringData": { "mine": "yes" } }))
            .unwrap();
    let secrets = Api::<Secret>::namespaced(s.world.client.clone(), &ns);
    secrets.create(&PostParams::default(), &foreign).await.unwrap();
    s.simple(&ns, "collide-secret", json!({ "projection": { "secretName": "foreign-secret" } })).await;
    // A secure entry routed to DynamoDB (no per-value encryption) is a spec error.
    let insecure =
        json!({ "defaultTags": [s.tag("tenant")], "entries": [{ "key": "token", "value": "t", "secure": true }] });
    s.world.tenant_config(&ns, "insecure", insecure).await;
    // A tag no store serves, and no default store.
    let nowhere = s.tag("nowhere");
    s.world.tenant_config(&ns, "lost", json!({ "entries": [{ "key": "a", "value": "1", "tags": [nowhere] }] })).await;

    let w = &s.world;
    let orphan = w.wait_reason(&unlabelled, "orphan", "False", "TenantUnknown").await;
    assert!(condition(&orphan, "Ready").is_some());
    w.wait_reason(&ns, "sneaky", "False", "IncludeNotAllowed").await;
    let conflict = w.wait_reason(&same_tenant, "payments", "False", "Conflict").await;
    let ready_message =
        |tc: TenantConfig| tc.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap().message;
    let message = ready_message(conflict);
    assert!(message.contains(&format!("{ns}/payments")), "names the owner: {message}");
    w.wait_reason(&ns, "collide", "False", "ConfigMapConflict").await;
    let message = ready_message(w.wait_reason(&ns, "collide-secret", "False", "ConfigMapConflict").await);
    assert!(message.contains("Secret foreign-secret"), "{message}");
    w.wait_reason(&ns, "insecure", "False", "ValidationFailed").await;
    let message = ready_message(w.wait_reason(&ns, "lost", "False", "NoStoreForTags").await);
    assert!(message.contains(&nowhere), "names the tags: {message}");

    assert_eq!(w.config_map(&ns, "foreign-cm").await, BTreeMap::from([("mine".into(), "yes".into())]));
    let foreign = secrets.get("foreign-secret").await.unwrap();
    assert_eq!(foreign.data.unwrap().keys().collect::<Vec<_>>(), ["mine"], "the foreign Secret is never overwritten");
    assert!(s.item("collide-secret").await.is_none(), "a projection conflict writes nothing to the stores");
    assert!(s.item("sneaky").await.is_none(), "refused include wrote nothing");
    assert!(s.item("insecure").await.is_none());
    assert_eq!(s.item("payments").await.unwrap()["provider"], "stripe", "conflict wrote nothing");
    // The claimant goes first: once the owner is gone it could claim the released item.
    let claimant = w.tenant_configs(&same_tenant);
    claimant.delete("payments", &DeleteParams::default()).await.unwrap();
    eventually("the claimant deleted", || async {
        claimant.get_opt("payments").await.unwrap().is_none().then_some(())
    })
    .await;
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_stops_answering_holds_deletion_until_it_recovers() {
    let _turn = SERIAL.lock().await;
    let mut s = Scene::new("e2e-flaky").await;
    let proxy = FaultProxy::start(&support::env("AWS_ENDPOINT_URL")).await;
    // A table of its own: a store on the DynamoDB store's table would overlap
    // it (#30: overlapping stores), and the sweep of a redundant reconcile that
    // read a stale status through one store deletes what the other wrote.
    let table = format!("{}-flaky", s.world.table);
    support::create_table(&s.world.ddb, &table).await;
    s.world
        .store("flaky", json!({ "tags": ["flaky"], "dynamodb": { "tableName": table, "endpoint": proxy.url } }))
        .await;
    let pk = format!("TENANT#{}", s.tenant);
    let item = || support::fixtures::item_data(&s.world.ddb, &table, &pk, "CONFIG#flaky");
    let (w, ns) = (&s.world, &s.ns);
    let tcs = w.tenant_configs(ns);
    w.tenant_config(ns, "flaky", json!({ "defaultTags": [s.tag("flaky")], "entries": [{ "key": "k", "value": "1" }] }))
        .await;
    w.wait_reason(ns, "flaky", "True", "Reconciled").await;
    // Throttling beyond the retry budget shows as Throttled, then clears.
    proxy.inject("UpdateItem", Fault::Throttle, Times::Always);
    let patch = json!({ "spec": { "entries": [{ "key": "k", "value": "2" }] } });
    tcs.patch("flaky", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    w.wait_reason(ns, "flaky", "False", "Throttled").await;
    proxy.clear();
    w.wait_reason(ns, "flaky", "True", "Reconciled").await;
    assert_eq!(item().await.unwrap()["k"], "2");
    // A store down: StoreUnavailable, deletion waits, then completes.
    proxy.inject("*", Fault::ServerError, Times::Always);
    tcs.delete("flaky", &DeleteParams::default()).await.unwrap();
    w.wait_reason(ns, "flaky", "False", "StoreUnavailable").await;
    assert!(tcs.get_opt("flaky").await.unwrap().is_some(), "the object stays while its store is down");
    assert_eq!(item().await.unwrap()["k"], "2");
    proxy.clear();
    eventually("flaky deleted after the store recovers", || async {
        tcs.get_opt("flaky").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(item().await.is_none(), "cleanup completed");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_removes_managed_keys_and_the_projection_or_retains_them() {
    let _turn = SERIAL.lock().await;
    let s = Scene::new("e2e-delete").await;
    let (w, ns) = (&s.world, &s.ns);
    s.payments().await;
    w.set_item_key(&s.tenant, "payments", "feature-x", Some("on")).await;
    let keeper = json!({ "defaultTags": [s.tag("tenant")], "entries": [{ "key": "kept", "value": "1" }], "deletionPolicy": "Retain" });
    w.tenant_config(ns, "keeper", keeper).await;
    w.wait_reason(ns, "keeper", "True", "Reconciled").await;
    let tcs = w.tenant_configs(ns);
    for name in ["payments", "keeper"] {
        tcs.delete(name, &DeleteParams::default()).await.unwrap();
    }
    for name in ["payments", "keeper"] {
        eventually(&format!("{name} deleted"), || async { tcs.get_opt(name).await.unwrap().is_none().then_some(()) })
            .await;
    }
    assert_eq!(
        s.item("payments").await.unwrap(),
        BTreeMap::from([("feature-x".into(), "on".into())]),
        "managed keys gone, the other writer's key stays"
    );
    assert_eq!(
        w.parameter_count(&format!("{}/{}/_/payments", w.prefix, s.tenant)).await,
        0,
        "managed parameters deleted"
    );
    assert!(w.config_maps(ns).get_opt("payments-config").await.unwrap().is_none());
    assert!(Api::<Secret>::namespaced(w.client.clone(), ns).get_opt("payments-secrets").await.unwrap().is_none());
    assert_eq!(s.item("keeper").await.unwrap()["kept"], "1", "Retain keeps store data");
    s.finish().await;
}

/// Upgrading from the layout where a namespace without an environment used
/// `{prefix}/{tenant}/{configType}` (where environment `prod` of the same
/// tenant also lived): `migrate-paths` moves exactly what such objects read,
/// leaves environment prod's parameters, and the controller then projects each
/// object's own data and nothing of the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_paths_moves_data_of_namespaces_without_an_environment() {
    let _turn = SERIAL.lock().await;
    let mut w = World::new("e2e-migrate").await;
    let prefix = w.prefix.clone();
    let store = w.store("ssm", json!({ "tags": ["ssm"], "parameterStore": { "pathPrefix": prefix } })).await;
    let tenant = w.tenant(0);
    let plain = w.namespace("plain", Some(&tenant)).await;
    let prod =
        w.namespace_labelled("prod", &[(names::TENANT_LABEL, &tenant), (names::ENVIRONMENT_LABEL, "prod")]).await;
    // What the previous version wrote: its own keys (owner in the description,
    // as it records them) and another writer's nested key.
    let old = |rest: &str| format!("{prefix}/{tenant}/{rest}");
    let written = [
        (old("web/a"), "1", Some(format!("{plain}/web"))),
        (old("web/nested/x"), "foreign", None),
        (old("prod/k"), "mine", Some(format!("{plain}/prod"))),
        (old("prod/payments/api-token"), "token-1", Some(format!("{prod}/payments"))),
        (old("orphan/z"), "left", None),
    ];
    for (name, value, owner) in &written {
        let description = owner.as_ref().map(|o| format!("managed by tenant-config-controller for {o}"));
        let put = w.ssm.put_parameter().name(name).value(*value).r#type(ParameterType::String);
        put.set_description(description).send().await.unwrap();
    }
    let entry =
        |key: &str, value: &str| json!({ "defaultTags": [w.tag("ssm")], "entries": [{ "key": key, "value": value }] });
    w.tenant_config(&plain, "web", entry("a", "1")).await;
    w.tenant_config(&plain, "prod", entry("k", "mine")).await;
    w.tenant_config(&prod, "payments", entry("api-token", "token-1")).await;

    let migrate = |apply: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tenant-config-controller"));
        cmd.args(["migrate-paths", "--store", &store]);
        if apply {
            cmd.arg("--apply");
        }
        let out = cmd.output().expect("migrate-paths runs");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        stdout
    };
    let names = || async { w.parameters(&prefix).await };
    let before = names().await;
    let dry = migrate(false);
    assert!(dry.contains("3 parameters to move"), "{dry}");
    assert_eq!(names().await, before, "a dry run changes nothing");
    let applied = migrate(true);
    assert!(applied.contains("3 parameters moved, 0 conflicts"), "{applied}");
    let new = |rest: &str| format!("{prefix}/{tenant}/_/{rest}");
    assert_eq!(
        names().await,
        BTreeMap::from([
            (new("prod/k"), "mine".to_string()),
            (new("web/a"), "1".into()),
            (new("web/nested/x"), "foreign".into()),
            (old("orphan/z"), "left".into()),
            (old("prod/payments/api-token"), "token-1".into()),
        ])
    );
    let moved = w.ssm.get_parameter().name(new("web/a")).send().await.unwrap();
    assert!(moved.parameter.is_some());
    assert!(migrate(true).contains("0 parameters moved"), "a second run has nothing to do");

    let controller = InProcessController::start(&w.client, &w.sdk, Settings::default(), None);
    w.wait_ready(&plain, "web").await;
    w.wait_ready(&plain, "prod").await;
    w.wait_ready(&prod, "payments").await;
    let map = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    assert_eq!(w.config_map(&plain, "web").await, map(&[("a", "1"), ("nested.x", "foreign")]));
    assert_eq!(w.config_map(&plain, "prod").await, map(&[("k", "mine")]), "nothing of environment prod");
    assert_eq!(w.config_map(&prod, "payments").await, map(&[("api-token", "token-1")]));
    w.clean_up().await;
    controller.stop_within(Duration::from_secs(30)).await;
}

/// The Ready condition of a ConfigStore, once it says `reason`.
async fn store_reason(w: &World, store: &str, reason: &str) -> String {
    let api = Api::<ConfigStore>::all(w.client.clone());
    eventually(&format!("ConfigStore {store} {reason}"), || async {
        let status = api.get(store).await.ok()?.status?;
        let ready = status.conditions.into_iter().find(|c| c.type_ == "Ready" && c.reason == reason)?;
        Some(ready.message)
    })
    .await
}

/// Two DynamoDB stores on one table, and a shared path above a tenant
/// prefix: every store of each pair says `Overlap` (and `kubectl get` shows
/// it), nothing is written through them, an include that would read another
/// tenant's data is refused; once separated, everything converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_stores_are_refused_and_say_so() {
    let _turn = SERIAL.lock().await;
    let mut s = Scene::new("e2e-overlap").await;
    let (ddb, ssm) = (format!("{}-ddb", s.world.id), format!("{}-ssm", s.world.id));
    let (table, prefix) = (s.world.table.clone(), s.world.prefix.clone());
    let twin = s.world.store("twin", json!({ "tags": ["twin"], "dynamodb": { "tableName": table } })).await;
    let wide_spec = |shared: &str| json!({ "tags": ["wide"], "parameterStore": { "pathPrefix": format!("{prefix}-wide"), "sharedPaths": [shared] } });
    let wide = s.world.store("wide", wide_spec(&prefix)).await;
    let omega = s.world.tenant(1);
    s.world.put_parameter(&format!("{prefix}/{omega}/_/orders/token"), "omega-secret").await;

    let w = &s.world;
    for (store, other) in [(&ddb, &twin), (&twin, &ddb), (&ssm, &wide), (&wide, &ssm)] {
        let message = store_reason(w, store, "Overlap").await;
        assert!(message.contains(&format!("ConfigStore {other}")), "{store}: {message}");
    }
    let listed = std::process::Command::new(support::env("KUBECTL")).args(["get", "configstores", &twin]).output();
    let listed = String::from_utf8_lossy(&listed.unwrap().stdout).to_string();
    assert!(listed.contains("READY") && listed.contains("False") && listed.contains("Overlap"), "{listed}");

    let ns = s.ns.clone();
    s.simple(&ns, "plain", json!({})).await;
    let nosy = json!({ "include": [{ "parameterPath": format!("{prefix}/{omega}/_/orders") }] });
    s.simple(&ns, "nosy", nosy).await;
    let w = &s.world;
    let refused = w.wait_reason(&ns, "plain", "False", "StoreOverlap").await;
    let ready = refused.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(ready.message.contains(&format!("route to ConfigStore {ddb}")), "{}", ready.message);
    w.wait_reason(&ns, "nosy", "False", "StoreOverlap").await;
    assert!(s.item("plain").await.is_none(), "nothing written through an overlapping store");
    assert!(s.item("nosy").await.is_none());
    assert!(w.config_maps(&ns).get_opt("nosy").await.unwrap().is_none(), "omega's value projected nowhere");

    // The platform team separates them: each store converges, and so does the object.
    let stores = Api::<ConfigStore>::all(w.client.clone());
    let other_table = json!({ "spec": { "dynamodb": { "tableName": format!("{table}-twin") } } });
    stores.patch(&twin, &PatchParams::default(), &Patch::Merge(&other_table)).await.unwrap();
    let own_shared = json!({ "spec": wide_spec(&format!("{prefix}-wide-shared")) });
    stores.patch(&wide, &PatchParams::default(), &Patch::Merge(&own_shared)).await.unwrap();
    for store in [&ddb, &twin, &ssm, &wide] {
        store_reason(w, store, "Valid").await;
    }
    w.wait_reason(&ns, "plain", "True", "Reconciled").await;
    w.wait_reason(&ns, "nosy", "False", "IncludeNotAllowed").await;
    assert_eq!(s.item("plain").await.unwrap()["a"], "1");
    s.finish().await;
}

/// Keys other systems own (issue #30 item 5): a billing system keeps
/// `plan-tier` in the tenant's item. A TenantConfig that declares the same key
/// gets KeyConflict, writes nothing for it, never reverts the owner's resets
/// as drift, and never deletes it — until it opts in with `adoptExisting`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_writers_key_is_a_conflict_until_adopted() {
    let _turn = SERIAL.lock().await;
    let s = Scene::new("e2e-adopt").await;
    let (w, ns) = (&s.world, &s.ns);
    for (config_type, key) in [("billing", "plan-tier"), ("seeded", "x")] {
        w.ddb
            .put_item()
            .table_name(&w.table)
            .item("pk", AttributeValue::S(format!("TENANT#{}", s.tenant)))
            .item("sk", AttributeValue::S(format!("CONFIG#{config_type}")))
            .item("data", AttributeValue::M([(key.to_string(), AttributeValue::S("theirs".into()))].into()))
            .send()
            .await
            .unwrap();
    }
    let spec = |entries: serde_json::Value, extra: serde_json::Value| {
        let mut spec = json!({ "defaultTags": [s.tag("tenant")], "entries": entries });
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        spec
    };
    let billing = json!([{ "key": "plan-tier", "value": "free" }, { "key": "a", "value": "1" }]);
    w.tenant_config(ns, "billing", spec(billing, json!({}))).await;
    let seeded = json!([{ "key": "x", "value": "mine" }]);
    w.tenant_config(ns, "seeded", spec(seeded, json!({ "managementPolicy": "CreateOnly" }))).await;

    let conflict = w.wait_reason(ns, "billing", "False", "KeyConflict").await;
    let ready = conflict.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(ready.message.contains(&format!("{}-ddb: plan-tier", w.id)), "{}", ready.message);
    w.wait_reason(ns, "seeded", "False", "KeyConflict").await;
    let item = s.item("billing").await.unwrap();
    assert_eq!((item["plan-tier"].as_str(), item["a"].as_str()), ("theirs", "1"), "the other keys are written");
    w.wait_config_map(ns, "billing", "projected", |d| d.contains_key("a")).await;
    assert_eq!(w.config_map(ns, "billing").await["plan-tier"], "theirs", "the projection shows what the store holds");

    // The owner resets its key: not drift. Several 2 s resyncs later it still holds.
    w.set_item_key(&s.tenant, "billing", "plan-tier", Some("reset")).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(s.item("billing").await.unwrap()["plan-tier"], "reset");
    assert_eq!(w.config_map(ns, "billing").await["plan-tier"], "reset");
    let events = Api::<Event>::namespaced(w.client.clone(), ns).list(&ListParams::default()).await.unwrap();
    assert!(!events.items.iter().any(|e| e.reason.as_deref() == Some("DriftCorrected")), "never reverted as drift");

    // CreateOnly and deletion: their key stays.
    let tcs = w.tenant_configs(ns);
    tcs.delete("seeded", &DeleteParams::default()).await.unwrap();
    eventually("seeded deleted", || async { tcs.get_opt("seeded").await.unwrap().is_none().then_some(()) }).await;
    assert_eq!(s.item("seeded").await.unwrap()["x"], "theirs");

    // Opting in takes it over.
    let adopt = json!({ "spec": { "adoptExisting": true } });
    tcs.patch("billing", &PatchParams::default(), &Patch::Merge(&adopt)).await.unwrap();
    w.wait_reason(ns, "billing", "True", "Reconciled").await;
    assert_eq!(s.item("billing").await.unwrap()["plan-tier"], "free");
    s.finish().await;
}

/// Per-tenant quotas (issue #29 item 2): a store allows 3 entries per
/// tenant. A tenant's second object that would take it to 4 writes nothing and
/// says why (condition and Event); another tenant has its own 3; once the
/// first object is deleted, the second gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_store_quota_writes_nothing_and_others_keep_theirs() {
    let _turn = SERIAL.lock().await;
    let mut s = Scene::new("e2e-quota").await;
    let prefix = format!("{}-q", s.world.prefix);
    let quota = json!({ "tags": ["quota"], "parameterStore": { "pathPrefix": prefix }, "quota": { "maxEntries": 3 } });
    s.world.store("quota", quota).await;
    let other_tenant = s.world.tenant(1);
    let other_ns = s.world.namespace("other", Some(&other_tenant)).await;
    let (w, ns, tag) = (&s.world, &s.ns, s.tag("quota"));
    let entries = |n: usize| {
        let entries: Vec<_> = (0..n).map(|i| json!({ "key": format!("k{i}"), "value": "v", "tags": [tag] })).collect();
        json!({ "entries": entries })
    };
    w.tenant_config(ns, "first", entries(2)).await;
    w.wait_ready(ns, "first").await;
    w.tenant_config(ns, "second", entries(2)).await;
    let held = w.wait_reason(ns, "second", "False", "QuotaExceeded").await;
    let ready = held.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(
        ready.message.contains("would hold 4 entries") && ready.message.contains("allows 3 entries"),
        "{}",
        ready.message
    );
    let second_path = format!("{prefix}/{}/_/second", s.tenant);
    assert_eq!(w.parameter_count(&second_path).await, 0, "nothing written");
    let events = Api::<Event>::namespaced(w.client.clone(), ns).list(&ListParams::default()).await.unwrap();
    assert!(events.items.iter().any(|e| e.reason.as_deref() == Some("QuotaExceeded")), "an Event says so");
    w.tenant_config(&other_ns, "third", entries(3)).await;
    w.wait_ready(&other_ns, "third").await;

    w.tenant_configs(ns).delete("first", &DeleteParams::default()).await.unwrap();
    w.wait_ready(ns, "second").await;
    assert_eq!(w.parameter_count(&second_path).await, 2);
    s.finish().await;
}

/// Fair share of the reconcile slots (issue #29 item 1, the slot part): a
/// noisy tenant's objects wait for the SSM write budget (3/s) inside their
/// reconciles. With 4 slots and `--tenant-concurrency 2`, it holds at most 2;
/// a quiet tenant's new DynamoDB-routed object is Ready at once instead of
/// after noisy reconciles free a slot (17 s measured with no per-tenant
/// limit), and the noisy tenant still converges.
/// How long a new DynamoDB-routed object `calm` of a quiet tenant takes to be Ready.
async fn quiet_object_ready_in(w: &World, ns: &str) -> Duration {
    let started = std::time::Instant::now();
    let db = w.tag("db");
    w.tenant_config(ns, "calm", json!({ "defaultTags": [db], "entries": [{ "key": "a", "value": "1" }] })).await;
    w.wait_ready(ns, "calm").await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_tenant_converges_while_a_noisy_one_waits_for_aws() {
    let _turn = SERIAL.lock().await;
    let mut w = World::new("e2e-fair").await;
    w.standard_stores().await;
    let (noisy, quiet) = (w.tenant(0), w.tenant(1));
    let noisy_ns = w.namespace("noisy", Some(&noisy)).await;
    let quiet_ns = w.namespace("quiet", Some(&quiet)).await;
    let settings = Settings { concurrency: 4, tenant_concurrency: 2, ..Settings::default() };
    let controller = InProcessController::start(&w.client, &w.sdk, settings, None);
    let ssm = w.tag("ssm");
    let noisy_objects = 12;
    for n in 0..noisy_objects {
        let entries: Vec<_> =
            (0..6).map(|k| json!({ "key": format!("k{k}"), "value": format!("{n}"), "tags": [ssm] })).collect();
        w.tenant_config(&noisy_ns, &format!("n{n}"), json!({ "entries": entries })).await;
    }
    // The noisy objects are under way, waiting for the write budget.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let took = quiet_object_ready_in(&w, &quiet_ns).await;
    let noisy_ready = w.ready_count(&noisy_ns).await;
    println!("quiet tenant Ready in {took:?} while the noisy one had {noisy_ready}/{noisy_objects} Ready");
    assert!(noisy_ready < noisy_objects, "the noisy tenant was still draining");
    assert!(took < Duration::from_secs(3), "the quiet tenant waited for a slot: {took:?}");
    // Its Parameter Store write takes its turn for the write budget (round
    // robin by tenant), not a place behind the noisy tenant's queued writes.
    let started = std::time::Instant::now();
    let entry = json!({ "entries": [{ "key": "a", "value": "1", "tags": [ssm] }] });
    w.tenant_config(&quiet_ns, "calm-ssm", entry).await;
    w.wait_ready(&quiet_ns, "calm-ssm").await;
    let took_ssm = started.elapsed();
    let noisy_ready = w.ready_count(&noisy_ns).await;
    println!(
        "quiet tenant's SSM object Ready in {took_ssm:?} while the noisy one had {noisy_ready}/{noisy_objects} Ready"
    );
    assert!(took_ssm < Duration::from_secs(3), "the quiet tenant's write waited behind the noisy ones: {took_ssm:?}");
    w.wait_ready_count(&noisy_ns, noisy_objects).await;
    // The waits are visible without naming a tenant: the queue's and the rate limit's.
    let exposition = controller.metrics.encode();
    let count = |name: &str| -> f64 {
        let line = format!("tenant_config_{name}_count ");
        let value = exposition.lines().find_map(|l| l.strip_prefix(line.as_str()));
        value.unwrap_or_else(|| panic!("{name} in\n{exposition}")).trim().parse().unwrap()
    };
    assert!(count("store_rate_limit_wait_seconds") >= 73.0, "every SSM write waited for its token");
    assert!(count("reconcile_queue_wait_seconds") >= 14.0, "every object was requested and started");
    assert!(exposition.contains("result=\"deferred\""), "waiting its tenant's turn is counted apart");
    // And said on the objects, once a minute per tenant, not once per object.
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(w.client.clone(), &noisy_ns);
    let fair_share: Vec<_> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("FairShare"))
        .collect();
    // (The drain takes about 25 s; a second minute under load may add one.)
    assert!((1..=2).contains(&fair_share.len()), "one Event per minute of waiting: {fair_share:?}");
    let note = fair_share[0].note.clone().unwrap_or_default();
    assert!(note.contains(&format!("tenant {noisy} has 2 reconciles under way")), "{note}");
    let quiet_events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(w.client.clone(), &quiet_ns);
    let quiet_events = quiet_events.list(&ListParams::default()).await.unwrap().items;
    assert!(quiet_events.iter().all(|e| e.reason.as_deref() != Some("FairShare")), "the quiet tenant never waited");
    w.clean_up().await;
    controller.stop_within(Duration::from_secs(30)).await;
}

/// Every reconcile slot held by objects waiting for the SSM write budget: two
/// noisy tenants, each at its `--tenant-concurrency` of 1, fill the 2 slots.
/// A reconcile lends its slot while it waits for rate tokens, so a quiet
/// tenant's DynamoDB-routed object still starts at once (before, it waited
/// until a noisy reconcile had written all 12 of its entries: ~8 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_waiting_for_aws_tokens_are_lent_to_other_tenants() {
    let _turn = SERIAL.lock().await;
    let mut w = World::new("e2e-lend").await;
    w.standard_stores().await;
    let settings = Settings { concurrency: 2, tenant_concurrency: 1, ..Settings::default() };
    let controller = InProcessController::start(&w.client, &w.sdk, settings, None);
    let ssm = w.tag("ssm");
    let mut noisy_namespaces = Vec::new();
    for t in 0..2 {
        let ns = w.namespace(&format!("noisy{t}"), Some(&w.tenant(t))).await;
        for n in 0..2 {
            let entries: Vec<_> =
                (0..12).map(|k| json!({ "key": format!("k{k}"), "value": format!("{n}"), "tags": [ssm] })).collect();
            w.tenant_config(&ns, &format!("n{n}"), json!({ "entries": entries })).await;
        }
        noisy_namespaces.push(ns);
    }
    let quiet_ns = w.namespace("quiet", Some(&w.tenant(9))).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let took = quiet_object_ready_in(&w, &quiet_ns).await;
    let mut noisy_ready = 0;
    for ns in &noisy_namespaces {
        noisy_ready += w.ready_count(ns).await;
    }
    println!("quiet tenant Ready in {took:?} while {noisy_ready}/4 noisy objects were Ready");
    assert!(noisy_ready < 4, "the noisy tenants were still waiting for the write budget");
    assert!(took < Duration::from_secs(3), "the quiet tenant waited for a slot held by a rate-limit wait: {took:?}");
    for ns in &noisy_namespaces {
        w.wait_ready_count(ns, 2).await;
    }
    w.clean_up().await;
    controller.stop_within(Duration::from_secs(30)).await;
}
