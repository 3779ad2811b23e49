//! Shared helpers for the integration tests: the local stack's clients.
//!
//! Integration tests need `scripts/testenv.sh up` (run by `scripts/test.sh`).
//! Without it they fail with a message saying so; they never skip.
//!
//! Each test binary uses a different part, so every item allows being unused.

#[allow(dead_code)]
pub mod fault_proxy;
pub mod fixtures;
#[allow(dead_code)]
pub mod process;
pub mod world;

use std::{
    future::Future,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use aws_sdk_dynamodb::config::{
    ConfigBag, Intercept, RuntimeComponents, interceptors::BeforeTransmitInterceptorContextMut,
};
use kube::Client;

/// Reads a variable the env file of `scripts/testenv.sh up` exports.
#[allow(dead_code)]
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: integration tests run against the local stack. \
             Run ./scripts/test.sh, or `scripts/testenv.sh up && source .testenv/run/env`."
        )
    })
}

#[allow(dead_code)]
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A name unique to this test process and call, for namespaces, tables, paths.
#[allow(dead_code)]
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

#[allow(dead_code)]
pub async fn kube_client() -> Client {
    env("KUBECONFIG");
    Client::try_default().await.expect("kube client from KUBECONFIG")
}

/// Runs the testenv's kubectl (same version as the API server).
#[allow(dead_code)]
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(env("KUBECTL"));
    cmd.args(args)
        .stdin(if stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl runs");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    child.wait_with_output().expect("kubectl finishes")
}

/// Runs the testenv's helm in the repository root: (success, stdout, stderr).
#[allow(dead_code)]
pub fn helm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env("HELM")).args(args).current_dir(repo_root()).output().expect("helm runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// A Helm release a test installed, uninstalled when dropped unless the test
/// did so itself (`installed = false`): after a failed assertion neither chart
/// pods nor the chart's cluster-wide RBAC may outlive the test and disturb
/// later ones (a controller watches the whole cluster; a second install of
/// the same release name collides on its ClusterRole).
#[allow(dead_code)]
pub struct Release {
    pub name: String,
    pub namespace: String,
    pub installed: bool,
}

impl Drop for Release {
    fn drop(&mut self) {
        if self.installed {
            let (ok, _, stderr) =
                helm(&["uninstall", &self.name, "-n", &self.namespace, "--wait", "--timeout", "120s"]);
            if !ok {
                eprintln!("helm uninstall {} after a failure: {stderr}", self.name);
            }
        }
    }
}

/// Installs the committed CRDs with kubectl and waits until they are served.
#[allow(dead_code)]
pub fn install_crds() {
    let crds: PathBuf = repo_root().join("crds");
    let crds = crds.to_str().unwrap();
    let out = kubectl(&["apply", "--server-side", "--force-conflicts", "-f", crds], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubectl apply CRDs: {stderr}");
    // The API server warns about schema details it ignores (e.g. unknown formats).
    assert!(!stderr.contains("Warning"), "the API server warned about the CRDs: {stderr}");
    let out = kubectl(&["wait", "--for", "condition=Established", "--timeout", "60s", "-f", crds], None);
    assert!(out.status.success(), "CRDs not established: {}", String::from_utf8_lossy(&out.stderr));
}

/// Gives an SDK client its own moto account (moto keys state by the
/// `x-moto-account-id` header), so tests running in parallel never see each
/// other's tables, parameters or queues.
#[derive(Debug, Clone)]
#[allow(dead_code)]
pub struct MotoAccount(pub String);

#[allow(dead_code)]
impl MotoAccount {
    /// A fresh 12-digit account id.
    pub fn fresh() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = (u64::from(std::process::id()) * 1000 + NEXT.fetch_add(1, Ordering::Relaxed)) % 1_000_000_000;
        MotoAccount(format!("100{n:09}"))
    }
}

impl Intercept for MotoAccount {
    fn name(&self) -> &'static str {
        "MotoAccount"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        context.request_mut().headers_mut().insert("x-moto-account-id", self.0.clone());
        Ok(())
    }
}

