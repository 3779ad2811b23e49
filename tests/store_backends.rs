//! Both storage strategies against moto's real HTTP server.

mod support;

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_ssm::types::ParameterType;
use support::{
    aws_config, create_table,
    fault_proxy::{Fault, FaultProxy, Times},
    unique,
};
use tenant_config_controller::{
    api::{ConfigStoreSpec, DynamoDbStore, ManagementPolicy, ParameterStoreStore, ParameterTier},
    store::{
        self, Backend, BackendContext, DEFAULT_MAX_ATTEMPTS, Desired, LimitError, Location, RateLimits, StoreError,
        Value, stats::Outcome,
    },
};

struct Env {
    ctx: BackendContext,
    ddb: aws_sdk_dynamodb::Client,
    ssm: aws_sdk_ssm::Client,
}

async fn env() -> Env {
    let sdk = aws_config().await;
    Env {
        ddb: aws_sdk_dynamodb::Client::new(&sdk),
        ssm: aws_sdk_ssm::Client::new(&sdk),
        ctx: BackendContext::new(sdk, RateLimits::default(), DEFAULT_MAX_ATTEMPTS),
    }
}

fn location(tenant: &str) -> Location {
    Location { tenant: tenant.into(), environment: None, config_type: "payments".into() }
}

fn desired(owner: &str, entries: &[(&str, &str)]) -> Desired {
    Desired {
        owner: owner.into(),
        entries: entries.iter().map(|(k, v)| (k.to_string(), Value { value: v.to_string(), secure: false })).collect(),
        policy: ManagementPolicy::Enforce,
        owned_before: false,
        expect_absent: false,
        created: None,
        adopt_existing: false,
    }
}

fn values(state: &store::StoreState) -> BTreeMap<&str, &str> {
    state.entries.iter().map(|(k, v)| (k.as_str(), v.value.as_str())).collect()
}

