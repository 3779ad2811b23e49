//! Scale, API cost, shared fan-out and memory, on the local stack.
//!
//! `scripts/bench.sh scale [--objects N] [--concurrency C] [--steady-resync D] [--cycles K]`
//! (`--cycles 0`: no steady state)
//! runs it (release build) and prints markdown tables:
//!
//! 1. Cold convergence: N TenantConfigs (2 DynamoDB entries, 1 SSM entry and
//!    one shared include each) from controller start to all Ready — and, in
//!    the same run, the same raw writes done by a minimal client with the same
//!    concurrency (ConfigMap server-side apply, UpdateItem, PutParameter,
//!    status patch per object): the limit. Reported as product/limit.
//! 2. Shared fan-out: the included parameter changes; time until all N
//!    ConfigMaps show it and the number of GetParametersByPath walks of it.
//! 3. Steady state: K resync intervals with nothing changing, each standing for
//!    the production default of 10 minutes (the shared-cache age scaled alike;
//!    the interval must exceed one full pass, ~25 s for 1,000 objects on moto):
//!    AWS calls by operation and Kubernetes writes, set against a polling design
//!    that re-reads every key every refresh.
//! 4. Memory: the controller's peak and steady RSS.
//!
//! The controller is the release binary in its own process (for its RSS). moto
//! does not throttle, so the client-side SSM limits are lifted here
//! (`--ssm-write-rate 0 --ssm-read-rate 0`), measuring the work and not AWS's
//! quotas; the limit's client has none either. On AWS, PutParameter's 3/s
//! default bounds cold convergence at ~3 objects/s per SSM entry, and the
//! 40/s read default (one GetParametersByPath per new object) at 40/s.

#[path = "../tests/support/mod.rs"]
mod support;

use support::fixtures::is_ready;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_ssm::types::{ParameterType, Tag};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, reflector, watcher},
};
use serde_json::json;
use support::process::{CpuSnapshot, Process};
use tenant_config_controller::api::{ConfigStore, TenantConfig};

struct Args {
    objects: usize,
    concurrency: usize,
    steady_resync: Duration,
    cycles: u32,
    /// Only cold convergence, its limit and memory (for large N).
    cold_only: bool,
    /// How long the cold-start controller keeps running, idle, before its
    /// steady RSS is read (caches that expire, e.g. the Event recorder's).
    settle: Duration,
}

fn args() -> Args {
    let mut args = Args {
        objects: 1000,
        concurrency: 16,
        steady_resync: Duration::from_secs(60),
        cycles: 3,
        cold_only: false,
        settle: Duration::ZERO,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--objects" => args.objects = value().parse().expect("--objects N"),
            "--concurrency" => args.concurrency = value().parse().expect("--concurrency C"),
            "--steady-resync" => args.steady_resync = humantime::parse_duration(&value()).expect("--steady-resync 20s"),
            "--cycles" => args.cycles = value().parse().expect("--cycles K"),
            "--cold-only" => args.cold_only = true,
            "--settle" => args.settle = humantime::parse_duration(&value()).expect("--settle 7m"),
            "--bench" => {}
            other => panic!(
                "unknown argument {other}; use --objects N --concurrency C --steady-resync D --cycles K --cold-only --settle D"
            ),
        }
    }
    args
}

/// The scenario's objects and stores.
struct World {
    id: String,
    ddb: aws_sdk_dynamodb::Client,
    ssm: aws_sdk_ssm::Client,
    prefix: String,
    shared: String,
    queue_url: String,
    /// `(namespace, tenant)`
    tenants: Vec<(String, String)>,
    objects: usize,
}

impl World {
    /// Object `i`: namespace, tenant, name.
    fn object(&self, i: usize) -> (&str, &str, String) {
        let (ns, tenant) = &self.tenants[i % self.tenants.len()];
        (ns, tenant, format!("c{i}"))
    }

    /// TenantConfigs of this world that are Ready, from a watch: polling with
    /// LIST would put load on the API server that the limit run does not have.
    fn ready_count(&self, cache: &reflector::Store<TenantConfig>) -> usize {
        self.count(cache, is_ready)
    }

