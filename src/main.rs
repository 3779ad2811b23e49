//! `tenant-config-controller run`: the controller process.

use std::{num::NonZeroU32, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use std::sync::Arc;

use tenant_config_controller::{
    events::{self, sqs::ConsumerSettings},
    reconcile::controller::{self, Settings},
    store::{BackendContext, DEFAULT_MAX_ATTEMPTS, RateLimits},
    telemetry::Metrics,
};
use tracing_subscriber::EnvFilter;

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
    Run(RunArgs),
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
    /// Namespace label whose value is the tenant. Namespaces without it get nothing written.
    #[arg(long, env = "TENANT_CONFIG_TENANT_LABEL", default_value = "tenantconfig.io/tenant")]
    tenant_label: String,
    /// Namespace label whose value adds an environment dimension to store keys.
    #[arg(long, env = "TENANT_CONFIG_ENVIRONMENT_LABEL", default_value = "tenantconfig.io/environment")]
    environment_label: String,
    /// Every object is re-reconciled this often (drift repair, lost events). E.g. 10m, 30s.
    #[arg(long, env = "TENANT_CONFIG_RESYNC_INTERVAL", default_value = "10m", value_parser = humantime::parse_duration)]
    resync_interval: Duration,
    /// Reconciles running at once.
    #[arg(long, env = "TENANT_CONFIG_CONCURRENCY", default_value_t = 16)]
    concurrency: u16,
    /// Project secure entries into Secrets (the ServiceAccount then needs to write Secrets).
    #[arg(long, env = "TENANT_CONFIG_SECURE_PROJECTION", default_value_t = false)]
    secure_projection: bool,
    /// SSM PutParameter/DeleteParameters calls per second, process-wide (0 = unlimited).
    #[arg(long, env = "TENANT_CONFIG_SSM_WRITE_RATE", default_value_t = 3)]
    ssm_write_rate: u32,
    /// SSM read calls per second, process-wide (0 = unlimited).
    #[arg(long, env = "TENANT_CONFIG_SSM_READ_RATE", default_value_t = 40)]
    ssm_read_rate: u32,
    /// DynamoDB calls per second, process-wide (0 = unlimited).
    #[arg(long, env = "TENANT_CONFIG_DYNAMODB_RATE", default_value_t = 0)]
    dynamodb_rate: u32,
    /// AWS SDK attempts per call (adaptive retry) before a throttle or 5xx is reported.
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
    /// A cached read of an included shared path is refreshed after this long even without an event.
    #[arg(long, env = "TENANT_CONFIG_SHARED_CACHE_MAX_AGE", default_value = "5m", value_parser = humantime::parse_duration)]
    shared_cache_max_age: Duration,
    /// Log format.
    #[arg(long, env = "TENANT_CONFIG_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log filter, RUST_LOG syntax (e.g. `info,tenant_config_controller=debug`).
    #[arg(long, env = "TENANT_CONFIG_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = match Cli::parse().command {
        Command::Run(args) => args,
        Command::EventPatterns(args) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&events::event_patterns(&args.parameter_prefixes, &args.pipe_name))?
            );
            return Ok(());
        }
    };
    let filter = EnvFilter::try_new(&args.log_level)?;
    match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).init(),
    }
    let client = kube::Client::try_default().await?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let limits = RateLimits {
        ssm_write_per_second: NonZeroU32::new(args.ssm_write_rate),
        ssm_read_per_second: NonZeroU32::new(args.ssm_read_rate),
        dynamodb_per_second: NonZeroU32::new(args.dynamodb_rate),
    };
    let settings = Settings {
        tenant_label: args.tenant_label,
        environment_label: args.environment_label,
        resync_interval: args.resync_interval,
        concurrency: args.concurrency,
        secure_projection: args.secure_projection,
        shared_cache_max_age: args.shared_cache_max_age,
    };
    let events = args.event_queue_url.map(|url| ConsumerSettings {
        visibility_timeout: args.event_visibility_timeout,
        ..ConsumerSettings::new(url)
    });
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown requested; finishing in-flight reconciles");
    };
    let backend_ctx = BackendContext::new(sdk, limits, args.aws_max_attempts);
    controller::run(client, settings, backend_ctx, events, Arc::new(Metrics::default()), shutdown).await;
    Ok(())
}
