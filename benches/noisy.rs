//! Noisy neighbours: what a quiet tenant sees while another tenant drains a
//! Parameter Store backlog and keeps editing it, side by side with the same
//! measures on an idle controller, in one run on one stack.
//!
//! `scripts/bench.sh noisy [--noisy-tenants T] [--noisy-objects N] [--entries E] [--samples S] [--edit-every D]`
//! runs it (release build) and prints a markdown table: the quiet tenant's
//! store change → ConfigMap and new TenantConfig → Ready (DynamoDB-routed, and
//! one Parameter Store entry), p50/p95/p99 idle and under noise; then the noisy
//! tenant's drain time and its SSM write rate against the budget. The
//! controller runs in this process with its production defaults (concurrency
//! 16, tenant concurrency 4, SSM writes 3/s) and the event queue.

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use serde_json::json;
use support::{fixtures::InProcessController, percentile, world::World};
use tenant_config_controller::{
    api::{ConfigStore, TenantConfig},
    events::sqs::ConsumerSettings,
    reconcile::Settings,
    store::stats::CallStats,
};

struct Args {
    noisy_tenants: usize,
    noisy_objects: usize,
    entries: usize,
    samples: usize,
    edit_every: Duration,
}

fn args() -> Args {
    let mut args =
        Args { noisy_tenants: 1, noisy_objects: 40, entries: 64, samples: 20, edit_every: Duration::from_millis(250) };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--noisy-tenants" => args.noisy_tenants = value().parse().expect("--noisy-tenants T"),
            "--noisy-objects" => args.noisy_objects = value().parse().expect("--noisy-objects N"),
            "--entries" => args.entries = value().parse().expect("--entries E"),
            "--samples" => args.samples = value().parse().expect("--samples S"),
            "--edit-every" => args.edit_every = humantime::parse_duration(&value()).expect("--edit-every 250ms"),
            "--bench" => {}
            other => panic!(
                "unknown argument {other}; use --noisy-tenants T --noisy-objects N --entries E --samples S --edit-every D"
            ),
        }
    }
    args
}

/// The quiet tenant's measures of one phase.
#[derive(Default)]
struct Phase {
    change_to_config_map: Vec<Duration>,
    new_to_ready: Vec<Duration>,
    new_ssm_to_ready: Vec<Duration>,
}

/// How often the quiet side looks (its own reads are not what is measured).
const POLL: Duration = Duration::from_millis(20);
/// A sample that takes longer than this is recorded as this and the phase goes on.
const SAMPLE_DEADLINE: Duration = Duration::from_secs(120);

struct Quiet<'a> {
    world: &'a World,
    ns: String,
    tenant: String,
    objects: usize,
}