    /// Projected ConfigMaps of this world whose `key` is `value`, from a watch
    /// (listing them every 200 ms loaded the API server the fan-out measures).
    fn config_maps_with(&self, cache: &reflector::Store<ConfigMap>, key: &str, value: &str) -> usize {
        self.count(cache, |cm| cm.data.as_ref().and_then(|d| d.get(key)).map(String::as_str) == Some(value))
    }

    /// Cached objects in this world's namespaces for which `matches` holds.
    fn count<K>(&self, cache: &reflector::Store<K>, matches: impl Fn(&K) -> bool) -> usize
    where
        K: kube::Resource<DynamicType = ()> + Clone,
    {
        let namespaces: BTreeSet<&str> = self.tenants.iter().map(|(ns, _)| ns.as_str()).collect();
        let in_world = |o: &K| o.meta().namespace.as_deref().is_some_and(|ns| namespaces.contains(ns));
        cache.state().iter().filter(|o| in_world(o) && matches(o)).count()
    }

    /// A controller of this world; `env` is added to its environment.
    fn controller(&self, name: &str, args: &[&str], with_queue: bool, env: &[(&str, &str)]) -> Process {
        let mut all =
            vec!["--leader-election", "false", "--ssm-write-rate", "0", "--ssm-read-rate", "0", "--log-level", "warn"];
        if with_queue {
            all.extend(["--event-queue-url", &self.queue_url]);
        }
        all.extend(args);
        Process::spawn(name, &all, env)
    }
}

/// `(VmRSS, VmHWM)` of a process, in MiB.
fn rss(pid: u32) -> (f64, f64) {
    let status = ProcStatus::read(pid);
    (status.mib("VmRSS:"), status.mib("VmHWM:"))
}

/// The resident set split: anonymous (the heap, stacks: what only freeing
/// returns) and file-backed (the binary's code the kernel mapped in: clean,
/// reclaimed under pressure), in MiB.
/// And what of the heap is live: jemalloc's allocated bytes against the pages
/// it keeps resident (the gap is fragmentation and pages not yet handed back).
fn rss_split(p: &Process) -> String {
    let status = ProcStatus::read(p.child.id());
    let mib = |name: &str| p.metric(&format!("tenant_config_allocator_{name}_bytes")).unwrap_or(f64::NAN) / 1048576.0;
    format!(
        "anonymous {:.0} MiB, file-backed {:.0} MiB; heap {:.0} MiB allocated of {:.0} MiB resident",
        status.mib("RssAnon:"),
        status.mib("RssFile:"),
        mib("allocated"),
        mib("resident")
    )
}

/// /proc/PID/status, read once.
struct ProcStatus(String);

impl ProcStatus {
    fn read(pid: u32) -> Self {
        ProcStatus(std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default())
    }

    /// A `kB` field in MiB (0 when unreadable).
    fn mib(&self, name: &str) -> f64 {
        let kib =
            self.0.lines().find_map(|l| l.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse::<f64>().ok());
        kib.unwrap_or(0.0) / 1024.0
    }
}

