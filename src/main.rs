//! `tenant-config-controller`: parses the command line and runs it.

use clap::{Parser, Subcommand};
use tenant_config_controller::{
    config_api, events,
    runtime::{migrate, process},
};

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
    Run(Box<process::Args>),
    /// Print the EventBridge event patterns the event queue's rules must use, as JSON.
    EventPatterns(PatternArgs),
    /// Move Parameter Store data of namespaces without an environment from
    /// `{pathPrefix}/{tenant}/{configType}/…` to `{pathPrefix}/{tenant}/_/{configType}/…`
    /// (the layout of builds without this command). A dry run unless --apply; run it with the
    /// controller stopped.
    MigratePaths(migrate::Args),
    /// Read (get, watch, list) configuration from the config service with this pod's
    /// ServiceAccount token, as JSON lines.
    Config(config_api::client::Args),
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

/// jemalloc instead of glibc's malloc: with the caches of thousands of objects
/// glibc's arenas kept freed memory (3,000 objects, cold start then idle: 64 MiB
/// RSS with glibc limited to two arenas, 70 MiB with mimalloc, 48 MiB with
/// jemalloc; `scripts/bench.sh scale --objects 3000 --cold-only --settle 20s`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its start: a background thread hands pages
/// freed for a second back to the kernel (by default they stay resident until
/// later allocations happen to purge them, and an idle controller has none):
/// 3,000 objects, idle after a cold start, 28 → 23 MiB anonymous memory
/// (BENCHMARKS.md, "Memory"). `_RJEM_MALLOC_CONF` in the environment overrides.
#[unsafe(no_mangle)]
#[allow(non_upper_case_globals)]
static _rjem_malloc_conf: &[u8; 60] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run_cli())
}

async fn run_cli() -> Result<(), Box<dyn std::error::Error>> {
    match Cli::parse().command {
        Command::EventPatterns(args) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&events::event_patterns(&args.parameter_prefixes, &args.pipe_name))?
            );
            Ok(())
        }
        Command::Run(args) => process::run(*args).await,
        Command::MigratePaths(args) => migrate::run(args).await,
        Command::Config(args) => config_api::client::run(args).await,
    }
}
