//! The CRDs against a real kube-apiserver: they install with kubectl, a valid
//! TenantConfig is accepted with the documented defaults, and invalid manifests
//! are refused by the API server itself with the schema's message.

mod support;

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, PostParams},
    core::GroupVersionKind,
};
use serde_json::{Value, json};
use support::{install_crds, kube_client, kubectl, unique};
use tenant_config_controller::api::{ConfigStore, DeletionPolicy, ManagementPolicy, TenantConfig};

async fn setup() -> (Client, String) {
    install_crds();
    let client = kube_client().await;
    let ns = unique("smoke");
    let namespace: Namespace = serde_json::from_value(json!({
        "metadata": { "name": ns, "labels": { "tenantconfig.io/tenant": "acme" } }
    }))
    .unwrap();
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &namespace).await.unwrap();
    (client, ns)
}

/// A TenantConfig manifest as a user would write it, valid or not.
fn manifest(name: &str, spec: Value) -> Value {
    json!({ "apiVersion": "tenantconfig.io/v1alpha1", "kind": "TenantConfig", "metadata": { "name": name }, "spec": spec })
}

/// Creates an arbitrary (possibly invalid) object; returns the API server's
/// refusal message, if any.
async fn create_raw(client: &Client, ns: Option<&str>, kind: &str, obj: Value) -> Result<(), String> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("tenantconfig.io", "v1alpha1", kind));
    let api: Api<DynamicObject> = match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let obj: DynamicObject = serde_json::from_value(obj).unwrap();
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) => Err(status.message),
        Err(other) => panic!("unexpected client error: {other}"),
    }
}

#[tokio::test]
async fn valid_tenant_config_is_accepted_with_defaults() {
    let (client, ns) = setup().await;
    let spec = json!({
        "defaultTags": ["tenant"],
        "entries": [
            { "key": "provider", "value": "stripe" },
            { "key": "retry-limit", "value": "5" },
            { "key": "api-endpoint", "value": "https://pay.example.com", "tags": ["static"] },
            { "key": "db-password", "value": "s3cret", "tags": ["static"], "secure": true }
        ],
        "include": [{ "parameterPath": "/tenant-config-shared/prod/payments" }],
        "projection": { "configMapName": "payments-config", "secretName": "payments-secrets" }
    });
    create_raw(&client, Some(&ns), "TenantConfig", manifest("payments", spec)).await.unwrap();

    let stored = Api::<TenantConfig>::namespaced(client, &ns).get("payments").await.unwrap();
    assert_eq!(stored.spec.management_policy, ManagementPolicy::Enforce, "default applied by the API server");
    assert_eq!(stored.spec.deletion_policy, DeletionPolicy::Delete);
    assert_eq!(stored.spec.entries.len(), 4);
    assert_eq!(stored.config_map_name(), "payments-config");
}

