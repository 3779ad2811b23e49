//! One test world, shared by every integration test and benchmark that runs a
//! controller: the clients, this test's DynamoDB table, Parameter Store prefix
//! and shared path (and, for the event path, its queue), and the ConfigStores,
//! namespaces and TenantConfigs it creates. Everything is named after the
//! test's id and store tags are prefixed with it, so no routing reaches
//! another test's stores. The controller is the test's own (in this process:
//! [`super::fixtures::InProcessController`]; as a process:
//! [`super::process::Process`]).
#![allow(dead_code)]

use std::{collections::BTreeMap, time::Duration};

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_sqs::types::QueueAttributeName;
use aws_sdk_ssm::types::ParameterType;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, PostParams},
};
use serde_json::json;
use tenant_config_controller::api::{ConfigStore, TenantConfig};

use super::{
    EventQueue, aws_config, create_table, event_queue, eventually, fixtures, install_crds, kube_client, unique,
};

pub const TENANT_LABEL: &str = "tenantconfig.io/tenant";

pub struct World {
    pub id: String,
    pub client: Client,
    pub sdk: aws_config::SdkConfig,
    pub ddb: aws_sdk_dynamodb::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub sqs: aws_sdk_sqs::Client,
    /// `{id}-table`.
    pub table: String,
    /// `/{id}`: the Parameter Store store's tenant prefix.
    pub prefix: String,
    /// `/{id}-shared`: its shared path.
    pub shared: String,
    /// The event path (queue, dead-letter queue, rules, Pipe), when asked for.
    pub queue: Option<EventQueue>,
    namespaces: Vec<String>,
    stores: Vec<String>,
}

impl World {
    /// A world with its table and no event path.
    pub async fn new(name: &str) -> World {
        let world = World::without_table(name).await;
        create_table(&world.ddb, &world.table).await;
        world
    }

    /// A world with the event path of examples/aws/ (table with stream,
    /// queue, rules for the prefix and the shared path, Pipe).
    pub async fn with_queue(name: &str, max_receive_count: u32, visibility_secs: u32) -> World {
        let mut world = World::without_table(name).await;
        let prefixes = [world.prefix.as_str(), world.shared.as_str()];
        world.queue = Some(event_queue(&world.id, &prefixes, max_receive_count, visibility_secs));
        world
    }

    async fn without_table(name: &str) -> World {
        // Controller logs with RUST_LOG=tenant_config_controller=debug (shown for failing tests).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        install_crds();
        let id = unique(name);
        let sdk = aws_config().await;
        World {
            client: kube_client().await,
            ddb: aws_sdk_dynamodb::Client::new(&sdk),
            ssm: aws_sdk_ssm::Client::new(&sdk),
            sqs: aws_sdk_sqs::Client::new(&sdk),
            sdk,
            table: format!("{id}-table"),
            prefix: format!("/{id}"),
            shared: format!("/{id}-shared"),
            queue: None,
            namespaces: Vec::new(),
            stores: Vec::new(),
            id,
        }
    }

    /// The queue URL (the world was made `with_queue`).
    pub fn queue_url(&self) -> &str {
        &self.queue.as_ref().expect("a world with_queue").queue_url
    }

    pub fn dead_letter_queue_url(&self) -> &str {
        &self.queue.as_ref().expect("a world with_queue").dead_letter_queue_url
    }

    /// This test's name for tag `t`.
    pub fn tag(&self, t: &str) -> String {
        format!("{}-{t}", self.id)
    }

    /// This test's tenant number `n`.
    pub fn tenant(&self, n: usize) -> String {
        format!("{}-t{n}", self.id)
    }

