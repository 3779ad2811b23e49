//! The controller process around [`super::run`]: logging, clients, signals,
//! the HTTP endpoint, leader election, and a clean stop.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use futures::{FutureExt, future::BoxFuture};
use tracing::info;

use super::Dependencies;
use crate::{
    config_api,
    events::{self, sqs::ConsumerSettings},
    leader::{Election, Shutdown},
    metrics::Metrics,
    reconcile::Settings,
    server::{self, Probes},
    store::{BackendContext, DEFAULT_MAX_ATTEMPTS, RateLimits, dynamodb, parameter_store, registry},
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
    #[command(flatten)]
    config_api: config_api::Settings,
    /// SSM PutParameter/DeleteParameters calls per second, process-wide (0 = unlimited;
    /// default 3, AWS's own). The same as `--rate-limit ssm-write=N`.
    #[arg(long, env = "TENANT_CONFIG_SSM_WRITE_RATE")]
    ssm_write_rate: Option<u32>,
    /// SSM read calls per second, process-wide (0 = unlimited; default 40, AWS's own).
    /// The same as `--rate-limit ssm-read=N`.
    #[arg(long, env = "TENANT_CONFIG_SSM_READ_RATE")]
    ssm_read_rate: Option<u32>,
    /// DynamoDB calls per second, process-wide (0 = unlimited, the default). The same as
    /// `--rate-limit dynamodb=N`.
    #[arg(long, env = "TENANT_CONFIG_DYNAMODB_RATE")]
    dynamodb_rate: Option<u32>,
    /// Calls per second of one rate family, process-wide, as FAMILY=N (0 = unlimited).
    /// Repeatable, comma-separated in the variable. Families: ssm-write, ssm-read, dynamodb.
    #[arg(long = "rate-limit", env = "TENANT_CONFIG_RATE_LIMITS", value_delimiter = ',', value_parser = parse_rate)]
    rate_limits: Vec<(String, u32)>,
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
    let limits = rate_limits(&args)?;
    let client = kube::Client::try_default().await?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
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
    // The config service serves on every replica, leader or not; its
    // failure is fatal as the endpoint's is.
    let config_api_failed = async {
        let Some(addr) = args.config_api.config_api_addr else { return std::future::pending::<String>().await };
        let labels = (args.settings.tenant_label.clone(), args.settings.environment_label.clone());
        let serving = config_api::serve(
            args.config_api.clone(),
            addr,
            deps.client.clone(),
            labels,
            deps.metrics.clone(),
            shutdown.clone(),
        );
        match serving.await {
            Ok(()) => std::future::pending::<String>().await,
            Err(e) => e.to_string(),
        }
    };
    let events = deps.events.clone();
    tokio::select! {
        result = lead_and_run(&args, deps.clone(), shutdown.clone()) => result?,
        error = server_failed => return Err(format!("HTTP endpoint failed: {error}").into()),
        error = config_api_failed => return Err(error.into()),
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

/// The rate limits: every backend's defaults, then the named flags, then
/// `--rate-limit`. An unknown family is an error, not a silent no-op.
fn rate_limits(args: &Args) -> Result<RateLimits, String> {
    let named = [
        (parameter_store::WRITES.name, args.ssm_write_rate),
        (parameter_store::READS.name, args.ssm_read_rate),
        (dynamodb::CALLS.name, args.dynamodb_rate),
    ];
    let settings = named.iter().filter_map(|(family, rate)| Some((family.to_string(), (*rate)?)));
    let mut limits = RateLimits::default();
    for (family, per_second) in settings.chain(args.rate_limits.iter().cloned()) {
        if !registry::rate_families().any(|f| f.name == family) {
            let known: Vec<_> = registry::rate_families().map(|f| f.name).collect();
            return Err(format!("unknown rate family {family:?} (known: {})", known.join(", ")));
        }
        limits = limits.with(&family, per_second);
    }
    Ok(limits)
}

/// `FAMILY=N`.
fn parse_rate(setting: &str) -> Result<(String, u32), String> {
    let (family, rate) = setting.split_once('=').ok_or("expected FAMILY=N, e.g. ssm-write=3")?;
    let rate = rate.trim().parse().map_err(|e| format!("{setting}: {e}"))?;
    Ok((family.trim().to_string(), rate))
}

/// POD_NAME in a cluster (the chart sets it); else host name and process id.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn the_flags_form_a_valid_command() {
        // Two flattened groups of the same name fail only at start otherwise.
        <Command as clap::CommandFactory>::command().debug_assert();
    }

    fn limits(flags: &[&str]) -> Result<RateLimits, String> {
        let command =
            Command::try_parse_from(std::iter::once("run").chain(flags.iter().copied())).map_err(|e| e.to_string())?;
        rate_limits(&command.args)
    }

    #[test]
    fn rate_limits_start_at_the_backends_defaults_and_flags_override_them() {
        let defaults = limits(&[]).unwrap();
        assert_eq!(defaults, RateLimits::default());
        let set =
            limits(&["--ssm-write-rate", "0", "--rate-limit", "dynamodb=50", "--rate-limit", "ssm-read=7"]).unwrap();
        assert_eq!(set.get("ssm-write"), None, "0 lifts the limit");
        assert_eq!((set.get("dynamodb"), set.get("ssm-read")), (NonZeroU32::new(50), NonZeroU32::new(7)));
        let later_wins = limits(&["--ssm-read-rate", "10", "--rate-limit", "ssm-read=20"]).unwrap();
        assert_eq!(later_wins.get("ssm-read"), NonZeroU32::new(20), "--rate-limit comes after the named flags");
    }

    #[test]
    fn an_unknown_family_or_a_malformed_setting_is_an_error() {
        let unknown = limits(&["--rate-limit", "ssm-wirte=3"]).unwrap_err();
        assert!(unknown.contains("unknown rate family \"ssm-wirte\"") && unknown.contains("ssm-write"), "{unknown}");
        assert!(limits(&["--rate-limit", "ssm-write"]).unwrap_err().contains("FAMILY=N"));
        assert!(limits(&["--rate-limit", "ssm-write=fast"]).is_err());
    }
}