#[tokio::test]
async fn invalid_tenant_configs_are_refused_with_the_schema_message() {
    let (client, ns) = setup().await;
    let many: Vec<Value> = (0..257).map(|i| json!({ "key": format!("k{i}"), "value": "v" })).collect();
    // 33 values of 8,000 bytes: each allowed alone, 264,000 together.
    let heavy: Vec<Value> = (0..33).map(|i| json!({ "key": format!("k{i}"), "value": "v".repeat(8000) })).collect();
    let cases = [
        ("bad key charset", json!({ "entries": [{ "key": "a/b", "value": "x" }] }), "should match '^[-._a-zA-Z0-9]+$'"),
        (
            "dot-dot key",
            json!({ "entries": [{ "key": "..", "value": "x" }] }),
            "key must not be '.' or start with '..'",
        ),
        // Kubernetes refuses a ConfigMap key that starts with '..' (IsConfigMapKey):
        // such an entry could never be projected.
        ("key starting with '..'", json!({ "entries": [{ "key": "..x", "value": "x" }] }), "start with '..'"),
        (
            "duplicate keys",
            json!({ "entries": [{ "key": "a", "value": "1" }, { "key": "a", "value": "2" }] }),
            "Duplicate value",
        ),
        ("key too long", json!({ "entries": [{ "key": "k".repeat(129), "value": "x" }] }), "Too long"),
        ("value over 8 KiB", json!({ "entries": [{ "key": "k", "value": "v".repeat(8193) }] }), "Too long"),
        ("too many entries", json!({ "entries": many }), "must have at most 256 items"),
        ("entries over 256 KiB together", json!({ "entries": heavy }), "at most 256 KiB of keys and values together"),
        ("unknown managementPolicy", json!({ "managementPolicy": "Sometimes" }), "Unsupported value: \"Sometimes\""),
        ("unknown deletionPolicy", json!({ "deletionPolicy": "Forever" }), "Unsupported value: \"Forever\""),
        (
            "include with traversal",
            json!({ "include": [{ "parameterPath": "/tenant-config-shared/../tenant-config/other" }] }),
            "parameterPath must not contain '.' or '..' segments",
        ),
        ("relative include", json!({ "include": [{ "parameterPath": "shared/x" }] }), "spec.include[0].parameterPath"),
        ("bad configType", json!({ "configType": "pay ments" }), "spec.configType"),
        ("bad tag", json!({ "defaultTags": ["has space"] }), "spec.defaultTags[0]"),
        (
            "bad ConfigMap name",
            json!({ "projection": { "configMapName": "Not_A_Name" } }),
            "spec.projection.configMapName",
        ),
    ];
    for (i, (what, spec, expected)) in cases.into_iter().enumerate() {
        let err =
            create_raw(&client, Some(&ns), "TenantConfig", manifest(&format!("bad-{i}"), spec)).await.expect_err(what);
        assert!(err.contains(expected), "{what}: expected {expected:?} in {err:?}");
    }
    let left = Api::<TenantConfig>::namespaced(client, &ns).list(&Default::default()).await.unwrap();
    assert!(left.items.is_empty(), "nothing invalid was stored");
}

/// The total-size cap leaves room for what a real configuration holds: 32
/// values of 8,000 bytes (256,000 bytes with their keys) are accepted.
#[tokio::test]
async fn entries_up_to_the_total_size_cap_are_accepted() {
    let (client, ns) = setup().await;
    let full: Vec<Value> = (0..32).map(|i| json!({ "key": format!("k{i}"), "value": "v".repeat(8000) })).collect();
    create_raw(&client, Some(&ns), "TenantConfig", manifest("full", json!({ "entries": full }))).await.unwrap();
}

#[tokio::test]
async fn invalid_config_stores_are_refused() {
    let (client, _) = setup().await;
    let store = |name: &str, spec: Value| json!({ "apiVersion": "tenantconfig.io/v1alpha1", "kind": "ConfigStore", "metadata": { "name": name }, "spec": spec });
    let name = unique("store");
    let cases = [
        (
            "two backends",
            json!({ "dynamodb": { "tableName": "t-1" }, "parameterStore": { "pathPrefix": "/p" } }),
            "exactly one backend (dynamodb or parameterStore) must be set",
        ),
        ("no backend", json!({ "tags": ["x"] }), "exactly one backend"),
        (
            "reserved prefix",
            json!({ "parameterStore": { "pathPrefix": "/AWS/config" } }),
            "must not start with 'aws' or 'ssm'",
        ),
        (
            "unknown tier",
            json!({ "parameterStore": { "pathPrefix": "/p", "tier": "Premium" } }),
            "Unsupported value: \"Premium\"",
        ),
        (
            "shared path traversal",
            json!({ "parameterStore": { "pathPrefix": "/p", "sharedPaths": ["/shared/.."] } }),
            "sharedPaths must not contain '.' or '..' segments",
        ),
    ];
    for (i, (what, spec, expected)) in cases.into_iter().enumerate() {
        let err = create_raw(&client, None, "ConfigStore", store(&format!("{name}-{i}"), spec)).await.expect_err(what);
        assert!(err.contains(expected), "{what}: expected {expected:?} in {err:?}");
    }

    create_raw(
        &client,
        None,
        "ConfigStore",
        store(&name, json!({ "tags": ["tenant"], "dynamodb": { "tableName": "tenant-config" } })),
    )
    .await
    .unwrap();
    let stored = Api::<ConfigStore>::all(client).get(&name).await.unwrap();
    let dynamo = stored.spec.dynamodb.expect("dynamodb backend");
    assert_eq!((dynamo.partition_key.as_str(), dynamo.sort_key.as_str()), ("pk", "sk"));
}