    /// Creates ConfigStore `{id}-{suffix}`; its `tags` are taken as this
    /// test's ([`World::tag`]). Returns its name.
    pub async fn store(&mut self, suffix: &str, spec: serde_json::Value) -> String {
        let name = format!("{}-{suffix}", self.id);
        let mut spec = spec;
        if let Some(tags) = spec["tags"].as_array() {
            let tags: Vec<String> = tags.iter().map(|t| self.tag(t.as_str().unwrap())).collect();
            spec["tags"] = json!(tags);
        }
        let store = fixtures::config_store(&name, spec);
        Api::<ConfigStore>::all(self.client.clone()).create(&PostParams::default(), &store).await.unwrap();
        self.stores.push(name.clone());
        name
    }

    /// The two usual stores: `{id}-db` (DynamoDB, tag `db`) and `{id}-ssm`
    /// (Parameter Store under the prefix with the shared path, tag `ssm`).
    pub async fn standard_stores(&mut self) {
        let (table, prefix, shared) = (self.table.clone(), self.prefix.clone(), self.shared.clone());
        self.store("db", json!({ "tags": ["db"], "dynamodb": { "tableName": table } })).await;
        let ssm = json!({ "tags": ["ssm"], "parameterStore": { "pathPrefix": prefix, "sharedPaths": [shared], "kmsKeyId": "alias/tc" } });
        self.store("ssm", ssm).await;
    }

    /// Creates namespace `{id}-{suffix}` of `tenant` (`None`: no tenant label).
    pub async fn namespace(&mut self, suffix: &str, tenant: Option<&str>) -> String {
        match tenant {
            Some(tenant) => self.namespace_labelled(suffix, &[(TENANT_LABEL, tenant)]).await,
            None => self.namespace_labelled(suffix, &[]).await,
        }
    }

    pub async fn namespace_labelled(&mut self, suffix: &str, labels: &[(&str, &str)]) -> String {
        let name = format!("{}-{suffix}", self.id);
        let ns: Namespace = fixtures::namespace(&name, labels);
        Api::<Namespace>::all(self.client.clone()).create(&PostParams::default(), &ns).await.unwrap();
        self.namespaces.push(name.clone());
        name
    }

    pub async fn tenant_config(&self, ns: &str, name: &str, spec: serde_json::Value) -> TenantConfig {
        let tc = fixtures::tenant_config(ns, name, spec);
        self.tenant_configs(ns).create(&PostParams::default(), &tc).await.unwrap()
    }

    pub fn tenant_configs(&self, ns: &str) -> Api<TenantConfig> {
        Api::namespaced(self.client.clone(), ns)
    }