async fn dynamodb_backend(env: &Env) -> (Arc<dyn Backend>, String) {
    let table = unique("tenant-config");
    create_table(&env.ddb, &table).await;
    let spec = ConfigStoreSpec {
        dynamodb: Some(DynamoDbStore {
            table_name: table.clone(),
            partition_key: "pk".into(),
            sort_key: "sk".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    (store::build("tenant-dynamodb", &spec, &env.ctx).unwrap(), table)
}

fn ssm_spec(prefix: &str, tier: ParameterTier, kms: Option<&str>) -> ConfigStoreSpec {
    ConfigStoreSpec {
        parameter_store: Some(ParameterStoreStore {
            path_prefix: prefix.into(),
            tier,
            kms_key_id: kms.map(String::from),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn dynamodb_round_trip_keeps_other_writers_keys() {
    let env = env().await;
    let (backend, table) = dynamodb_backend(&env).await;
    let loc = location("acme");
    let owner = "acme-prod/payments";

    let report = backend.apply(&loc, &desired(owner, &[("provider", "stripe"), ("retry-limit", "5")])).await.unwrap();
    assert_eq!(report.written.len(), 2);

    // Another writer adds a key to the same item, outside the controller.
    env.ddb
        .update_item()
        .table_name(&table)
        .key("pk", AttributeValue::S("TENANT#acme".into()))
        .key("sk", AttributeValue::S("CONFIG#payments".into()))
        .update_expression("SET #d.#k = :v")
        .expression_attribute_names("#d", "data")
        .expression_attribute_names("#k", "feature-x")
        .expression_attribute_values(":v", AttributeValue::S("on".into()))
        .send()
        .await
        .unwrap();

    // Change one key, drop one, add one.
    let report = backend.apply(&loc, &desired(owner, &[("provider", "adyen"), ("timeout", "30")])).await.unwrap();
    assert_eq!(report.written.iter().map(String::as_str).collect::<Vec<_>>(), ["provider", "timeout"]);
    assert_eq!(report.deleted.iter().map(String::as_str).collect::<Vec<_>>(), ["retry-limit"]);
    let state = backend.read(&loc).await.unwrap();
    assert_eq!(values(&state), BTreeMap::from([("feature-x", "on"), ("provider", "adyen"), ("timeout", "30")]));
    assert_eq!(state.managed.iter().map(String::as_str).collect::<Vec<_>>(), ["provider", "timeout"]);
    assert_eq!(state.managed_by.as_deref(), Some(owner));
    assert_eq!(backend.describe(&loc), "TENANT#acme/CONFIG#payments");

    // The raw item has the documented layout.
    let item = env
        .ddb
        .get_item()
        .table_name(&table)
        .key("pk", AttributeValue::S("TENANT#acme".into()))
        .key("sk", AttributeValue::S("CONFIG#payments".into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert_eq!(item["managedBy"].as_s().unwrap(), owner);
    assert_eq!(item["version"].as_n().unwrap(), "2");
    assert!(item.contains_key("updatedAt"));

    // Delete: our keys go, the other writer's key and the item stay.
    let deleted = backend.delete_managed(&loc, owner).await.unwrap();
    assert_eq!(deleted.len(), 2);
    let state = backend.read(&loc).await.unwrap();
    assert_eq!(values(&state), BTreeMap::from([("feature-x", "on")]));
    assert!(state.managed.is_empty() && state.managed_by.is_none());
}

#[tokio::test]
async fn dynamodb_delete_of_sole_owner_removes_the_item() {
    let env = env().await;
    let (backend, table) = dynamodb_backend(&env).await;
    let loc = location("globex");
    backend.apply(&loc, &desired("globex-prod/payments", &[("a", "1")])).await.unwrap();
    backend.delete_managed(&loc, "globex-prod/payments").await.unwrap();
    let scan = env.ddb.scan().table_name(&table).send().await.unwrap();
    assert_eq!(scan.count(), 0, "no orphaned item");
}

#[tokio::test]
async fn unchanged_apply_makes_zero_write_calls() {
    let env = env().await;
    let (ddb, _) = dynamodb_backend(&env).await;
    let ssm =
        store::build("shared-ssm", &ssm_spec(&format!("/{}", unique("zero")), ParameterTier::Standard, None), &env.ctx)
            .unwrap();
    let want = desired("acme-prod/payments", &[("a", "1"), ("b", "2"), ("c", "3")]);
    for backend in [&ddb, &ssm] {
        backend.apply(&location("acme"), &want).await.unwrap();
        let writes = env.ctx.stats.writes(backend.kind());
        let reads = env.ctx.stats.total(backend.kind()) - writes;
        let report = backend.apply(&location("acme"), &want).await.unwrap();
        assert!(!report.wrote_anything());
        assert_eq!(env.ctx.stats.writes(backend.kind()), writes, "{}: no write calls", backend.kind());
        assert!(env.ctx.stats.total(backend.kind()) - writes > reads, "{}: it did read", backend.kind());
    }
}

/// Every resync of an unchanged object: one GetParametersByPath, no ownership
/// read — unless anything at the path differs from what the owner wrote.
#[tokio::test]
async fn parameter_store_steady_state_reads_once() {
    let env = env().await;
    let prefix = format!("/{}", unique("steady"));
    let ssm = store::build("ssm", &ssm_spec(&prefix, ParameterTier::Standard, None), &env.ctx).unwrap();
    let want = desired("acme-prod/payments", &[("a", "1"), ("b", "2")]);
    ssm.apply(&location("acme"), &want).await.unwrap();
    let owned = Desired { owned_before: true, ..want.clone() };
    let calls = |op| env.ctx.stats.count("ParameterStore", op, Outcome::Ok);
    let (walks, describes) = (calls("GetParametersByPath"), calls("DescribeParameters"));
    let report = ssm.apply(&location("acme"), &owned).await.unwrap();
    assert!(!report.wrote_anything());
    assert_eq!(report.state.managed_by.as_deref(), Some("acme-prod/payments"));
    assert_eq!((calls("GetParametersByPath") - walks, calls("DescribeParameters") - describes), (1, 0));

    // A parameter someone else put under the path: ownership is read again.
    env.ssm
        .put_parameter()
        .name(format!("{prefix}/acme/_/payments/foreign"))
        .value("x")
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .send()
        .await
        .unwrap();
    let report = ssm.apply(&location("acme"), &owned).await.unwrap();
    assert!(!report.wrote_anything());
    assert_eq!(calls("DescribeParameters") - describes, 1);
    assert_eq!(report.state.managed, ["a".to_string(), "b".to_string()].into());
    // Not owned before (a new claimant): never taken as in sync on values alone.
    let other = Desired { owner: "acme-prod/other".into(), ..want.clone() };
    assert!(matches!(ssm.apply(&location("acme"), &other).await, Err(store::StoreError::Conflict { .. })));
}

/// The object's own key `a.b` and another writer's nested `a/b` flatten to the
/// same key. Before, the winner depended on read order and the controller
/// rewrote its own key on every apply (each write's event asking for the next:
/// 61 PutParameters of unchanged keys in 20 s, out of the 3/s every tenant
/// shares). The object's own key wins, the other is named, nothing is written.
#[tokio::test]
async fn a_nested_parameter_that_flattens_onto_an_own_key_causes_no_writes() {
    let env = env().await;
    let prefix = format!("/{}", unique("flat"));
    let ssm = store::build("ssm", &ssm_spec(&prefix, ParameterTier::Standard, None), &env.ctx).unwrap();
    // Two collisions (the store returns names in order: "a.b" before "a/b").
    let want = desired("acme-prod/payments", &[("a.b", "mine"), ("z.y", "mine")]);
    ssm.apply(&location("acme"), &want).await.unwrap();
    for name in ["a/b", "z/y"] {
        env.ssm
            .put_parameter()
            .name(format!("{prefix}/acme/_/payments/{name}"))
            .value("theirs")
            .r#type(ParameterType::String)
            .send()
            .await
            .unwrap();
    }
    let writes = env.ctx.stats.writes("ParameterStore");
    for owned_before in [false, true, true] {
        let report = ssm.apply(&location("acme"), &Desired { owned_before, ..want.clone() }).await.unwrap();
        assert!(!report.wrote_anything(), "{report:?}");
        assert_eq!(values(&report.state), BTreeMap::from([("a.b", "mine"), ("z.y", "mine")]));
        let shadowed: Vec<String> = ["a/b", "z/y"].iter().map(|n| format!("{prefix}/acme/_/payments/{n}")).collect();
        assert_eq!(report.state.shadowed.iter().cloned().collect::<Vec<_>>(), shadowed, "named, for status");
    }
    assert_eq!(env.ctx.stats.writes("ParameterStore"), writes, "no rewrites of unchanged keys");
    let read = ssm.read(&location("acme")).await.unwrap();
    assert_eq!(values(&read), BTreeMap::from([("a.b", "mine"), ("z.y", "mine")]));
    // The bulk read (the resync's) sees the same, so the resync finds nothing changed.
    let bulk = ssm.bulk_read().unwrap().read_tenant("acme", &[location("acme")]).await.unwrap();
    assert_eq!(bulk[0].content_digest(), read.content_digest());
}

/// The start-up pass: first applies of objects created before it are planned
/// against one walk of the tenant's path. A parameter created after the walk
/// (no event reported it) makes the create fail on its condition; the apply
/// then reads and plans as if there had been no walk — another owner's key is
/// a conflict, not overwritten.
#[tokio::test]
async fn parameter_store_first_applies_share_one_tenant_walk_and_replan_on_a_newer_parameter() {
    let env = env().await;
    let prefix = format!("/{}", unique("walk"));
    let ssm = store::build("ssm", &ssm_spec(&prefix, ParameterTier::Standard, None), &env.ctx).unwrap();
    let calls = |op| env.ctx.stats.count("ParameterStore", op, Outcome::Ok);
    let existing = |owner: &str, entries: &[(&str, &str)]| Desired {
        created: Some(k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(60)),
        ..desired(owner, entries)
    };
    let at = |config_type: &str| Location { tenant: "acme".into(), environment: None, config_type: config_type.into() };
    let put = |name: String, owner: Option<&str>| {
        let request = env.ssm.put_parameter().name(name).value("theirs").r#type(ParameterType::String);
        let request = match owner {
            Some(o) => request.description(format!("managed by tenant-config-controller for {o}")),
            None => request,
        };
        request.send()
    };
    put(format!("{prefix}/acme/_/web/foreign"), None).await.unwrap();

    let report = ssm.apply(&at("web"), &existing("acme/web", &[("a", "1")])).await.unwrap();
    assert_eq!(values(&report.state), BTreeMap::from([("a", "1"), ("foreign", "theirs")]), "the walk saw the tenant");
    let report = ssm.apply(&at("payments"), &existing("acme/payments", &[("a", "2")])).await.unwrap();
    assert_eq!(values(&report.state), BTreeMap::from([("a", "2")]));
    assert_eq!(calls("GetParametersByPath"), 1, "one walk for two first applies");
    assert_eq!(env.ctx.tenant_walks.served.get(), 2);

    // After the walk, another object's parameter appears at a third path.
    put(format!("{prefix}/acme/_/checkout/a"), Some("acme/other")).await.unwrap();
    let result = ssm.apply(&at("checkout"), &existing("acme/checkout", &[("a", "3")])).await;
    assert!(matches!(result, Err(StoreError::Conflict { .. })), "{result:?}");
    assert_eq!(calls("GetParametersByPath"), 2, "the failed create read the path");
    let held = env.ssm.get_parameter().name(format!("{prefix}/acme/_/checkout/a")).send().await.unwrap();
    assert_eq!(held.parameter().unwrap().value(), Some("theirs"), "not overwritten");

    // A second apply of a served path reads on its own (it wrote since).
    let report = ssm.apply(&at("payments"), &existing("acme/payments", &[("a", "2")])).await.unwrap();
    assert!(!report.wrote_anything());
    assert_eq!(calls("GetParametersByPath"), 3);
    // After the start-up pass every first apply reads on its own.
    env.ctx.tenant_walks.close();
    ssm.apply(&at("search"), &existing("acme/search", &[("a", "4")])).await.unwrap();
    assert_eq!((calls("GetParametersByPath"), env.ctx.tenant_walks.walked.get()), (4, 1));
}

/// A never-reconciled object's first DynamoDB write is a guarded create with no
/// read; where the item exists after all (other writers' keys, another owner)
/// the create fails on its condition and the normal read-and-plan path decides.
#[tokio::test]
async fn dynamodb_first_write_creates_without_reading_and_falls_back_when_the_item_exists() {
    let env = env().await;
    let (backend, table) = dynamodb_backend(&env).await;
    let fresh = |owner: &str, entries: &[(&str, &str)]| Desired { expect_absent: true, ..desired(owner, entries) };
    let calls = |op| env.ctx.stats.count("DynamoDB", op, Outcome::Ok);
    let total = || env.ctx.stats.total("DynamoDB");

    // Nothing there: one call, the create.
    let before = total();
    let report = backend.apply(&location("fresh"), &fresh("acme-prod/payments", &[("a", "1")])).await.unwrap();
    assert_eq!(total() - before, 1, "a create and nothing else");
    assert_eq!(values(&report.state), BTreeMap::from([("a", "1")]));
    assert_eq!(report.state.managed_by.as_deref(), Some("acme-prod/payments"));
    assert_eq!(report.state.version, 1);
    // The next ordinary apply agrees with what the create reported.
    let again = backend.apply(&location("fresh"), &desired("acme-prod/payments", &[("a", "1")])).await.unwrap();
    assert!(!again.wrote_anything());

    // Another writer's item is already there: its keys survive and show in the state.
    env.ddb
        .put_item()
        .table_name(&table)
        .item("pk", AttributeValue::S("TENANT#other".into()))
        .item("sk", AttributeValue::S("CONFIG#payments".into()))
        .item("data", AttributeValue::M([("foreign".to_string(), AttributeValue::S("kept".into()))].into()))
        .send()
        .await
        .unwrap();
    let reads = calls("GetItem");
    let report = backend.apply(&location("other"), &fresh("acme-prod/payments", &[("a", "1")])).await.unwrap();
    assert_eq!(values(&report.state), BTreeMap::from([("a", "1"), ("foreign", "kept")]));
    assert_eq!(calls("GetItem") - reads, 1, "the failed create was followed by a read");

    // Owned by another TenantConfig: a conflict, and nothing of the newcomer written.
    let claim = backend.apply(&location("fresh"), &fresh("acme-prod/intruder", &[("a", "2"), ("z", "9")])).await;
    assert!(matches!(claim, Err(StoreError::Conflict { .. })), "{claim:?}");
    let state = backend.read(&location("fresh")).await.unwrap();
    assert_eq!(values(&state), BTreeMap::from([("a", "1")]));
    assert_eq!(state.managed_by.as_deref(), Some("acme-prod/payments"));
}

#[tokio::test]
async fn dynamodb_concurrent_writers_lose_nothing() {
    let env = env().await;
    let (backend, table) = dynamodb_backend(&env).await;
    let loc = location("acme");
    let want = desired("acme-prod/payments", &[("a", "1"), ("b", "2")]);
    backend.apply(&loc, &desired("acme-prod/payments", &[("a", "0")])).await.unwrap();

    // Replicas applying the same spec race with a versioned writer touching other keys.
    let mut tasks = Vec::new();
    for i in 0..6 {
        let backend = backend.clone();
        let want = want.clone();
        let loc = loc.clone();
        tasks.push(tokio::spawn(async move { backend.apply(&loc, &want).await.map(drop) }));
        let ddb = env.ddb.clone();
        let table = table.clone();
        tasks.push(tokio::spawn(async move {
            // Another protocol-following writer: read version, conditional update.
            loop {
                let item = ddb
                    .get_item()
                    .table_name(&table)
                    .key("pk", AttributeValue::S("TENANT#acme".into()))
                    .key("sk", AttributeValue::S("CONFIG#payments".into()))
                    .consistent_read(true)
                    .send()
                    .await
                    .unwrap()
                    .item
                    .unwrap();
                let version = item["version"].as_n().unwrap().clone();
                let next = (version.parse::<u64>().unwrap() + 1).to_string();
                let result = ddb
                    .update_item()
                    .table_name(&table)
                    .key("pk", AttributeValue::S("TENANT#acme".into()))
                    .key("sk", AttributeValue::S("CONFIG#payments".into()))
                    .update_expression("SET #d.#k = :v, #ver = :next")
                    .condition_expression("#ver = :cur")
                    .expression_attribute_names("#d", "data")
                    .expression_attribute_names("#k", format!("other-{i}"))
                    .expression_attribute_names("#ver", "version")
                    .expression_attribute_values(":v", AttributeValue::S(i.to_string()))
                    .expression_attribute_values(":next", AttributeValue::N(next))
                    .expression_attribute_values(":cur", AttributeValue::N(version))
                    .send()
                    .await;
                if result.is_ok() {
                    return Ok(());
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let state = backend.read(&loc).await.unwrap();
    let v = values(&state);
    assert_eq!((v["a"], v["b"]), ("1", "2"), "{v:?}");
    for i in 0..6 {
        assert_eq!(v[format!("other-{i}").as_str()], i.to_string(), "other writer {i} survived: {v:?}");
    }
}

#[tokio::test]
async fn second_owner_gets_a_conflict_and_writes_nothing() {
    let env = env().await;
    let (backend, _) = dynamodb_backend(&env).await;
    let loc = location("acme");
    backend.apply(&loc, &desired("acme-prod/payments", &[("a", "1")])).await.unwrap();
    let writes = env.ctx.stats.writes("DynamoDB");
    let err = backend.apply(&loc, &desired("acme-dev/payments", &[("a", "2")])).await.unwrap_err();
    assert!(matches!(&err, StoreError::Conflict { owner, .. } if owner == "acme-prod/payments"), "{err}");
    assert_eq!(env.ctx.stats.writes("DynamoDB"), writes);
}

#[tokio::test]
async fn dynamodb_item_over_400_kb_is_refused_before_writing() {
    let env = env().await;
    let (backend, table) = dynamodb_backend(&env).await;
    let big = "v".repeat(8192);
    let entries: Vec<(String, &str)> = (0..51).map(|i| (format!("k{i}"), big.as_str())).collect();
    let refs: Vec<(&str, &str)> = entries.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let err = backend.apply(&location("acme"), &desired("acme-prod/payments", &refs)).await.unwrap_err();
    assert!(matches!(err, StoreError::Limit(LimitError::ItemTooLarge { .. })), "{err}");
    assert!(err.to_string().contains("409600 bytes (400 KB)"), "{err}");
    assert_eq!(env.ddb.scan().table_name(&table).send().await.unwrap().count(), 0, "nothing written");
}

#[tokio::test]
async fn parameter_store_round_trip_with_foreign_and_secure_parameters() {
    let env = env().await;
    let prefix = format!("/{}", unique("tenant-config"));
    let backend =
        store::build("shared-ssm", &ssm_spec(&prefix, ParameterTier::Advanced, Some("alias/tenant-config")), &env.ctx)
            .unwrap();
    let loc = Location { tenant: "acme".into(), environment: Some("prod".into()), config_type: "payments".into() };
    let base = format!("{prefix}/acme/prod/payments");
    let no_environment = Location { environment: None, config_type: "prod".into(), ..loc.clone() };
    assert_eq!(backend.describe(&no_environment), format!("{prefix}/acme/_/prod"));
    assert_eq!(backend.describe(&loc), base);
    let owner = "acme-prod/payments";

    let mut want = desired(owner, &[("api-endpoint", "https://pay.example.com"), ("big", &"x".repeat(5000))]);
    want.entries.insert("db-password".into(), Value { value: "s3cret".into(), secure: true });
    let report = backend.apply(&loc, &want).await.unwrap();
    assert_eq!(report.written.len(), 3);

    // What AWS holds: types, tier, tags on create.
    let pw = env.ssm.get_parameter().name(format!("{base}/db-password")).with_decryption(true).send().await.unwrap();
    assert_eq!(pw.parameter().unwrap().r#type(), Some(&ParameterType::SecureString));
    let tags = env
        .ssm
        .list_tags_for_resource()
        .resource_type(aws_sdk_ssm::types::ResourceTypeForTagging::Parameter)
        .resource_id(format!("{base}/api-endpoint"))
        .send()
        .await
        .unwrap();
    let tags: BTreeMap<_, _> = tags.tag_list().iter().map(|t| (t.key(), t.value())).collect();
    assert_eq!(tags.get("tenantconfig.io/tenant"), Some(&"acme"));
    assert_eq!(tags.get("tenantconfig.io/config-type"), Some(&"payments"));
    assert_eq!(tags.get("tenantconfig.io/managed-by"), Some(&owner));
    let described = env
        .ssm
        .describe_parameters()
        .parameter_filters(
            aws_sdk_ssm::types::ParameterStringFilter::builder()
                .key("Name")
                .values(format!("{base}/big"))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(described.parameters()[0].tier(), Some(&aws_sdk_ssm::types::ParameterTier::Advanced));

    // Another writer's parameters in the tenant's path, one nested.
    for (name, value) in [("feature-x", "on"), ("db/host", "db.internal")] {
        env.ssm
            .put_parameter()
            .name(format!("{base}/{name}"))
            .value(value)
            .r#type(ParameterType::String)
            .send()
            .await
            .unwrap();
    }

    // Update one value (overwrite without tags), drop one key.
    let mut want = desired(owner, &[("api-endpoint", "https://pay2.example.com")]);
    want.entries.insert("db-password".into(), Value { value: "s3cret".into(), secure: true });
    let report = backend.apply(&loc, &want).await.unwrap();
    assert_eq!(report.written.iter().map(String::as_str).collect::<Vec<_>>(), ["api-endpoint"]);
    assert_eq!(report.deleted.iter().map(String::as_str).collect::<Vec<_>>(), ["big"]);

    let state = backend.read(&loc).await.unwrap();
    assert_eq!(
        values(&state),
        BTreeMap::from([
            ("api-endpoint", "https://pay2.example.com"),
            ("db-password", "s3cret"),
            ("db.host", "db.internal"),
            ("feature-x", "on"),
        ])
    );
    assert!(state.entries["db-password"].secure);
    assert_eq!(state.managed.iter().map(String::as_str).collect::<Vec<_>>(), ["api-endpoint", "db-password"]);

    // Shared read of the same path flattens the same way.
    let shared = backend
        .shared_paths()
        .expect("Parameter Store serves shared paths")
        .read_shared(&format!("{prefix}/acme"))
        .await
        .unwrap();
    assert!(shared.contains_key("prod.payments.db.host"), "{:?}", shared.keys());

    let deleted = backend.delete_managed(&loc, owner).await.unwrap();
    assert_eq!(deleted.len(), 2);
    let left = backend.read(&loc).await.unwrap();
    assert_eq!(values(&left), BTreeMap::from([("db.host", "db.internal"), ("feature-x", "on")]));
}

#[tokio::test]
async fn parameter_store_refuses_what_aws_would_before_writing() {
    let env = env().await;
    let prefix = format!("/{}", unique("limits"));
    let standard = store::build("s", &ssm_spec(&prefix, ParameterTier::Standard, None), &env.ctx).unwrap();
    let loc = location("acme");
    let owner = "acme-prod/payments";

    let cases: Vec<(Arc<dyn Backend>, Desired, &str)> = vec![
        (standard.clone(), desired(owner, &[("ok", "1"), ("big", &"v".repeat(4097))]), "the Standard tier allows 4096"),
        (standard.clone(), desired(owner, &[("ok", "1"), ("bad key", "1")]), "character outside a-zA-Z0-9_.-/"),
        (
            standard.clone(),
            Desired {
                entries: [("pw".to_string(), Value { value: "x".into(), secure: true })].into(),
                ..desired(owner, &[])
            },
            "has no kmsKeyId",
        ),
        (
            store::build(
                "deep",
                &ssm_spec(&format!("{prefix}/1/2/3/4/5/6/7/8/9/10/11"), ParameterTier::Standard, None),
                &env.ctx,
            )
            .unwrap(),
            desired(owner, &[("k", "1")]),
            "16 levels; Parameter Store allows at most 15",
        ),
        (
            store::build("aws", &ssm_spec("/aws-config", ParameterTier::Standard, None), &env.ctx).unwrap(),
            desired(owner, &[("k", "1")]),
            "starts with 'aws' or 'ssm'",
        ),
    ];
    for (backend, want, msg) in cases {
        let err = backend.apply(&loc, &want).await.unwrap_err();
        assert!(matches!(err, StoreError::Limit(_)), "{err}");
        assert!(err.to_string().contains(msg), "expected {msg:?} in {err}");
    }
    assert_eq!(env.ctx.stats.writes("ParameterStore"), 0, "nothing was written");
    assert_eq!(env.ctx.stats.total("ParameterStore"), 0, "refused before any call");
}

#[tokio::test]
async fn throttling_is_retried_then_reported_within_bounded_time() {
    let env = env().await;
    let proxy = FaultProxy::start(&support::env("AWS_ENDPOINT_URL")).await;
    let mut spec = ssm_spec(&format!("/{}", unique("throttle")), ParameterTier::Standard, None);
    spec.parameter_store.as_mut().unwrap().endpoint = Some(proxy.url.clone());
    let backend = store::build("ssm", &spec, &env.ctx).unwrap();
    let loc = location("acme");

    proxy.inject("PutParameter", Fault::Throttle, Times::Next(2));
    backend.apply(&loc, &desired("acme-prod/payments", &[("a", "1")])).await.expect("two throttles are absorbed");
    assert_eq!(proxy.injected(), 2);
    assert_eq!(backend.read(&loc).await.unwrap().entries["a"].value, "1");

    proxy.clear();
    proxy.inject("PutParameter", Fault::Throttle, Times::Always);
    let started = Instant::now();
    let err = backend.apply(&loc, &desired("acme-prod/payments", &[("a", "2")])).await.unwrap_err();
    assert!(matches!(err, StoreError::Throttled { operation: "PutParameter", .. }), "{err}");
    assert!(err.is_transient() && err.metric_label() == "throttled");
    assert!(started.elapsed() < Duration::from_secs(60), "retries are bounded: {:?}", started.elapsed());
    assert_eq!(proxy.injected(), 2 + u64::from(DEFAULT_MAX_ATTEMPTS), "one call, {DEFAULT_MAX_ATTEMPTS} attempts");
    assert_eq!(env.ctx.stats.count("ParameterStore", "PutParameter", Outcome::Throttled), 1);
}

#[tokio::test]
async fn server_errors_are_retried_then_reported_as_unavailable() {
    let env = env().await;
    let proxy = FaultProxy::start(&support::env("AWS_ENDPOINT_URL")).await;
    let table = unique("tenant-config");
    create_table(&env.ddb, &table).await;
    let spec = ConfigStoreSpec {
        dynamodb: Some(DynamoDbStore {
            table_name: table,
            partition_key: "pk".into(),
            sort_key: "sk".into(),
            endpoint: Some(proxy.url.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let backend = store::build("ddb", &spec, &env.ctx).unwrap();
    let loc = location("acme");

    proxy.inject("UpdateItem", Fault::ServerError, Times::Next(2));
    backend.apply(&loc, &desired("acme-prod/payments", &[("a", "1")])).await.expect("two 500s are absorbed");

    proxy.clear();
    proxy.inject("*", Fault::ServerError, Times::Always);
    let err = backend.read(&loc).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { operation: "GetItem", .. }), "{err}");
    proxy.clear();
    assert_eq!(backend.read(&loc).await.unwrap().entries["a"].value, "1", "recovers once the store answers");
}

#[tokio::test]
async fn put_parameter_rate_stays_within_the_configured_limit() {
    let sdk = aws_config().await;
    let per_second = 10;
    let limits = RateLimits::default().with("ssm-write", per_second);
    let ctx = BackendContext::new(sdk, limits, DEFAULT_MAX_ATTEMPTS);
    let backend =
        store::build("ssm", &ssm_spec(&format!("/{}", unique("rate")), ParameterTier::Standard, None), &ctx).unwrap();
    let keys: Vec<String> = (0..30).map(|i| format!("k{i:02}")).collect();
    let entries: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "v")).collect();

    let started = Instant::now();
    backend.apply(&location("acme"), &desired("acme-prod/payments", &entries)).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(ctx.stats.count("ParameterStore", "PutParameter", Outcome::Ok), 30);
    // A one-second burst is free; the other 20 writes wait their turn at 10/s.
    let floor = Duration::from_secs_f64((30 - per_second) as f64 / per_second as f64) - Duration::from_millis(100);
    assert!(elapsed >= floor, "30 writes at {per_second}/s took only {elapsed:?}");
}

/// The AWS calls one apply of a 10-key TenantConfig costs, per backend:
/// first apply, unchanged re-apply, one key changed.
#[tokio::test]
async fn call_counts_for_a_ten_key_apply() {
    let env = env().await;
    let (ddb, _) = dynamodb_backend(&env).await;
    let ssm = store::build("ssm", &ssm_spec(&format!("/{}", unique("calls")), ParameterTier::Standard, None), &env.ctx)
        .unwrap();
    let keys: Vec<String> = (0..10).map(|i| format!("key-{i}")).collect();
    let first: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "v1")).collect();
    let mut changed = first.clone();
    changed[0].1 = "v2";

    let calls = |kind: &str| -> BTreeMap<&'static str, u64> {
        let mut m = BTreeMap::new();
        for (backend, op, _, n) in env.ctx.stats.snapshot() {
            if backend == kind {
                *m.entry(op).or_default() += n;
            }
        }
        m
    };
    let diff = |before: &BTreeMap<&'static str, u64>, after: &BTreeMap<&'static str, u64>| {
        after.iter().map(|(op, n)| (*op, n - before.get(op).copied().unwrap_or(0))).filter(|(_, n)| *n > 0).collect()
    };
    let mut measured: Vec<(&str, &str, BTreeMap<&str, u64>)> = Vec::new();
    for backend in [&ddb, &ssm] {
        for (phase, entries) in [("first apply", &first), ("unchanged", &first), ("one key changed", &changed)] {
            let before = calls(backend.kind());
            backend.apply(&location("acme"), &desired("acme-prod/payments", entries)).await.unwrap();
            measured.push((backend.kind(), phase, diff(&before, &calls(backend.kind()))));
        }
    }
    for (kind, phase, ops) in &measured {
        println!("{kind:<15} {phase:<16} {ops:?}");
    }
    let expect = |kind: &str, phase: &str, want: &[(&str, u64)]| {
        let got = &measured.iter().find(|(k, p, _)| *k == kind && *p == phase).unwrap().2;
        assert_eq!(got, &want.iter().copied().collect::<BTreeMap<_, _>>(), "{kind} {phase}");
    };
    expect("DynamoDB", "first apply", &[("GetItem", 1), ("UpdateItem", 1)]);
    expect("DynamoDB", "unchanged", &[("GetItem", 1)]);
    expect("DynamoDB", "one key changed", &[("GetItem", 1), ("UpdateItem", 1)]);
    let by_path = |ops: &BTreeMap<&str, u64>| ops.get("GetParametersByPath").copied().unwrap_or(0);
    for (kind, phase, ops) in &measured {
        if *kind == "ParameterStore" {
            // 10 parameters fit one page (10 for GetParametersByPath, 50 for
            // DescribeParameters); these applies are not `owned_before`, so
            // ownership is read whenever the path holds anything. moto 5.2.5 pages DescribeParameters at 10
            // whatever MaxResults says and returns a NextToken after a full last
            // page, so it may take one extra, empty page of each.
            assert!((1..=2).contains(&by_path(ops)), "{phase}: {ops:?}");
            // An empty path has no owner to ask about: the first apply skips it.
            let describes = ops.get("DescribeParameters").copied().unwrap_or(0);
            if *phase == "first apply" {
                assert_eq!(describes, 0, "{phase}: {ops:?}");
            } else {
                assert!((1..=2).contains(&describes), "{phase}: {ops:?}");
            }
            let puts = ops.get("PutParameter").copied().unwrap_or(0);
            assert_eq!(
                puts,
                [("first apply", 10), ("unchanged", 0), ("one key changed", 1)]
                    .iter()
                    .find(|(p, _)| p == phase)
                    .unwrap()
                    .1
            );
        }
    }
}

/// The resync's bulk read of a tenant finds, for each location, what a read
/// of that location finds (the digest the resync compares), and what an apply
/// reported: an unchanged object is then current without a read of its own.
#[tokio::test]
async fn bulk_reads_see_what_each_location_sees_in_few_calls() {
    let env = env().await;
    let prefix = format!("/{}", unique("bulk"));
    let (ddb, table) = dynamodb_backend(&env).await;
    let ssm = store::build("ssm", &ssm_spec(&prefix, ParameterTier::Standard, None), &env.ctx).unwrap();
    let at = |tenant: &str, environment: Option<&str>, config_type: &str| Location {
        tenant: tenant.into(),
        environment: environment.map(String::from),
        config_type: config_type.into(),
    };
    // An environment and a configType of one name (separate locations), a
    // tenant whose name extends another's, and enough
    // parameters for several pages (10 per page).
    let written = [
        at("acme", None, "payments"),
        at("acme", Some("prod"), "payments"),
        at("acme", None, "checkout"),
        at("acme-two", None, "payments"),
    ];
    let mut reports = Vec::new();
    for (n, location) in written.iter().enumerate() {
        let entries: Vec<(String, String)> = (0..4).map(|k| (format!("k{k}"), format!("{n}-{k}"))).collect();
        let entries: Vec<(&str, &str)> = entries.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let owner = format!("ns/{}", location.config_type);
        for backend in [&ddb, &ssm] {
            reports.push((
                backend.kind(),
                location.clone(),
                backend.apply(location, &desired(&owner, &entries)).await.unwrap(),
            ));
        }
    }
    env.ssm
        .put_parameter()
        .name(format!("{prefix}/acme/_/payments/nested/foreign"))
        .value("x")
        .r#type(ParameterType::String)
        .send()
        .await
        .unwrap();
    support::put_foreign_key(&env.ddb, &table, ("TENANT#acme", "CONFIG#checkout"), "foreign", "y").await;

    let asked = [
        at("acme", None, "payments"),
        at("acme", Some("prod"), "payments"),
        at("acme", None, "prod"),
        at("acme", None, "checkout"),
        at("acme", None, "absent"),
    ];
    for backend in [&ddb, &ssm] {
        let kind = backend.kind();
        let calls = || env.ctx.stats.total(kind);
        let before = calls();
        let bulk = backend.bulk_read().expect("both backends read in bulk").read_tenant("acme", &asked).await.unwrap();
        let bulk_calls = calls() - before;
        for (location, state) in asked.iter().zip(&bulk) {
            let single = backend.read(location).await.unwrap();
            assert_eq!(state.entries, single.entries, "{kind} {location:?}");
            assert_eq!(state.content_digest(), single.content_digest(), "{kind} {location:?}");
        }
        assert!(bulk[4].entries.is_empty(), "{kind}: an absent location reads as empty");
        assert!(
            bulk.iter().all(|s| !s.entries.values().any(|v| v.value.starts_with("3-"))),
            "{kind}: acme-two is not acme"
        );
        match kind {
            "DynamoDB" => assert_eq!(bulk_calls, 1, "one Query of the partition"),
            _ => assert_eq!(bulk_calls, 2, "one walk of the tenant's 13 parameters: 2 pages"),
        }
    }
    assert_eq!(values(&ssm.read(&at("acme", None, "payments")).await.unwrap())["nested.foreign"], "x");
    for backend in [&ddb, &ssm] {
        let prod = backend.read(&at("acme", None, "prod")).await.unwrap();
        assert!(
            prod.entries.is_empty(),
            "{}: configType prod reads environment prod: {:?}",
            backend.kind(),
            prod.entries
        );
    }

    // What an apply reported is what the bulk read finds, where nobody else wrote since.
    for (kind, location, report) in &reports {
        let backend = if *kind == "DynamoDB" { &ddb } else { &ssm };
        let written_since = (location.config_type == "checkout" && *kind == "DynamoDB")
            || (location == &at("acme", None, "payments") && *kind == "ParameterStore");
        let untouched = !written_since;
        let bulk = backend.bulk_read().unwrap().read_tenant(&location.tenant, std::slice::from_ref(location)).await;
        let same = bulk.unwrap()[0].content_digest() == report.state.content_digest();
        assert_eq!(
            same, untouched,
            "{kind} {location:?}: the apply's state matches the store unless someone wrote since"
        );
    }
}