/// SDK config for moto: endpoint, region and dummy credentials from the env file.
#[allow(dead_code)]
pub async fn aws_config() -> aws_config::SdkConfig {
    env("AWS_ENDPOINT_URL");
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

/// Creates a `pk`/`sk` table like the production one (DESIGN.md §4).
#[allow(dead_code)]
pub async fn create_table(ddb: &aws_sdk_dynamodb::Client, name: &str) {
    use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
    let key = |n: &str, kt| KeySchemaElement::builder().attribute_name(n).key_type(kt).build().unwrap();
    let attr = |n: &str| {
        AttributeDefinition::builder().attribute_name(n).attribute_type(ScalarAttributeType::S).build().unwrap()
    };
    ddb.create_table()
        .table_name(name)
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .attribute_definitions(attr("pk"))
        .attribute_definitions(attr("sk"))
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .expect("create table");
}

/// The AWS side of the event path on the local stack, made by
/// `scripts/local_aws.py` from the production template (examples/aws/).
#[derive(Debug, Clone)]
#[allow(dead_code)]
pub struct EventQueue {
    pub queue_url: String,
    pub dead_letter_queue_url: String,
}

/// Creates what examples/aws/tenant-config.yaml declares, named after `id`:
/// table `{id}-table` with its stream, queue `{id}-events` with its
/// dead-letter queue, Pipe `{id}-pipe`, and the rules for the tenant prefix
/// `parameter_prefixes[0]` and the shared prefix `parameter_prefixes[1]`
/// (default `{first}-shared`).
#[allow(dead_code)]
pub fn event_queue(id: &str, parameter_prefixes: &[&str], max_receive_count: u32, visibility_secs: u32) -> EventQueue {
    let tenant = parameter_prefixes[0];
    let shared = parameter_prefixes.get(1).map(|s| s.to_string()).unwrap_or_else(|| format!("{tenant}-shared"));
    let out = Command::new(env("TCC_PYTHON"))
        .arg(repo_root().join("scripts/local_aws.py"))
        .args(["--param", &format!("TableName={id}-table"), "--param", &format!("QueueName={id}-events")])
        .args(["--param", &format!("PipeName={id}-pipe")])
        .args(["--param", &format!("TenantPathPrefix={tenant}"), "--param", &format!("SharedPathPrefix={shared}")])
        .args(["--max-receive-count", &max_receive_count.to_string()])
        .args(["--visibility-timeout", &visibility_secs.to_string()])
        .output()
        .expect("local_aws.py runs");
    assert!(out.status.success(), "local_aws.py: {}", String::from_utf8_lossy(&out.stderr));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).expect("local_aws.py prints JSON");
    EventQueue {
        queue_url: created["queueUrl"].as_str().unwrap().into(),
        dead_letter_queue_url: created["deadLetterQueueUrl"].as_str().unwrap().into(),
    }
}

/// How long a test waits for the controller to converge before it fails.
#[allow(dead_code)]
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);

/// Polls `check` every 100 ms until it returns a value; fails the test after
/// [`CONVERGE_TIMEOUT`] with `what`.
#[allow(dead_code)]
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(CONVERGE_TIMEOUT, what, check).await
}

/// [`eventually`] with another timeout.
#[allow(dead_code)]
pub async fn eventually_within<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The p-th percentile (nearest rank) of sorted samples.
#[allow(dead_code)]
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Another writer sets `key` in the `data` map of an existing DynamoDB item,
/// directly (not through any proxy), as an operator or another service would.
#[allow(dead_code)]
pub async fn put_foreign_key(ddb: &aws_sdk_dynamodb::Client, table: &str, item: (&str, &str), key: &str, value: &str) {
    use aws_sdk_dynamodb::types::AttributeValue;
    ddb.update_item()
        .table_name(table)
        .key("pk", AttributeValue::S(item.0.into()))
        .key("sk", AttributeValue::S(item.1.into()))
        .update_expression("SET #d.#k = :v")
        .expression_attribute_names("#d", "data")
        .expression_attribute_names("#k", key)
        .expression_attribute_values(":v", AttributeValue::S(value.into()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("setting {key} in {item:?}: {e}"));
}