    pub fn config_maps(&self, ns: &str) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), ns)
    }

    pub async fn wait_ready(&self, ns: &str, name: &str) -> TenantConfig {
        fixtures::wait_ready(&self.client, ns, name, "True", None).await
    }

    /// Waits until Ready is `status` with `reason`.
    pub async fn wait_reason(&self, ns: &str, name: &str, status: &str, reason: &str) -> TenantConfig {
        fixtures::wait_ready(&self.client, ns, name, status, Some(reason)).await
    }

    pub async fn ready_count(&self, ns: &str) -> usize {
        fixtures::ready_count(&self.client, ns).await
    }

    /// Waits until at least `n` TenantConfigs of `ns` are Ready.
    pub async fn wait_ready_count(&self, ns: &str, n: usize) {
        eventually(&format!("{n} TenantConfigs Ready in {ns}"), || async {
            (self.ready_count(ns).await >= n).then_some(())
        })
        .await
    }

    /// A ConfigMap's data (empty when it does not exist).
    pub async fn config_map(&self, ns: &str, name: &str) -> BTreeMap<String, String> {
        self.config_maps(ns).get_opt(name).await.unwrap().and_then(|cm| cm.data).unwrap_or_default()
    }

    /// Waits until the ConfigMap satisfies `check`; returns how long it took.
    pub async fn wait_config_map(
        &self,
        ns: &str,
        name: &str,
        what: &str,
        check: impl Fn(&BTreeMap<String, String>) -> bool,
    ) -> Duration {
        let started = std::time::Instant::now();
        eventually(&format!("{ns}/{name}: {what}"), || async { check(&self.config_map(ns, name).await).then_some(()) })
            .await;
        started.elapsed()
    }

    /// The `data` of the tenant's item for `config_type` (empty when none).
    pub async fn item_data(&self, tenant: &str, config_type: &str) -> BTreeMap<String, String> {
        let (pk, sk) = (format!("TENANT#{tenant}"), format!("CONFIG#{config_type}"));
        fixtures::item_data(&self.ddb, &self.table, &pk, &sk).await.unwrap_or_default()
    }

    /// Sets (or, with `None`, removes) one key of the tenant's item, as another writer would.
    pub async fn set_item_key(&self, tenant: &str, config_type: &str, key: &str, value: Option<&str>) {
        let update = self
            .ddb
            .update_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(format!("TENANT#{tenant}")))
            .key("sk", AttributeValue::S(format!("CONFIG#{config_type}")))
            .expression_attribute_names("#d", "data")
            .expression_attribute_names("#k", key);
        match value {
            Some(v) => update
                .update_expression("SET #d.#k = :v")
                .expression_attribute_values(":v", AttributeValue::S(v.into())),
            None => update.update_expression("REMOVE #d.#k"),
        }
        .send()
        .await
        .unwrap();
    }

    pub async fn put_parameter(&self, name: &str, value: &str) {
        self.ssm
            .put_parameter()
            .name(name)
            .value(value)
            .r#type(ParameterType::String)
            .overwrite(true)
            .send()
            .await
            .unwrap();
    }

    /// Every parameter under `path` (recursive, decrypted): name → value.
    pub async fn parameters(&self, path: &str) -> BTreeMap<String, String> {
        let mut params = BTreeMap::new();
        let mut pages =
            self.ssm.get_parameters_by_path().path(path).recursive(true).with_decryption(true).into_paginator().send();
        while let Some(page) = pages.next().await {
            for p in page.expect("GetParametersByPath").parameters() {
                params.insert(p.name().unwrap().to_string(), p.value().unwrap_or_default().to_string());
            }
        }
        params
    }

    /// Parameters under `path` (recursive).
    pub async fn parameter_count(&self, path: &str) -> usize {
        let mut count = 0;
        let mut pages = self.ssm.get_parameters_by_path().path(path).recursive(true).into_paginator().send();
        while let Some(page) = pages.next().await {
            count += page.unwrap().parameters().len();
        }
        count
    }

    /// `(visible, in flight)` messages of a queue.
    pub async fn queue_depth(&self, url: &str) -> (u64, u64) {
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap()
            .attributes
            .unwrap_or_default();
        let get = |a: QueueAttributeName| attributes.get(&a).and_then(|v| v.parse().ok()).unwrap_or(0);
        (
            get(QueueAttributeName::ApproximateNumberOfMessages),
            get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        )
    }

    pub async fn wait_queue_empty(&self) {
        eventually("event queue drained", || async {
            (self.queue_depth(self.queue_url()).await == (0, 0)).then_some(())
        })
        .await
    }

    /// Deletes this test's TenantConfigs (a controller must be running to
    /// release their finalizers) and waits for them to go, then its stores.
    /// Later test binaries run their own controller, which must not inherit
    /// these objects.
    pub async fn clean_up(&self) {
        for ns in &self.namespaces {
            let api = self.tenant_configs(ns);
            api.delete_collection(&DeleteParams::default(), &ListParams::default()).await.unwrap();
            eventually(&format!("TenantConfigs in {ns} deleted"), || async {
                api.list(&ListParams::default()).await.ok()?.items.is_empty().then_some(())
            })
            .await;
        }
        for store in &self.stores {
            Api::<ConfigStore>::all(self.client.clone()).delete(store, &DeleteParams::default()).await.unwrap();
        }
    }
}
