//! `tenant-config-controller run`: the controller process.

use std::{num::NonZeroU32, time::Duration};

use clap::{Parser, Subcommand};
use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};

use futures::{FutureExt, future::BoxFuture};
use tenant_config_controller::{
    events::{self, sqs::ConsumerSettings},
    leader::Election,
    metrics::Metrics,
    reconcile::Settings,
    runtime::{self, Dependencies},
    server::{self, Probes},
    store::{BackendContext, DEFAULT_MAX_ATTEMPTS, RateLimits},
    telemetry::{self, LogFormat},
    workloads,
};
use tracing::info;

#[derive(Parser)]
#[command(
    version,
    about = "Pushes TenantConfig entries to DynamoDB / SSM Parameter Store and projects them into ConfigMaps"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (kubeconfig from KUBECONFIG or in-cluster; AWS from the standard chain).
    Run(Box<RunArgs>),
    /// Print the EventBridge event patterns the event queue's rules must use, as JSON.
    EventPatterns(PatternArgs),
}

#[derive(clap::Args)]
struct PatternArgs {
    /// An SSM path prefix whose changes matter: every ConfigStore's pathPrefix and sharedPaths. Repeatable.
    #[arg(long = "parameter-prefix", required = true)]
    parameter_prefixes: Vec<String>,
    /// Name of the EventBridge Pipe that forwards the table's stream to the bus.
    #[arg(long, default_value = "tenant-config-dynamodb")]
    pipe_name: String,
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    settings: Settings,
    #[command(flatten)]
    workloads: workloads::Settings,
    /// SSM PutParameter/DeleteParameters calls per second, process-wide (0 = unlimited).
    #[arg(long, env = "TENANT_CONFIG_SSM_WRITE_RATE", default_value_t = 3)]
    ssm_write_rate: u32,
    /// SSM read calls per second, process-wide (0 = unlimited).
    #[arg(long, env = "TENANT_CONFIG_SSM_READ_RATE", default_value_t = 40)]
    ssm_read_rate: u32,
    /// DynamoDB calls per second, process-wide (0 = unlimited).
    #[arg(long, env = "TENANT_CONFIG_DYNAMODB_RATE", default_value_t = 0)]
    dynamodb_rate: u32,
    /// AWS SDK attempts per call (exponential backoff with jitter) before a throttle or 5xx is reported.
    #[arg(long, env = "TENANT_CONFIG_AWS_MAX_ATTEMPTS", default_value_t = DEFAULT_MAX_ATTEMPTS)]
    aws_max_attempts: u32,
    /// SQS queue URL of store-change events (EventBridge rules feed it). Without it, changes
    /// made outside the controller arrive only with the resync.
    #[arg(long, env = "TENANT_CONFIG_EVENT_QUEUE_URL")]
    event_queue_url: Option<String>,
    /// How long a received event stays hidden while its objects reconcile; one not handled in
    /// 80% of this is redelivered. Keep it under the queue's retention, above a reconcile's duration.
    #[arg(long, env = "TENANT_CONFIG_EVENT_VISIBILITY_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    event_visibility_timeout: Duration,
    /// Address of the HTTP endpoint: /metrics, /healthz, /readyz.
    #[arg(long, env = "TENANT_CONFIG_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Run only while holding a coordination.k8s.io Lease, so that one of several replicas is
    /// active; the others stand by and read nothing from the queue.
    #[arg(long, env = "TENANT_CONFIG_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the Lease.
    #[arg(long, env = "TENANT_CONFIG_LEASE_NAME", default_value = "tenant-config-controller")]
    lease_name: String,
    /// Namespace of the Lease (the chart passes the release namespace).
    #[arg(long, env = "TENANT_CONFIG_LEASE_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// A leader that stops renewing loses the Lease after this long (whole seconds).
    #[arg(long, env = "TENANT_CONFIG_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// This replica's identity in the Lease (default: host name and process id).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Log format.
    #[arg(long, env = "TENANT_CONFIG_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log filter, RUST_LOG syntax (e.g. `info,tenant_config_controller=debug`).
    #[arg(long, env = "TENANT_CONFIG_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

/// jemalloc instead of glibc's malloc: with the caches of thousands of objects
/// glibc's arenas kept freed memory (3,000 objects, cold start then idle: 64 MiB
/// RSS with glibc limited to two arenas, 70 MiB with mimalloc, 48 MiB with
/// jemalloc; `scripts/bench.sh scale --objects 3000 --cold-only --settle 20s`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run_cli())
}