/// Store calls by operation, from the controller's /metrics.
fn store_calls(p: &Process) -> BTreeMap<String, f64> {
    let mut calls = BTreeMap::new();
    let body = p.get("/metrics").map(|r| r.1).unwrap_or_default();
    for line in body.lines().filter(|l| l.starts_with("tenant_config_store_calls_total{")) {
        let op = line.split("operation=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("?");
        let n: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        *calls.entry(op.to_string()).or_default() += n;
    }
    calls
}

/// Waits until the controller's reconcile counter stayed still for `still`.
async fn quiet(p: &Process, still: Duration) {
    let mut last = (-1.0, Instant::now());
    loop {
        // An endpoint that does not answer counts as 0, as before.
        let n = Some(p.metric_sum("tenant_config_reconciles_total", &[])).filter(|n| !n.is_nan()).unwrap_or(0.0);
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() >= still {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Mutating requests the API server served for the resources the controller writes.
async fn remove_limit_writes(world: &World, table: &str, objects: usize, concurrency: usize) {
    stream::iter(0..objects)
        .map(|i| {
            let (_, tenant, name) = world.object(i);
            let ddb = world.ddb.clone();
            let key = [("pk", format!("TENANT#{tenant}")), ("sk", format!("CONFIG#limit-{name}"))];
            async move {
                let key = key.into_iter().map(|(k, v)| (k.to_string(), AttributeValue::S(v))).collect();
                ddb.delete_item().table_name(table).set_key(Some(key)).send().await.unwrap();
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
    let names: Vec<String> = (0..objects)
        .map(|i| {
            let (_, tenant, name) = world.object(i);
            format!("{}/{tenant}/_/limit-{name}/c", world.prefix)
        })
        .collect();
    for batch in names.chunks(10) {
        world.ssm.delete_parameters().set_names(Some(batch.to_vec())).send().await.unwrap();
    }
}

/// One steady-state run: AWS calls per simulated hour by operation (queue
/// calls apart), Kubernetes writes, RSS after and at peak.
struct Steady {
    calls: BTreeMap<String, f64>,
    kubernetes_writes: f64,
    rss: f64,
    peak_rss: f64,
    rss_split: String,
}

async fn steady_state(world: &World, client: &Client, args: &Args, mode: &str) -> Steady {
    let resync = humantime::format_duration(args.steady_resync).to_string();
    let max_age = humantime::format_duration(args.steady_resync / 2).to_string();
    let concurrency = args.concurrency.to_string();
    let flags = [
        "--concurrency",
        &concurrency,
        "--resync-interval",
        &resync,
        "--shared-cache-max-age",
        &max_age,
        "--resync-mode",
        mode,
    ];
    let steady = world.controller(&format!("scale-steady-{mode}"), &flags, true, &[]);
    quiet(&steady, Duration::from_secs(3)).await; // the start-up pass
    let calls_before = store_calls(&steady);
    let writes_before = kubernetes_writes(client).await;
    tokio::time::sleep(args.steady_resync * args.cycles).await;
    let calls_after = store_calls(&steady);
    let kube_writes = kubernetes_writes(client).await - writes_before;
    let (rss_after, peak) = rss(steady.child.id());
    let rss_split = rss_split(&steady);
    steady.signal("TERM");
    let mut steady = steady;
    steady.wait_exit(Duration::from_secs(60));
    let per_hour = 6.0 / f64::from(args.cycles); // each interval stands for 10 minutes
    let calls = calls_after
        .iter()
        .map(|(op, n)| (op.clone(), (n - calls_before.get(op).copied().unwrap_or(0.0)) * per_hour))
        // Queue polls follow the clock, not the resync: counted apart.
        .filter(|(op, n)| {
            *n > 0.0 && !["ReceiveMessage", "DeleteMessageBatch", "ChangeMessageVisibility"].contains(&op.as_str())
        })
        .collect();
    Steady { calls, kubernetes_writes: kube_writes, rss: rss_after, peak_rss: peak, rss_split }
}

async fn kubernetes_writes(client: &Client) -> f64 {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(request).await.expect("API server /metrics");
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| ["POST", "PUT", "PATCH", "DELETE", "APPLY"].iter().any(|v| l.contains(&format!("verb=\"{v}\""))))
        .filter(|l| {
            ["configmaps", "secrets", "tenantconfigs", "events"]
                .iter()
                .any(|r| l.contains(&format!("resource=\"{r}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

#[tokio::main]
async fn main() {
    let args = args();
    support::install_crds();
    let client = support::kube_client().await;
    let sdk = support::aws_config().await;
    let id = support::unique("scale");
    let (prefix, shared) = (format!("/{id}"), format!("/{id}-shared"));
    let tenants = (args.objects / 100).max(1);
    let mut world = World {
        ddb: aws_sdk_dynamodb::Client::new(&sdk),
        ssm: aws_sdk_ssm::Client::new(&sdk),
        tenants: (0..tenants).map(|t| (format!("{id}-n{t}"), format!("{id}-t{t}"))).collect(),
        queue_url: String::new(), // the event plumbing is deployed after the cold phase
        objects: args.objects,
        prefix,
        shared,
        id,
    };
    // The table exists from the start; the event plumbing (queue, Pipe, rules)
    // is deployed only after the cold phase and its limit. In that phase the
    // controller runs without a queue anyway, and the emulator delivering each
    // write as an event (stream → Pipe → EventBridge → SQS) is work AWS does on
    // its side: on this shared machine it took more CPU than the writes
    // themselves, for the product and the limit alike.
    let table = format!("{}-table", world.id);
    support::create_table(&world.ddb, &table).await;
    let stream = aws_sdk_dynamodb::types::StreamSpecification::builder()
        .stream_enabled(true)
        .stream_view_type(aws_sdk_dynamodb::types::StreamViewType::NewAndOldImages)
        .build()
        .unwrap();
    world.ddb.update_table().table_name(&table).stream_specification(stream).send().await.expect("enable the stream");
    let id = &world.id;
    for (name, spec) in [
        (
            format!("{id}-db"),
            json!({ "tags": [format!("{id}-db")], "dynamodb": { "tableName": format!("{id}-table") } }),
        ),
        (
            format!("{id}-ssm"),
            json!({ "tags": [format!("{id}-ssm")], "parameterStore": { "pathPrefix": world.prefix, "sharedPaths": [world.shared] } }),
        ),
    ] {
        let store: ConfigStore = serde_json::from_value(json!({
            "apiVersion": "tenantconfig.io/v1alpha1", "kind": "ConfigStore", "metadata": { "name": name }, "spec": spec
        }))
        .unwrap();
        Api::<ConfigStore>::all(client.clone()).create(&PostParams::default(), &store).await.unwrap();
    }
    for (ns, tenant) in &world.tenants {
        let ns: Namespace = serde_json::from_value(
            json!({ "metadata": { "name": ns, "labels": { "tenantconfig.io/tenant": tenant } } }),
        )
        .unwrap();
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
    }
    let put_shared = |value: &'static str| {
        world
            .ssm
            .put_parameter()
            .name(format!("{}/common/region", world.shared))
            .value(value)
            .r#type(ParameterType::String)
            .overwrite(true)
            .send()
    };
    put_shared("eu").await.unwrap();

    // The objects exist before the controller starts: the clock measures the
    // controller, not how fast this client can create objects.
    let created = Instant::now();
    stream::iter(0..args.objects)
        .map(|i| {
            let (ns, _, name) = world.object(i);
            let tc: TenantConfig = serde_json::from_value(json!({
                "apiVersion": "tenantconfig.io/v1alpha1", "kind": "TenantConfig", "metadata": { "name": name },
                "spec": {
                    "entries": [
                        { "key": "a", "value": format!("a{i}"), "tags": [format!("{id}-db")] },
                        { "key": "b", "value": format!("b{i}"), "tags": [format!("{id}-db")] },
                        { "key": "c", "value": format!("c{i}"), "tags": [format!("{id}-ssm")] },
                    ],
                    "include": [{ "parameterPath": format!("{}/common", world.shared) }],
                }
            }))
            .unwrap();
            let api = Api::<TenantConfig>::namespaced(client.clone(), ns);
            async move { api.create(&PostParams::default(), &tc).await.map(drop) }
        })
        .buffer_unordered(args.concurrency)
        .try_collect::<Vec<_>>()
        .await
        .expect("create TenantConfigs");
    let created = created.elapsed();
    eprintln!("created {} TenantConfigs in {}", args.objects, secs(created));
    // A controller that starts finds objects made earlier (an upgrade, a
    // failover, a restart). Objects created within two seconds of the
    // start-up walk of their tenant's path read their path on their own
    // (creation times have whole seconds), which a run starting right after
    // creating them would measure instead.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 1. Cold convergence, without the event queue: every write of the cold
    // start echoes as an event, and moto's SQS costs O(queue length) per
    // receive and delete — with thousands queued it, not the controller, set
    // the pace. The echoes carry nothing new; they are purged afterwards.
    let concurrency = args.concurrency.to_string();
    // The cold-start controller may run under a profiler, e.g. heaptrack's
    // preload library (BENCHMARKS.md, "Memory"): space-separated NAME=VALUE pairs.
    let profiled = std::env::var("TCC_SCALE_COLD_START_ENV").unwrap_or_default();
    let profiled: Vec<(&str, &str)> = profiled.split_whitespace().filter_map(|pair| pair.split_once('=')).collect();
    let mut controller = world.controller("scale", &["--concurrency", &concurrency], false, &profiled);
    let pid = controller.child.id();
    let (cache, writer) = reflector::store();
    let watch = reflector::reflector(writer, watcher(Api::<TenantConfig>::all(client.clone()), Default::default()))
        .default_backoff()
        .for_each(|_| async {});
    let watch = tokio::spawn(watch);
    let cpu_cold_start = CpuSnapshot::take(Some(pid), "benchmark client");
    let started = Instant::now();
    let mut reported = Instant::now();
    loop {
        let ready = world.ready_count(&cache);
        if ready == world.objects {
            break;
        }
        // Not /healthz: the endpoint may not listen yet on the first pass.
        let exited = controller.child.try_wait().expect("wait on the controller");
        assert!(exited.is_none(), "the controller exited ({exited:?}): {}", controller.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
        if reported.elapsed() >= Duration::from_secs(5) {
            reported = Instant::now();
            eprintln!("  {ready}/{} Ready after {}", world.objects, secs(started.elapsed()));
        }
    }
    let product = started.elapsed();
    watch.abort();
    let cpu_cold = CpuSnapshot::take(Some(pid), "benchmark client").since(&cpu_cold_start, product);
    let (_, peak_cold) = rss(pid);
    quiet(&controller, Duration::from_secs(5)).await;
    let cold_calls = store_calls(&controller);
    tokio::time::sleep(args.settle).await;
    let (steady_after_cold, _) = rss(pid);
    let split_after_cold = rss_split(&controller);
    eprintln!("all Ready in {}", secs(product));
    controller.signal("TERM");
    controller.wait_exit(Duration::from_secs(60));

    // The limit: the same writes by a minimal client, same concurrency, to the
    // same table and path prefix (beside the product's keys).
    let limit_table = table.clone();
    let cpu_limit_start = CpuSnapshot::take(None, "benchmark client");
    let limit_started = Instant::now();
    stream::iter(0..args.objects)
        .map(|i| {
            let (ns, tenant, name) = world.object(i);
            let (client, ddb, ssm, table) = (client.clone(), world.ddb.clone(), world.ssm.clone(), limit_table.clone());
            let param = format!("{}/{tenant}/_/limit-{name}/c", world.prefix);
            let (ns, tenant) = (ns.to_string(), tenant.to_string());
            async move {
                let cm = json!({
                    "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": format!("limit-{name}") },
                    "data": { "a": format!("a{i}"), "b": format!("b{i}"), "c": format!("c{i}"), "region": "eu" }
                });
                Api::<ConfigMap>::namespaced(client.clone(), &ns)
                    .patch(&format!("limit-{name}"), &PatchParams::apply("limit").force(), &Patch::Apply(&cm))
                    .await
                    .unwrap();
                let data = AttributeValue::M(
                    [("a", format!("a{i}")), ("b", format!("b{i}"))]
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), AttributeValue::S(v)))
                        .collect(),
                );
                ddb.update_item()
                    .table_name(&table)
                    .key("pk", AttributeValue::S(format!("TENANT#{tenant}")))
                    .key("sk", AttributeValue::S(format!("CONFIG#limit-{name}")))
                    .update_expression("SET #d = :d, managedKeys = :m, managedBy = :o, version = :v")
                    .expression_attribute_names("#d", "data")
                    .expression_attribute_values(":d", data)
                    .expression_attribute_values(":m", AttributeValue::Ss(vec!["a".into(), "b".into()]))
                    .expression_attribute_values(":o", AttributeValue::S(format!("{ns}/{name}")))
                    .expression_attribute_values(":v", AttributeValue::N("1".into()))
                    .condition_expression("attribute_not_exists(pk)")
                    .send()
                    .await
                    .unwrap();
                let tag = Tag::builder().key("tenantconfig.io/tenant").value(&tenant).build().unwrap();
                ssm.put_parameter()
                    .name(param)
                    .value(format!("c{i}"))
                    .r#type(ParameterType::String)
                    .description(format!("managed-by:{ns}/{name}"))
                    .tags(tag)
                    .send()
                    .await
                    .unwrap();
                let status = json!({ "status": { "projectedKeys": 5, "configMap": format!("limit-{name}") } });
                Api::<TenantConfig>::namespaced(client, &ns)
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(args.concurrency)
        .collect::<Vec<()>>()
        .await;
    let limit = limit_started.elapsed();
    let cpu_limit = CpuSnapshot::take(None, "benchmark client").since(&cpu_limit_start, limit);
    // The limit's items and parameters sit beside the product's in the tenants'
    // partitions and paths: remove them, so that the fan-out and the steady
    // state read the product's data only (with them, each tenant's walk would
    // take twice the pages).
    remove_limit_writes(&world, &limit_table, args.objects, args.concurrency).await;

    let n = args.objects as f64;
    println!("\n### {} TenantConfigs ({} tenants, concurrency {})\n", args.objects, tenants, args.concurrency);
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| cold convergence (controller start → all Ready) | {} ({:.1} objects/s) |",
        secs(product),
        n / product.as_secs_f64()
    );
    println!("| limit: same writes by a minimal client | {} ({:.1} objects/s) |", secs(limit), n / limit.as_secs_f64());
    println!("| **product / limit** | **{:.2}** |", limit.as_secs_f64() / product.as_secs_f64());
    println!("| CPU during cold convergence | {cpu_cold} |");
    println!("| CPU during the limit | {cpu_limit} |");
    println!(
        "| store calls during cold convergence | {} |",
        cold_calls.iter().map(|(op, c)| format!("{op} {c:.0}")).collect::<Vec<_>>().join(", ")
    );
    println!(
        "| controller RSS: peak during cold convergence / idle {} after it | {peak_cold:.0} MiB / {steady_after_cold:.0} MiB ({split_after_cold}) |",
        humantime::format_duration(args.settle + Duration::from_secs(5))
    );
    if args.cold_only {
        return;
    }

    // 2. Shared fan-out, through the event path.
    world.queue_url = support::event_queue(id, &[&world.prefix, &world.shared], 5, 60).queue_url;
    let controller = world.controller("scale-events", &["--concurrency", &concurrency], true, &[]);
    let pid = controller.child.id();
    quiet(&controller, Duration::from_secs(5)).await; // its start-up pass
    let cache_misses =
        |p: &Process| p.metric("tenant_config_shared_cache_lookups_total{result=\"miss\"}").unwrap_or(0.0);
    let (misses_before, walks_before) =
        (cache_misses(&controller), store_calls(&controller).get("GetParametersByPath").copied().unwrap_or(0.0));
    let (cms, writer) = reflector::store();
    let projected = watcher::Config::default().labels("app.kubernetes.io/managed-by=tenant-config-controller");
    let watch = reflector::reflector(writer, watcher(Api::<ConfigMap>::all(client.clone()), projected))
        .default_backoff()
        .for_each(|_| async {});
    let watch = tokio::spawn(watch);
    cms.wait_until_ready().await.expect("ConfigMap watch");
    let cpu_fan_out_start = CpuSnapshot::take(Some(pid), "benchmark client");
    put_shared("eu-central-1").await.unwrap();
    let changed = Instant::now();
    while world.config_maps_with(&cms, "region", "eu-central-1") < world.objects {
        assert!(changed.elapsed() < Duration::from_secs(600), "fan-out did not finish in 10 minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fan_out = changed.elapsed();
    let cpu_fan_out = CpuSnapshot::take(Some(pid), "benchmark client").since(&cpu_fan_out_start, fan_out);
    watch.abort();
    quiet(&controller, Duration::from_secs(5)).await;
    let shared_walks = cache_misses(&controller) - misses_before;
    let all_walks = store_calls(&controller).get("GetParametersByPath").copied().unwrap_or(0.0) - walks_before;
    let unhandled = controller.metric("tenant_config_event_messages_total{outcome=\"unhandled\"}").unwrap_or(0.0);
    let extensions = store_calls(&controller).get("ChangeMessageVisibility").copied().unwrap_or(0.0);
    let (_, peak_fan_out) = rss(pid);
    controller.signal("TERM");
    let mut controller = controller;
    controller.wait_exit(Duration::from_secs(60));

    println!("| shared fan-out: change → all {} ConfigMaps | {} |", args.objects, secs(fan_out));
    println!("| CPU during the fan-out | {cpu_fan_out} |");
    println!(
        "| shared fan-out: walks of the shared path | {shared_walks:.0} (all GetParametersByPath: {all_walks:.0}) |"
    );
    println!(
        "| shared fan-out: the event's visibility extended / left unhandled | {extensions:.0} / {unhandled:.0} times |"
    );
    println!("| controller RSS: peak during fan-out | {peak_fan_out:.0} MiB |");
    if args.cycles == 0 {
        return;
    }

    // 3. Steady state: K resyncs with nothing changing, bulk (the default)
    // and per object (the flag), one after the other.
    let bulk = steady_state(&world, &client, &args, "bulk").await;
    let per_object = steady_state(&world, &client, &args, "per-object").await;
    let (steady_calls, kube_writes, steady_rss, peak_steady) =
        (&bulk.calls, bulk.kubernetes_writes, bulk.rss, bulk.peak_rss);
    let resync = humantime::format_duration(args.steady_resync).to_string();
    let product_per_hour: f64 = steady_calls.values().sum();

    println!(
        "| controller RSS: after {} resyncs | {steady_rss:.0} MiB (peak {peak_steady:.0} MiB; {}) |",
        args.cycles, bulk.rss_split
    );
    println!(
        "\nSteady state, 1 simulated hour ({} resyncs at {resync}, each standing for 10 min): \
         Kubernetes writes **{kube_writes:.0}**.\n",
        args.cycles
    );
    println!("| design | AWS calls / hour | ratio to this controller |");
    println!("|---|---|---|");
    let by_op = steady_calls.iter().map(|(op, c)| format!("{op} {c:.0}")).collect::<Vec<_>>().join(", ");
    // 180 long polls an hour (20 s each) when nothing arrives.
    let receives = 180.0;
    let ours = product_per_hour + receives;
    println!("| this controller, resync 10 min (bulk) | {ours:.0} ({by_op}, ReceiveMessage {receives:.0}) | 1.00 |");
    let per_object_ours: f64 = per_object.calls.values().sum::<f64>() + receives;
    let by_op = per_object.calls.iter().map(|(op, c)| format!("{op} {c:.0}")).collect::<Vec<_>>().join(", ");
    println!(
        "| this controller, resync 10 min, `--resync-mode per-object` | {per_object_ours:.0} ({by_op}, ReceiveMessage {receives:.0}; Kubernetes writes {:.0}) | {:.2} |",
        per_object.kubernetes_writes,
        per_object_ours / ours
    );
    let keys = 4.0 * n; // 3 entries + 1 included parameter per object
    for (label, refresh) in [("1 h", 3600.0), ("15 min", 900.0), ("1 min", 60.0)] {
        let polling = keys * 3600.0 / refresh;
        println!("| polling, one GetParameter per key every {label} | {polling:.0} | {:.2} |", polling / ours);
    }
}
