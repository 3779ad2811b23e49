//! The config service under many watches: store write → message at the
//! watching client, side by side with store write → ConfigMap, for 1 and for
//! N concurrent watches (default 1,000), in one run on one stack.
//!
//! `scripts/bench.sh config-api [--watches N] [--tokens T] [--tenants K] [--samples S] [--hold D]`
//! runs it (release build). The controller is the release binary in its own
//! process (its RSS is its own); the client is this process: one HTTP/2
//! connection per token (as pods each have theirs), T distinct ServiceAccount
//! tokens from TokenRequest over K tenants, N watches spread over them. Each
//! sample writes one key of one tenant's DynamoDB item out of band and times
//! its arrival at every watch of that tenant and in the ConfigMap (a watch of
//! this process). Printed: p50/p95/p99 per phase, the controller's RSS with
//! 1 and with N watches, and the TokenReviews it made per token (with
//! `--hold D` the watches stay open D longer first, e.g. 6m to see the
//! reviews a token costs past the 5-minute verdict cache).

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use kube::{
    Api,
    api::PostParams,
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;
use support::{percentile, world::World};
use tenant_config_controller::config_api::proto::{WatchConfigRequest, config_service_client::ConfigServiceClient};
use tonic::transport::Channel;

struct Args {
    watches: usize,
    tokens: usize,
    tenants: usize,
    samples: usize,
    hold: Duration,
}

fn args() -> Args {
    let mut args = Args { watches: 1000, tokens: 100, tenants: 4, samples: 30, hold: Duration::ZERO };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--watches" => args.watches = value().parse().expect("--watches N"),
            "--tokens" => args.tokens = value().parse().expect("--tokens T"),
            "--tenants" => args.tenants = value().parse().expect("--tenants K"),
            "--samples" => args.samples = value().parse().expect("--samples S"),
            "--hold" => args.hold = humantime::parse_duration(&value()).expect("--hold 6m"),
            "--bench" => {}
            other => panic!("unknown argument {other}; use --watches N --tokens T --tenants K --samples S --hold D"),
        }
    }
    assert!(args.tokens >= args.tenants && args.watches >= args.tokens, "tenants ≤ tokens ≤ watches");
    args
}

const AUDIENCE: &str = "tenantconfig.io";
const TC_NAME: &str = "bench";
const SAMPLE_DEADLINE: Duration = Duration::from_secs(30);

/// One tenant of the run: its namespace and tenant label value.
struct Tenant {
    ns: String,
    tenant: String,
}

/// When each watch saw each probe value: (tenant index, value) → arrivals.
type Arrivals = Arc<Mutex<HashMap<(usize, String), Vec<Instant>>>>;

/// Opens `count` watches of the tenant's object with `token` on `channel`;
/// each records the probe values it receives.
async fn open_watches(channel: &Channel, token: &str, tenant: usize, count: usize, arrivals: &Arrivals) {
    for _ in 0..count {
        let mut request = tonic::Request::new(WatchConfigRequest { name: TC_NAME.into(), digest: String::new() });
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        let mut stream = ConfigServiceClient::new(channel.clone())
            .watch_config(request)
            .await
            .unwrap_or_else(|s| panic!("watch refused: {s}"))
            .into_inner();
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            while let Ok(Some(config)) = stream.message().await {
                let at = Instant::now();
                if let Some(value) = config.data.get("probe") {
                    arrivals.lock().unwrap().entry((tenant, value.clone())).or_default().push(at);
                }
            }
        });
    }
}

/// What one phase measured.
struct Phase {
    /// Store write → each watch's message.
    to_watch: Vec<Duration>,
    /// Store write → the ConfigMap (this process's watch of it).
    to_config_map: Vec<Duration>,
    /// The ConfigMap seen here → each watch's message: the service's own part.
    config_map_to_watch: Vec<Duration>,
    /// Messages that did not arrive within the deadline.
    missed: usize,
}