async fn run_cli() -> Result<(), Box<dyn std::error::Error>> {
    let args = match Cli::parse().command {
        Command::Run(args) => *args,
        Command::EventPatterns(args) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&events::event_patterns(&args.parameter_prefixes, &args.pipe_name))?
            );
            return Ok(());
        }
    };
    telemetry::init(&args.log_level, args.log_format)?;
    let client = kube::Client::try_default().await?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let limits = RateLimits {
        ssm_write_per_second: NonZeroU32::new(args.ssm_write_rate),
        ssm_read_per_second: NonZeroU32::new(args.ssm_read_rate),
        dynamodb_per_second: NonZeroU32::new(args.dynamodb_rate),
    };
    let events = args.event_queue_url.map(|url| ConsumerSettings {
        visibility_timeout: args.event_visibility_timeout,
        ..ConsumerSettings::new(url)
    });
    // Signals are hooked before anything else so that none is missed.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        info!("shutdown requested: no more receives, finishing in-flight reconciles");
    }
    .boxed()
    .shared();
    let backend_ctx = BackendContext::new(sdk, limits, args.aws_max_attempts);
    let metrics = Arc::new(Metrics::for_backends(&backend_ctx));
    let probes = Arc::new(Probes::default());
    let listener = server::bind(args.http_addr).await.map_err(|e| format!("HTTP endpoint {}: {e}", args.http_addr))?;
    let mut server = tokio::spawn(server::serve(listener, metrics.clone(), probes.clone(), shutdown.clone()));

    let run = |stop: BoxFuture<'static, ()>| {
        let deps = Dependencies {
            client: client.clone(),
            settings: args.settings.clone(),
            backend_ctx: backend_ctx.clone(),
            events: events.clone(),
            metrics: metrics.clone(),
            probes: probes.clone(),
            workloads: args.workloads.clone(),
        };
        runtime::run(deps, stop)
    };
    let controller = async {
        if !args.leader_election {
            probes.lease_known.store(true, Ordering::Release);
            probes.leading.store(true, Ordering::Release);
            metrics.leader.set(1);
            run(shutdown.clone().boxed()).await;
            Ok(())
        } else {
            let election = Election {
                client: client.clone(),
                lease_name: args.lease_name,
                namespace: args.lease_namespace,
                identity: args.identity.unwrap_or_else(default_identity),
                lease_duration: args.lease_duration,
            };
            election.run(probes.clone(), metrics.clone(), shutdown.clone(), run).await
        }
    };
    // The endpoint failing is fatal: a pod whose probes go unanswered is
    // restarted anyway. Its normal end (on shutdown) is not a reason to stop:
    // the controller still finishes its reconciles and releases the Lease.
    let server_failed = async {
        match (&mut server).await {
            Ok(Ok(())) => std::future::pending::<String>().await,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        }
    };
    tokio::select! {
        result = controller => result?,
        error = server_failed => return Err(format!("HTTP endpoint failed: {error}").into()),
    }
    // The Lease is released by now: the next leader is already receiving.
    if let Some(events) = &events {
        events.abandoned.finish(events::sqs::ABANDONED_POLL_WAIT).await;
    }
    server.abort();
    info!("stopped");
    Ok(())
}

/// POD_NAME in a cluster (the chart sets it); else host name and process id.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}