#[tokio::test]
async fn kubectl_apply_shows_the_refusal_to_the_user() {
    let (_, ns) = setup().await;
    let manifest = format!(
        "apiVersion: tenantconfig.io/v1alpha1\nkind: TenantConfig\nmetadata: {{ name: bad, namespace: {ns} }}\n\
         spec:\n  entries:\n    - {{ key: 'db/password', value: x }}\n"
    );
    let out = kubectl(&["apply", "-f", "-"], Some(&manifest));
    assert!(!out.status.success(), "kubectl apply must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("spec.entries[0].key") && stderr.contains("should match"),
        "kubectl should print the schema message, got: {stderr}"
    );

    let out = kubectl(&["get", "tcfg", "-n", &ns, "-o", "name"], None);
    assert!(out.status.success(), "short name tcfg works: {}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty(), "nothing stored");
}

#[tokio::test]
async fn examples_are_accepted_by_the_api_server() {
    install_crds();
    for file in ["namespaces.yaml", "config-stores.yaml", "tenant-configs.yaml"] {
        let path = support::repo_root().join("examples").join(file);
        let out = kubectl(&["apply", "--server-side", "-f", path.to_str().unwrap()], None);
        assert!(out.status.success(), "{file}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let client = kube_client().await;
    let payments = Api::<TenantConfig>::namespaced(client, "acme-prod").get("payments").await.unwrap();
    assert!(payments.spec.entries.iter().any(|e| e.secure), "the example carries a secure entry");
    // Cluster-scoped stores would route other tests' entries (the example has a
    // default store); remove them.
    let path = support::repo_root().join("examples/config-stores.yaml");
    let out = kubectl(&["delete", "-f", path.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The controller's Event recorder: a repeat within the window counts up the
/// Event it published; the same reason with another note is a new Event that
/// says the new note (kube-runtime's recorder showed the first note).
#[tokio::test]
async fn events_count_repeats_and_say_each_new_note() {
    use k8s_openapi::api::events::v1::Event;
    use kube::runtime::events::EventType;
    use tenant_config_controller::recorder::{Recorder, Said};

    let (client, ns) = setup().await;
    let tc: TenantConfig = serde_json::from_value(json!({
        "apiVersion": "tenantconfig.io/v1alpha1", "kind": "TenantConfig",
        "metadata": { "name": "noted" },
        "spec": { "entries": [{ "key": "a", "value": "1" }] }
    }))
    .unwrap();
    let tc = Api::<TenantConfig>::namespaced(client.clone(), &ns).create(&PostParams::default(), &tc).await.unwrap();
    let regarding = kube::Resource::object_ref(&tc, &());
    let recorder = Recorder::new(client.clone(), "tenant-config-controller");
    let said = |note| Said {
        regarding: &regarding,
        type_: EventType::Normal,
        reason: "StoreWritten",
        action: "Reconcile",
        note,
    };
    recorder.publish(said("wrote a")).await.unwrap();
    recorder.publish(said("wrote a")).await.unwrap();
    recorder.publish(said("wrote a")).await.unwrap();
    recorder.publish(said("wrote b")).await.unwrap();

    let events = Api::<Event>::namespaced(client, &ns).list(&Default::default()).await.unwrap().items;
    let mut seen: Vec<(String, i32)> =
        events.iter().map(|e| (e.note.clone().unwrap_or_default(), e.series.as_ref().map_or(1, |s| s.count))).collect();
    seen.sort();
    assert_eq!(seen, [("wrote a".to_string(), 3), ("wrote b".to_string(), 1)], "{events:?}");
    for e in &events {
        assert_eq!(e.regarding.as_ref().and_then(|r| r.uid.as_deref()), tc.metadata.uid.as_deref());
        assert_eq!(e.reporting_controller.as_deref(), Some("tenant-config-controller"));
        assert_eq!(e.reason.as_deref(), Some("StoreWritten"));
    }
}

/// The foreign-object race (issue #30 item 6): the reconcile reads the
/// ConfigMap (absent, or ours), then writes it. Another writer's object that
/// appears in between — created where there was none, or replacing ours — is
/// never taken over: the write fails (409 on create, 422 on the uid
/// precondition) and leaves it as it was. A forced server-side apply, as
/// before, took it over.
#[tokio::test]
async fn a_projection_never_takes_over_an_object_created_since_it_was_read() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::DeleteParams;
    use tenant_config_controller::reconcile::project::write_owned;

    let (client, ns) = setup().await;
    let api = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    let ours = |name: &str, data: Value| -> ConfigMap {
        serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": ns, "labels": { "app.kubernetes.io/managed-by": "tenant-config-controller" } },
            "data": data
        }))
        .unwrap()
    };
    let foreign = |name: &str| -> ConfigMap {
        serde_json::from_value(json!({ "metadata": { "name": name }, "data": { "theirs": "1" } })).unwrap()
    };
    let is_untouched = |cm: ConfigMap| {
        cm.data == Some([("theirs".to_string(), "1".to_string())].into()) && cm.metadata.labels.is_none()
    };

    // Read: absent. Someone creates it. The write fails and leaves theirs.
    api.create(&PostParams::default(), &foreign("raced")).await.unwrap();
    let err = write_owned(&api, &ours("raced", json!({ "a": "1" })), None).await.unwrap_err();
    assert!(matches!(&err, kube::Error::Api(e) if e.code == 409), "{err}");
    assert!(is_untouched(api.get("raced").await.unwrap()));

    // Read: ours. It is replaced by someone else's. The write fails and leaves theirs.
    let written = write_owned(&api, &ours("replaced", json!({ "a": "1", "b": "2" })), None).await.unwrap();
    api.delete("replaced", &DeleteParams::default()).await.unwrap();
    api.create(&PostParams::default(), &foreign("replaced")).await.unwrap();
    let err = write_owned(&api, &ours("replaced", json!({ "a": "2" })), Some(&written.metadata)).await.unwrap_err();
    let uid_refused = |e: &kube::core::Status| e.code == 422 && e.message.contains("metadata.uid");
    assert!(matches!(&err, kube::Error::Api(e) if uid_refused(e)), "{err}");
    assert!(is_untouched(api.get("replaced").await.unwrap()));

    // Undisturbed: created whole, then updated in place; a dropped key is
    // removed, and so is a key someone else added.
    let created = write_owned(&api, &ours("kept", json!({ "a": "1", "b": "2" })), None).await.unwrap();
    assert_eq!(created.data.as_ref().map(|d| d.len()), Some(2), "never an empty shell a pod could mount");
    let updated = write_owned(&api, &ours("kept", json!({ "a": "2" })), Some(&created.metadata)).await.unwrap();
    assert_eq!(updated.data, Some([("a".to_string(), "2".to_string())].into()));
    assert_eq!(updated.metadata.uid, created.metadata.uid);
    let added = json!({ "data": { "x": "hand-added" } });
    api.patch("kept", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&added)).await.unwrap();
    let reverted = write_owned(&api, &ours("kept", json!({ "a": "3" })), Some(&created.metadata)).await.unwrap();
    assert_eq!(reverted.data, Some([("a".to_string(), "3".to_string())].into()));
}