/// One phase: `samples` out-of-band writes, each timed to every watch of its
/// tenant (expecting `watchers[tenant]` arrivals) and to the ConfigMap.
async fn measure(
    world: &World,
    tenants: &[Tenant],
    watchers: &[usize],
    samples: usize,
    label: &str,
    arrivals: &Arrivals,
    config_maps: &Arrivals,
) -> Phase {
    let mut phase = Phase { to_watch: vec![], to_config_map: vec![], config_map_to_watch: vec![], missed: 0 };
    let watched: Vec<usize> = (0..tenants.len()).filter(|t| watchers[*t] > 0).collect();
    for i in 0..samples {
        let t = watched[i % watched.len()];
        let value = format!("{label}-{i}");
        let written = Instant::now();
        world.set_item_key(&tenants[t].tenant, TC_NAME, "probe", Some(&value)).await;
        let key = (t, value);
        loop {
            let watched = arrivals.lock().unwrap().get(&key).map_or(0, Vec::len);
            let projected = config_maps.lock().unwrap().contains_key(&key);
            if watched >= watchers[t] && projected {
                break;
            }
            if written.elapsed() > SAMPLE_DEADLINE {
                phase.missed += watchers[t] - watched;
                eprintln!("sample {i}: {watched} of {} watches and projected={projected} after 30 s", watchers[t]);
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let watched = arrivals.lock().unwrap().get(&key).cloned().unwrap_or_default();
        let projected = config_maps.lock().unwrap().get(&key).and_then(|v| v.first()).copied();
        phase.to_watch.extend(watched.iter().map(|at| at.saturating_duration_since(written)));
        if let Some(projected) = projected {
            phase.to_config_map.push(projected.saturating_duration_since(written));
            phase.config_map_to_watch.extend(watched.iter().map(|at| at.saturating_duration_since(projected)));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    phase.to_watch.sort();
    phase.to_config_map.sort();
    phase.config_map_to_watch.sort();
    phase
}

fn three(sorted: &[Duration]) -> String {
    if sorted.is_empty() {
        return "– / – / –".into();
    }
    let ms = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1000.0);
    format!("{} / {} / {}", ms(percentile(sorted, 50.0)), ms(percentile(sorted, 95.0)), ms(percentile(sorted, 99.0)))
}

fn mib(bytes: Option<f64>) -> String {
    bytes.map_or("?".into(), |b| format!("{:.1}", b / 1048576.0))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = args();
    let mut world = World::with_queue("capi-bench", 5, 60).await;
    world.standard_stores().await;
    let mut tenants = Vec::new();
    for t in 0..args.tenants {
        let tenant = world.tenant(t);
        let ns = world.namespace(&format!("t{t}"), Some(&tenant)).await;
        let spec = json!({ "defaultTags": [world.tag("db")], "entries": [{ "key": "a", "value": "1" }] });
        world.tenant_config(&ns, TC_NAME, spec).await;
        tenants.push(Tenant { ns, tenant });
    }
    // Token k belongs to ServiceAccount reader-k of tenant k % tenants.
    for k in 0..args.tokens {
        let sa: ServiceAccount =
            serde_json::from_value(json!({ "metadata": { "name": format!("reader-{k}") } })).unwrap();
        let ns = &tenants[k % args.tenants].ns;
        Api::<ServiceAccount>::namespaced(world.client.clone(), ns).create(&PostParams::default(), &sa).await.unwrap();
    }
    let per_tenant_cap = args.watches.div_ceil(args.tenants).max(1000).to_string();
    let cap = ["--config-api-max-watches-per-tenant", &per_tenant_cap];
    let (controller, addr) = support::process::serving_config_api("capi-bench", world.queue_url(), &cap);
    for t in &tenants {
        world.wait_ready_count(&t.ns, 1).await;
    }
    let url = format!("http://{addr}");
    let connect = || async {
        let started = Instant::now();
        loop {
            if let Ok(channel) = Channel::from_shared(url.clone()).unwrap().connect().await {
                return channel;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "the config service never answered");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };

    // Store write → ConfigMap, seen by a watch of this process.
    let config_maps: Arrivals = Arc::default();
    for (t, tenant) in tenants.iter().enumerate() {
        let seen = config_maps.clone();
        let cms = Api::<ConfigMap>::namespaced(world.client.clone(), &tenant.ns);
        tokio::spawn(async move {
            let events = watcher(cms, watcher::Config::default()).default_backoff().applied_objects();
            let mut events = std::pin::pin!(events.filter_map(|cm| async move { cm.ok() }));
            while let Some(cm) = events.next().await {
                let at = Instant::now();
                if let Some(value) = cm.data.unwrap_or_default().get("probe") {
                    seen.lock().unwrap().entry((t, value.clone())).or_default().push(at);
                }
            }
        });
    }

    let reviews = || controller.metric_sum("tenant_config_config_api_token_reviews_total", &[]);
    let rss = || controller.metric("process_resident_memory_bytes");
    let mut tokens = Vec::new();
    for k in 0..args.tokens {
        let (ns, sa) = (&tenants[k % args.tenants].ns, format!("reader-{k}"));
        tokens.push(support::process::service_account_token(&world.client, ns, &sa, &[AUDIENCE], None).await);
    }
    // Phase 1: one watch.
    let arrivals: Arrivals = Arc::default();
    let first = connect().await;
    let started = Instant::now();
    loop {
        let mut request =
            tonic::Request::new(tenant_config_controller::config_api::proto::GetConfigRequest { name: TC_NAME.into() });
        request.metadata_mut().insert("authorization", format!("Bearer {}", tokens[0]).parse().unwrap());
        if ConfigServiceClient::new(first.clone()).get_config(request).await.is_ok() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the config service never served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    open_watches(&first, &tokens[0], 0, 1, &arrivals).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_one = rss();
    let mut watchers = vec![0; args.tenants];
    watchers[0] = 1;
    eprintln!("phase: 1 watch, {} samples", args.samples);
    let one = measure(&world, &tenants, &watchers, args.samples, "one", &arrivals, &config_maps).await;

    // Phase 2: N watches over T tokens (one connection each).
    let reviews_before = reviews();
    let opened = Instant::now();
    let arrivals: Arrivals = Arc::default();
    let mut watchers = vec![0; args.tenants];
    for (k, token) in tokens.iter().enumerate() {
        let count = args.watches / args.tokens + usize::from(k < args.watches % args.tokens);
        let tenant = k % args.tenants;
        let channel = connect().await;
        open_watches(&channel, token, tenant, count, &arrivals).await;
        watchers[tenant] += count;
    }
    let open_took = opened.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    if !args.hold.is_zero() {
        eprintln!("holding {} watches open for {:?}", args.watches, args.hold);
        tokio::time::sleep(args.hold).await;
    }
    let rss_many = rss();
    eprintln!("phase: {} watches, {} samples", args.watches, args.samples);
    let samples = args.samples.max(args.tenants);
    let many = measure(&world, &tenants, &watchers, samples, "many", &arrivals, &config_maps).await;
    let reviews_made = reviews() - reviews_before;
    let watching_for = opened.elapsed();

    println!(
        "\nStore write → message at the watching clients, and → ConfigMap for the same writes (DynamoDB, event path):\n"
    );
    println!(
        "| watches | writes | messages | missed | write → watch p50 / p95 / p99 ms | write → ConfigMap p50 / p95 / p99 ms | \
         ConfigMap → watch p50 / p95 / p99 ms | controller RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let row = |watches: String, p: &Phase, rss: Option<f64>| {
        println!(
            "| {watches} | {} | {} | {} | {} | {} | {} | {} |",
            p.to_config_map.len(),
            p.to_watch.len(),
            p.missed,
            three(&p.to_watch),
            three(&p.to_config_map),
            three(&p.config_map_to_watch),
            mib(rss)
        )
    };
    row("1".into(), &one, rss_one);
    row(format!("{} ({} tokens, {} tenants)", args.watches, args.tokens, args.tenants), &many, rss_many);
    println!(
        "\nController RSS with {} watches − with 1: {} MiB. Opening them took {:.1} s. TokenReviews while {} tokens \
         watched for {:.0} s: {reviews_made:.0} ({:.2} per token).",
        args.watches,
        mib(rss_many.zip(rss_one).map(|(m, o)| m - o)),
        open_took.as_secs_f64(),
        args.tokens,
        watching_for.as_secs_f64(),
        reviews_made / args.tokens as f64
    );
    world.clean_up().await;
    drop(controller);
}