impl Quiet<'_> {
    fn tcs(&self) -> Api<TenantConfig> {
        self.world.tenant_configs(&self.ns)
    }

    /// Samples of each measure; `round` keeps names and values of phases apart.
    async fn measure(&self, round: &str, samples: usize) -> Phase {
        let mut phase = Phase::default();
        for i in 0..samples {
            // Another writer changes a key of the tenant's item → the ConfigMap.
            let name = format!("q{}", i % self.objects);
            let value = format!("{round}-{i}");
            let started = Instant::now();
            self.world.set_item_key(&self.tenant, &name, "probe", Some(&value)).await;
            let cms = self.world.config_maps(&self.ns);
            while cms.get_opt(&name).await.unwrap().and_then(|c| c.data).and_then(|d| d.get("probe").cloned())
                != Some(value.clone())
                && started.elapsed() < SAMPLE_DEADLINE
            {
                tokio::time::sleep(POLL).await;
            }
            phase.change_to_config_map.push(started.elapsed());

            let db = json!({ "defaultTags": [self.world.tag("db")], "entries": [{ "key": "a", "value": value }] });
            phase.new_to_ready.push(self.new_until_ready(&format!("{round}-d{i}"), db).await);
            if i % 2 == 0 {
                let entry = json!({ "key": "a", "value": value, "tags": [self.world.tag("ssm")] });
                let ssm = json!({ "entries": [entry] });
                phase.new_ssm_to_ready.push(self.new_until_ready(&format!("{round}-s{i}"), ssm).await);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        phase
    }

    async fn new_until_ready(&self, name: &str, spec: serde_json::Value) -> Duration {
        let started = Instant::now();
        self.world.tenant_config(&self.ns, name, spec).await;
        let tcs = self.tcs();
        while !tcs.get(name).await.is_ok_and(|tc| support::fixtures::is_ready(&tc))
            && started.elapsed() < SAMPLE_DEADLINE
        {
            tokio::time::sleep(POLL).await;
        }
        let took = started.elapsed();
        tcs.delete(name, &DeleteParams::default()).await.unwrap();
        took
    }
}

/// The noisy tenants' objects Ready for their current generation.
async fn converged(world: &World, namespaces: &[String]) -> usize {
    let mut converged = 0;
    for ns in namespaces {
        let list = world.tenant_configs(ns).list(&ListParams::default()).await.unwrap();
        converged += list
            .items
            .iter()
            .filter(|tc| {
                support::fixtures::is_ready(tc)
                    && tc.status.as_ref().and_then(|s| s.observed_generation) == tc.metadata.generation
            })
            .count();
    }
    converged
}

/// A drain that converges no object for this long is a failure, not a wait.
const DRAIN_STALL: Duration = Duration::from_secs(300);

/// The Ready reasons of the noisy objects that have not converged.
async fn unconverged(world: &World, namespaces: &[String]) -> String {
    let mut reasons = std::collections::BTreeMap::<String, usize>::new();
    for ns in namespaces {
        for tc in world.tenant_configs(ns).list(&ListParams::default()).await.unwrap().items {
            if !support::fixtures::is_ready(&tc) {
                let reason = support::fixtures::condition(&tc, "Ready").map(|(_, r)| r).unwrap_or_default();
                *reasons.entry(reason).or_default() += 1;
            }
        }
    }
    format!("{reasons:?}")
}

fn noisy_spec(world: &World, entries: usize, edit: usize) -> serde_json::Value {
    let entries: Vec<_> = (0..entries)
        .map(|k| json!({ "key": format!("k{k}"), "value": if k == 0 { format!("edit-{edit}") } else { format!("v{k}") } }))
        .collect();
    json!({ "defaultTags": [world.tag("ssm")], "entries": entries })
}

fn row(what: &str, idle: &[Duration], noisy: &[Duration]) -> String {
    let mut idle = idle.to_vec();
    let mut noisy = noisy.to_vec();
    idle.sort();
    noisy.sort();
    let ms = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1000.0);
    let three = |s: &[Duration]| {
        format!("{} / {} / {}", ms(percentile(s, 50.0)), ms(percentile(s, 95.0)), ms(percentile(s, 99.0)))
    };
    let ratio = percentile(&noisy, 99.0).as_secs_f64() / percentile(&idle, 99.0).as_secs_f64().max(1e-3);
    format!("| {what} | {} | {} | {} | {:.2} |", idle.len(), three(&idle), three(&noisy), ratio)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = args();
    let mut world = World::with_queue("noisy", 5, 60).await;
    world.standard_stores().await;
    // The backlog is over Parameter Store's default per-tenant quota (1,000
    // entries): the platform team raised it for this tenant's store.
    let quota = json!({ "spec": { "quota": { "maxEntries": args.noisy_objects * args.entries + 1000 } } });
    let stores = Api::<ConfigStore>::all(world.client.clone());
    stores.patch(&format!("{}-ssm", world.id), &PatchParams::default(), &Patch::Merge(&quota)).await.unwrap();
    let quiet_tenant = world.tenant(0);
    let quiet_ns = world.namespace("quiet", Some(&quiet_tenant)).await;
    let mut noisy_namespaces = Vec::new();
    for t in 0..args.noisy_tenants {
        let tenant = world.tenant(t + 1);
        noisy_namespaces.push(world.namespace(&format!("noisy{t}"), Some(&tenant)).await);
    }
    let events = ConsumerSettings::new(world.queue_url().into());
    let settings = Settings { resync_interval: Duration::from_secs(600), ..Settings::default() };
    let controller = InProcessController::start(&world.client, &world.sdk, settings, Some(events));
    let stats: Arc<CallStats> = controller.stats.clone();

    let quiet = Quiet { world: &world, ns: quiet_ns.clone(), tenant: quiet_tenant.clone(), objects: 5 };
    for i in 0..quiet.objects {
        let spec = json!({ "defaultTags": [world.tag("db")], "entries": [{ "key": "a", "value": "1" }] });
        world.tenant_config(&quiet_ns, &format!("q{i}"), spec).await;
    }
    world.wait_ready_count(&quiet_ns, quiet.objects).await;
    eprintln!("idle phase: {} samples", args.samples);
    let idle = quiet.measure("idle", args.samples).await;

    eprintln!(
        "noisy phase: {} tenant(s), {} objects x {} Parameter Store entries",
        args.noisy_tenants, args.noisy_objects, args.entries
    );
    let writes_before = stats.writes("ParameterStore");
    let drain_started = Instant::now();
    let noisy_object = |n: usize| (noisy_namespaces[n % noisy_namespaces.len()].clone(), format!("n{n}"));
    for n in 0..args.noisy_objects {
        let (ns, name) = noisy_object(n);
        world.tenant_config(&ns, &name, noisy_spec(&world, args.entries, 0)).await;
    }
    // Continuous edits of the noisy objects, one at a time round robin.
    let editing = Arc::new(AtomicBool::new(true));
    let edits = Arc::new(AtomicUsize::new(0));
    let editor = {
        let (client, editing, edits) = (world.client.clone(), editing.clone(), edits.clone());
        let objects: Vec<_> = (0..args.noisy_objects).map(noisy_object).collect();
        let (entries, every, ssm) = (args.entries, args.edit_every, world.tag("ssm"));
        tokio::spawn(async move {
            while editing.load(Ordering::Relaxed) {
                let edit = edits.fetch_add(1, Ordering::Relaxed) + 1;
                let entries: Vec<_> = (0..entries)
                    .map(|k| {
                        let value = if k == 0 { format!("edit-{edit}") } else { format!("v{k}") };
                        json!({ "key": format!("k{k}"), "value": value })
                    })
                    .collect();
                let patch = json!({ "spec": { "defaultTags": [ssm], "entries": entries } });
                let (ns, name) = &objects[edit % objects.len()];
                let tcs = Api::<TenantConfig>::namespaced(client.clone(), ns);
                let _ = tcs.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await;
                tokio::time::sleep(every).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let noisy = quiet.measure("noisy", args.samples).await;
    let converged_during = converged(&world, &noisy_namespaces).await;
    editing.store(false, Ordering::Relaxed);
    editor.await.unwrap();
    let edits = edits.load(Ordering::Relaxed);
    eprintln!(
        "quiet samples done; {converged_during}/{} noisy objects converged; waiting for the drain",
        args.noisy_objects
    );
    let (mut progress, mut progressed) = (converged_during, Instant::now());
    while progress < args.noisy_objects {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = converged(&world, &noisy_namespaces).await;
        if now > progress {
            (progress, progressed) = (now, Instant::now());
        }
        assert!(
            progressed.elapsed() < DRAIN_STALL,
            "the drain stalled at {progress}/{}: {}",
            args.noisy_objects,
            unconverged(&world, &noisy_namespaces).await
        );
    }
    let drain = drain_started.elapsed();
    let writes = stats.writes("ParameterStore") - writes_before;

    println!(
        "command: ./scripts/bench.sh noisy --noisy-objects {} --entries {} --samples {} --edit-every {:?}",
        args.noisy_objects, args.entries, args.samples, args.edit_every
    );
    println!();
    println!(
        "| quiet tenant | samples | idle p50 / p95 / p99 ms | under noise p50 / p95 / p99 ms | p99 noise / idle |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "{}",
        row("store change → ConfigMap (DynamoDB, event path)", &idle.change_to_config_map, &noisy.change_to_config_map)
    );
    println!("{}", row("new TenantConfig → Ready (DynamoDB)", &idle.new_to_ready, &noisy.new_to_ready));
    println!(
        "{}",
        row("new TenantConfig → Ready (1 Parameter Store entry)", &idle.new_ssm_to_ready, &noisy.new_ssm_to_ready)
    );
    println!();
    println!("| noisy tenant | value |");
    println!("|---|---|");
    println!(
        "| backlog | {} objects × {} Parameter Store entries, {edits} edits during the quiet samples |",
        args.noisy_objects, args.entries
    );
    println!("| converged when the quiet samples ended | {converged_during} / {} |", args.noisy_objects);
    println!("| drain time (created → every object Ready for its last generation) | {:.1} s |", drain.as_secs_f64());
    println!("| Parameter Store writes (PutParameter, DeleteParameters, AddTagsToResource) | {writes} |");
    println!("| write rate over the drain | {:.2}/s (budget 3/s) |", writes as f64 / drain.as_secs_f64());

    world.clean_up().await;
    controller.stop_within(Duration::from_secs(60)).await;
}
