//! The controller end to end: real kube-apiserver, moto, the controller running
//! in this process. One test walks through the scenarios in order because a
//! controller reconciles every TenantConfig in the cluster.

mod support;

use support::eventually;

use std::{collections::BTreeMap, time::Duration};

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_ssm::types::ParameterType;
use k8s_openapi::api::{
    core::v1::{ConfigMap, Namespace, Secret},
    events::v1::Event,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams},
};
use serde_json::json;
use support::fixtures::{InProcessController, condition, item_data, wait_ready};
use support::{
    aws_config, create_table,
    fault_proxy::{Fault, FaultProxy, Times},
    install_crds, kube_client, unique,
};
use tenant_config_controller::{
    api::{ConfigStore, TenantConfig, names},
    reconcile::Settings,
    store::stats::Outcome,
};

async fn wait_reason(client: &Client, ns: &str, name: &str, status: &str, reason: &str) -> TenantConfig {
    wait_ready(client, ns, name, status, Some(reason)).await
}

async fn create<K>(client: &Client, ns: Option<&str>, obj: serde_json::Value) -> K
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    // One helper for cluster-scoped and namespaced kinds: the URL differs only by
    // the namespace segment, which the object's metadata carries.
    let mut obj = obj;
    if let Some(ns) = ns {
        obj["metadata"]["namespace"] = json!(ns);
    }
    let obj: K = serde_json::from_value(obj).unwrap();
    let url = K::url_path(&(), ns);
    let body = serde_json::to_vec(&obj).unwrap();
    let request = http::Request::post(url).header("content-type", "application/json").body(body).unwrap();
    client.request::<K>(request).await.expect("create")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_end_to_end() {
    install_crds();
    let client = kube_client().await;
    let sdk = aws_config().await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let ssm = aws_sdk_ssm::Client::new(&sdk);
    let id = unique("e2e");
    let (table, prefix, shared) = (format!("{id}-table"), format!("/{id}"), format!("/{id}-shared"));
    let (tenant_tag, static_tag) = (format!("{id}-tenant"), format!("{id}-static"));
    let tenant = format!("{id}-acme");
    create_table(&ddb, &table).await;
    ssm.put_parameter()
        .name(format!("{shared}/prod/region"))
        .value("eu")
        .r#type(ParameterType::String)
        .send()
        .await
        .unwrap();

    // NoStoreForTags below needs a cluster without a default store; other tests
    // remove the ones they create. A leftover is a broken precondition, not a skip.
    let defaults: Vec<String> = Api::<ConfigStore>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|s| s.spec.default)
        .map(|s| s.name_any())
        .collect();
    assert!(defaults.is_empty(), "run on a fresh stack: default ConfigStores exist: {defaults:?}");

    // The platform's side: stores and tenant namespaces.
    create::<ConfigStore>(&client, None, json!({
        "apiVersion": "tenantconfig.io/v1alpha1", "kind": "ConfigStore", "metadata": { "name": format!("{id}-ddb") },
        "spec": { "tags": [tenant_tag], "dynamodb": { "tableName": table } }
    }))
    .await;
    create::<ConfigStore>(&client, None, json!({
        "apiVersion": "tenantconfig.io/v1alpha1", "kind": "ConfigStore", "metadata": { "name": format!("{id}-ssm") },
        "spec": { "tags": [static_tag], "parameterStore": { "pathPrefix": prefix, "sharedPaths": [shared], "kmsKeyId": "alias/tenant-config" } }
    }))
    .await;
    let ns_a = format!("{id}-a");
    let ns_unlabelled = format!("{id}-nolabel");
    let ns_same_tenant = format!("{id}-c");
    for (ns, labels) in [
        (&ns_a, json!({ "tenantconfig.io/tenant": tenant })),
        (&ns_unlabelled, json!({})),
        (&ns_same_tenant, json!({ "tenantconfig.io/tenant": tenant })),
    ] {
        create::<Namespace>(&client, None, json!({ "metadata": { "name": ns, "labels": labels } })).await;
    }

    // The controller, in this process, with a short resync so drift shows quickly.
    let settings = Settings { resync_interval: Duration::from_secs(2), secure_projection: true, ..Settings::default() };
    let no_events = None; // the event path has its own tests (events_e2e)
    let controller = InProcessController::start(&client, &sdk, settings, no_events);
    let stats = controller.stats.clone();

    // --- A tenant team applies a TenantConfig.
    let tc_json = |name: &str, spec: serde_json::Value| json!({ "apiVersion": "tenantconfig.io/v1alpha1", "kind": "TenantConfig", "metadata": { "name": name }, "spec": spec });
    create::<TenantConfig>(
        &client,
        Some(&ns_a),
        tc_json(
            "payments",
            json!({
                "defaultTags": [tenant_tag],
                "entries": [
                    { "key": "provider", "value": "stripe" },
                    { "key": "retry-limit", "value": "5" },
                    { "key": "api-endpoint", "value": "https://pay.example.com", "tags": [static_tag] },
                    { "key": "db-password", "value": "s3cret", "tags": [static_tag], "secure": true }
                ],
                "include": [{ "parameterPath": format!("{shared}/prod") }],
                "projection": { "configMapName": "payments-config", "secretName": "payments-secrets" }
            }),
        ),
    )
    .await;
    let tc = wait_reason(&client, &ns_a, "payments", "True", "Reconciled").await;
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
            ("ParameterStore".to_string(), format!("{prefix}/{tenant}/payments"), 2)
        ]
    );
    assert!(tc.finalizers().contains(&names::FINALIZER.to_string()));

    // What the stores hold.
    let pk = format!("TENANT#{tenant}");
    let data = item_data(&ddb, &table, &pk, "CONFIG#payments").await.unwrap();
    assert_eq!(data, BTreeMap::from([("provider".into(), "stripe".into()), ("retry-limit".into(), "5".into())]));
    let pw = ssm.get_parameter().name(format!("{prefix}/{tenant}/payments/db-password")).send().await.unwrap();
    assert_eq!(pw.parameter().unwrap().r#type(), Some(&ParameterType::SecureString));

    // What the namespace sees.
    let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns_a);
    let cm = cms.get("payments-config").await.unwrap();
    let cm_data = cm.data.clone().unwrap();
    assert_eq!(
        cm_data,
        BTreeMap::from([
            ("api-endpoint".into(), "https://pay.example.com".into()),
            ("provider".into(), "stripe".into()),
            ("region".into(), "eu".into()),
            ("retry-limit".into(), "5".into()),
        ]),
        "shared include + SSM + DynamoDB; the secure value is not in the ConfigMap"
    );
    assert_eq!(cm.labels()["app.kubernetes.io/managed-by"], "tenant-config-controller");
    assert_eq!(cm.labels()["tenantconfig.io/tenant"], tenant);
    assert_eq!(cm.annotations().get("tenantconfig.io/source-digest"), status.source_digest.as_ref());
    assert_eq!(cm.owner_references()[0].uid, tc.uid().unwrap());
    let secret = Api::<Secret>::namespaced(client.clone(), &ns_a).get("payments-secrets").await.unwrap();
    assert_eq!(secret.data.unwrap()["db-password"].0, b"s3cret");

    // --- No hot loop: several resyncs of an unchanged object write nothing anywhere.
    let (ddb_writes, ssm_writes) = (stats.writes("DynamoDB"), stats.writes("ParameterStore"));
    let (cm_version, tc_version) = (cm.resource_version(), tc.resource_version());
    let calls = |operation: &str| stats.count("DynamoDB", operation, Outcome::Ok);
    let (queries_before, get_items_before) = (calls("Query"), calls("GetItem"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(calls("Query") >= queries_before + 2, "resyncs happened, each a bulk read of the tenant's partition");
    assert_eq!(calls("GetItem"), get_items_before, "an unchanged object costs no read of its own");
    assert_eq!((stats.writes("DynamoDB"), stats.writes("ParameterStore")), (ddb_writes, ssm_writes), "no store writes");
    assert_eq!(cms.get("payments-config").await.unwrap().resource_version(), cm_version, "no ConfigMap write");
    let tcs = Api::<TenantConfig>::namespaced(client.clone(), &ns_a);
    assert_eq!(tcs.get("payments").await.unwrap().resource_version(), tc_version, "no status write");

    // --- A hand edit of the projected ConfigMap (annotation untouched) is reverted.
    let edit = json!({ "data": { "provider": "hand-edited" } });
    cms.patch("payments-config", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&edit)).await.unwrap();
    eventually("hand edit reverted", || async {
        (cms.get("payments-config").await.ok()?.data?["provider"] == "stripe").then_some(())
    })
    .await;

    // --- Another writer adds a key to the tenant's item; drift on a managed key is reverted.
    ddb.update_item()
        .table_name(&table)
        .key("pk", AttributeValue::S(pk.clone()))
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
    assert_eq!(item_data(&ddb, &table, &pk, "CONFIG#payments").await.unwrap()["provider"], "stripe");
    let events = Api::<Event>::namespaced(client.clone(), &ns_a);
    eventually("DriftCorrected event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.iter().any(|e| e.reason.as_deref() == Some("DriftCorrected")).then_some(())
    })
    .await;

    // --- A shared parameter changed with no event: the resync reads the path
    // once, finds it changed and the include is read afresh (not from the
    // shared cache, whose entries live 5 minutes).
    ssm.put_parameter()
        .name(format!("{shared}/prod/region"))
        .value("us")
        .r#type(ParameterType::String)
        .overwrite(true)
        .send()
        .await
        .unwrap();
    eventually("the changed shared parameter projected by the resync", || async {
        (cms.get("payments-config").await.ok()?.data?.get("region")? == "us").then_some(())
    })
    .await;

    // --- Refusals: each with its reason, nothing written.
    create::<TenantConfig>(
        &client,
        Some(&ns_unlabelled),
        tc_json(
            "orphan",
            json!({
                "defaultTags": [tenant_tag], "entries": [{ "key": "a", "value": "1" }]
            }),
        ),
    )
    .await;
    create::<TenantConfig>(
        &client,
        Some(&ns_a),
        tc_json(
            "sneaky",
            json!({
                "defaultTags": [tenant_tag], "entries": [{ "key": "a", "value": "1" }],
                "include": [{ "parameterPath": format!("{prefix}/other-tenant/payments") }]
            }),
        ),
    )
    .await;
    create::<TenantConfig>(
        &client,
        Some(&ns_same_tenant),
        tc_json(
            "payments",
            json!({
                "defaultTags": [tenant_tag], "entries": [{ "key": "provider", "value": "adyen" }]
            }),
        ),
    )
    .await;
    create::<ConfigMap>(
        &client,
        Some(&ns_a),
        json!({ "metadata": { "name": "foreign-cm" }, "data": { "mine": "yes" } }),
    )
    .await;
    create::<TenantConfig>(
        &client,
        Some(&ns_a),
        tc_json(
            "collide",
            json!({
                "defaultTags": [tenant_tag], "entries": [{ "key": "a", "value": "1" }],
                "projection": { "configMapName": "foreign-cm" }
            }),
        ),
    )
    .await;
    let orphan = wait_reason(&client, &ns_unlabelled, "orphan", "False", "TenantUnknown").await;
    assert!(condition(&orphan, "Ready").is_some());
    wait_reason(&client, &ns_a, "sneaky", "False", "IncludeNotAllowed").await;
    let conflict = wait_reason(&client, &ns_same_tenant, "payments", "False", "Conflict").await;
    let conflict_status = conflict.status.unwrap();
    let message = &conflict_status.conditions.iter().find(|c| c.type_ == "Ready").unwrap().message;
    assert!(message.contains(&format!("{ns_a}/payments")), "names the owner: {message}");
    wait_reason(&client, &ns_a, "collide", "False", "ConfigMapConflict").await;
    assert_eq!(cms.get("foreign-cm").await.unwrap().data.unwrap(), BTreeMap::from([("mine".into(), "yes".into())]));
    assert!(item_data(&ddb, &table, &pk, "CONFIG#sneaky").await.is_none(), "refused include wrote nothing");
    assert_eq!(
        item_data(&ddb, &table, &pk, "CONFIG#payments").await.unwrap()["provider"],
        "stripe",
        "conflict wrote nothing"
    );

    // A secure entry routed to DynamoDB (no per-value encryption) is a spec error.
    create::<TenantConfig>(
        &client,
        Some(&ns_a),
        tc_json(
            "insecure",
            json!({
                "defaultTags": [tenant_tag], "entries": [{ "key": "token", "value": "t", "secure": true }]
            }),
        ),
    )
    .await;
    wait_reason(&client, &ns_a, "insecure", "False", "ValidationFailed").await;
    // A tag no store serves, and no default store.
    create::<TenantConfig>(
        &client,
        Some(&ns_a),
        tc_json(
            "lost",
            json!({
                "entries": [{ "key": "a", "value": "1", "tags": [format!("{id}-nowhere")] }]
            }),
        ),
    )
    .await;
    let lost = wait_reason(&client, &ns_a, "lost", "False", "NoStoreForTags").await;
    let lost_status = lost.status.unwrap();
    let message = &lost_status.conditions.iter().find(|c| c.type_ == "Ready").unwrap().message;
    assert!(message.contains(&format!("{id}-nowhere")), "names the tags: {message}");
    assert!(item_data(&ddb, &table, &pk, "CONFIG#insecure").await.is_none());

    // --- A store that stops answering: StoreUnavailable, deletion waits, then completes.
    let proxy = FaultProxy::start(&support::env("AWS_ENDPOINT_URL")).await;
    let flaky_tag = format!("{id}-flaky");
    create::<ConfigStore>(&client, None, json!({
        "apiVersion": "tenantconfig.io/v1alpha1", "kind": "ConfigStore", "metadata": { "name": format!("{id}-flaky") },
        "spec": { "tags": [flaky_tag], "dynamodb": { "tableName": table, "endpoint": proxy.url } }
    }))
    .await;
    create::<TenantConfig>(
        &client,
        Some(&ns_a),
        tc_json(
            "flaky",
            json!({
                "defaultTags": [flaky_tag], "entries": [{ "key": "k", "value": "1" }]
            }),
        ),
    )
    .await;
    wait_reason(&client, &ns_a, "flaky", "True", "Reconciled").await;
    // Throttling beyond the retry budget shows as Throttled, then clears.
    proxy.inject("UpdateItem", Fault::Throttle, Times::Always);
    let patch = json!({ "spec": { "entries": [{ "key": "k", "value": "2" }] } });
    tcs.patch("flaky", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
    wait_reason(&client, &ns_a, "flaky", "False", "Throttled").await;
    proxy.clear();
    wait_reason(&client, &ns_a, "flaky", "True", "Reconciled").await;
    assert_eq!(item_data(&ddb, &table, &pk, "CONFIG#flaky").await.unwrap()["k"], "2");
    proxy.inject("*", Fault::ServerError, Times::Always);
    tcs.delete("flaky", &DeleteParams::default()).await.unwrap();
    wait_reason(&client, &ns_a, "flaky", "False", "StoreUnavailable").await;
    assert!(tcs.get_opt("flaky").await.unwrap().is_some(), "the object stays while its store is down");
    assert_eq!(item_data(&ddb, &table, &pk, "CONFIG#flaky").await.unwrap()["k"], "2");
    proxy.clear();
    eventually("flaky deleted after the store recovers", || async {
        tcs.get_opt("flaky").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(item_data(&ddb, &table, &pk, "CONFIG#flaky").await.is_none(), "cleanup completed");

    // --- Deletion: Delete removes managed keys (others' stay) and the projection; Retain keeps them.
    create::<TenantConfig>(
        &client,
        Some(&ns_a),
        tc_json(
            "keeper",
            json!({
                "defaultTags": [tenant_tag], "entries": [{ "key": "kept", "value": "1" }], "deletionPolicy": "Retain"
            }),
        ),
    )
    .await;
    wait_reason(&client, &ns_a, "keeper", "True", "Reconciled").await;
    // The conflicting claimant goes first: once the owner is gone it could
    // claim the released item, which is not what this part checks.
    let same_tenant = Api::<TenantConfig>::namespaced(client.clone(), &ns_same_tenant);
    same_tenant.delete("payments", &DeleteParams::default()).await.unwrap();
    eventually("the claimant deleted", || async {
        same_tenant.get_opt("payments").await.unwrap().is_none().then_some(())
    })
    .await;
    for name in ["payments", "keeper"] {
        tcs.delete(name, &DeleteParams::default()).await.unwrap();
    }
    for name in ["payments", "keeper"] {
        eventually(&format!("{name} deleted"), || async { tcs.get_opt(name).await.unwrap().is_none().then_some(()) })
            .await;
    }
    assert_eq!(
        item_data(&ddb, &table, &pk, "CONFIG#payments").await.unwrap(),
        BTreeMap::from([("feature-x".into(), "on".into())]),
        "managed keys gone, the other writer's key stays"
    );
    let left =
        ssm.get_parameters_by_path().path(format!("{prefix}/{tenant}/payments")).recursive(true).send().await.unwrap();
    assert!(left.parameters().is_empty(), "managed parameters deleted");
    assert!(cms.get_opt("payments-config").await.unwrap().is_none());
    assert!(Api::<Secret>::namespaced(client.clone(), &ns_a).get_opt("payments-secrets").await.unwrap().is_none());
    assert_eq!(item_data(&ddb, &table, &pk, "CONFIG#keeper").await.unwrap()["kept"], "1", "Retain keeps store data");

    // Leave the cluster as found: later test binaries run their own controller,
    // which must not inherit these objects (their finalizers need a controller).
    for ns in [&ns_a, &ns_unlabelled, &ns_same_tenant] {
        let api = Api::<TenantConfig>::namespaced(client.clone(), ns);
        api.delete_collection(&DeleteParams::default(), &ListParams::default()).await.unwrap();
        eventually(&format!("TenantConfigs in {ns} deleted"), || async {
            api.list(&ListParams::default()).await.ok()?.items.is_empty().then_some(())
        })
        .await;
    }
    for store in ["ddb", "ssm", "flaky"] {
        Api::<ConfigStore>::all(client.clone())
            .delete(&format!("{id}-{store}"), &DeleteParams::default())
            .await
            .unwrap();
    }

    controller.stop_within(Duration::from_secs(30)).await;
}
