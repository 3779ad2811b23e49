//! The controller process around [`super::run`]: logging, clients, signals,
//! the HTTP endpoint, leader election, and a clean stop.

use std::{
    net::SocketAddr,
    num::NonZeroU32,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use futures::{FutureExt, future::BoxFuture};
use tracing::info;

use super::Dependencies;
use crate::{
    events::{self, sqs::ConsumerSettings},
    leader::{Election, Shutdown},
    metrics::Metrics,
    reconcile::Settings,
    server::{self, Probes},
    store::{BackendContext, DEFAULT_MAX_ATTEMPTS, RateLimits},
    telemetry::{self, LogFormat},
    workloads,
};

/// The flags of `tenant-config-controller run`.
#[derive(clap::Args)]
pub struct Args {
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
    /// How long a received event stays hidden while its objects reconcile; one still not handled
    /// at 80% of this is hidden again, up to 10 times, then left for redelivery. Keep it under the
    /// queue's retention, above a reconcile's duration.
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

/// Runs the controller process until SIGTERM or Ctrl-C, then stops cleanly:
/// in-flight reconciles finish, the Lease is released, the event poll under
/// way is drained.
pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    telemetry::init(&args.log_level, args.log_format)?;
    // Signals are hooked before anything else so that none is missed.
    let shutdown = shutdown_signal()?;
    let client = kube::Client::try_default().await?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let limits = RateLimits {
        ssm_write_per_second: NonZeroU32::new(args.ssm_write_rate),
        ssm_read_per_second: NonZeroU32::new(args.ssm_read_rate),
        dynamodb_per_second: NonZeroU32::new(args.dynamodb_rate),
    };
    let backend_ctx = BackendContext::new(sdk, limits, args.aws_max_attempts);
    let deps = Dependencies {
        client,
        settings: args.settings.clone(),
        events: args.event_queue_url.clone().map(|url| ConsumerSettings {
            visibility_timeout: args.event_visibility_timeout,
            ..ConsumerSettings::new(url)
        }),
        metrics: Arc::new(Metrics::for_backends(&backend_ctx)),
        backend_ctx,
        probes: Arc::new(Probes::default()),
        workloads: args.workloads.clone(),
    };
    let listener = server::bind(args.http_addr).await.map_err(|e| format!("HTTP endpoint {}: {e}", args.http_addr))?;
    let mut server = tokio::spawn(server::serve(listener, deps.metrics.clone(), deps.probes.clone(), shutdown.clone()));
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
    let events = deps.events.clone();
    tokio::select! {
        result = lead_and_run(&args, deps, shutdown) => result?,
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

/// Resolves on SIGTERM or Ctrl-C.
fn shutdown_signal() -> std::io::Result<Shutdown> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        info!("shutdown requested: no more receives, finishing in-flight reconciles");
    }
    .boxed()
    .shared())
}

/// Runs the controller until `shutdown`: at once without leader election,
/// else during each term this replica holds the Lease.
async fn lead_and_run(args: &Args, deps: Dependencies, shutdown: Shutdown) -> Result<(), Box<dyn std::error::Error>> {
    let (probes, metrics, client) = (deps.probes.clone(), deps.metrics.clone(), deps.client.clone());
    let run = |stop: BoxFuture<'static, ()>| super::run(deps.clone(), stop);
    if !args.leader_election {
        probes.lease_known.store(true, Ordering::Release);
        probes.leading.store(true, Ordering::Release);
        metrics.leader.set(1);
        run(shutdown.boxed()).await;
        return Ok(());
    }
    let election = Election {
        client,
        lease_name: args.lease_name.clone(),
        namespace: args.lease_namespace.clone(),
        identity: args.identity.clone().unwrap_or_else(default_identity),
        lease_duration: args.lease_duration,
    };
    Ok(election.run(probes, metrics, shutdown, run).await?)
}

/// POD_NAME in a cluster (the chart sets it); else host name and process id.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}
