//! `tenant-config-controller config get|watch NAME`: the config service's
//! client in the same binary, for a pod (or a shell) to read its
//! configuration with its own ServiceAccount token. Prints JSON, one line per
//! config (per update for `watch`).

use std::{path::PathBuf, time::Instant};

use tonic::{
    Request,
    transport::{Certificate, Channel, ClientTlsConfig},
};

use super::proto::{self, config_service_client::ConfigServiceClient};

/// Where a pod's projected token with the service's audience is mounted
/// (README "Config service": the pod spec).
pub const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/tenantconfig.io/token";

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
    /// The service, e.g. https://tenant-config-config-api.tenant-config-system:8443.
    #[arg(
        long,
        env = "TENANT_CONFIG_API_URL",
        global = true,
        default_value = "https://tenant-config-config-api.tenant-config-system.svc:8443"
    )]
    pub url: String,
    /// The ServiceAccount token to call with (re-read for each call: kubelet rotates it).
    #[arg(long, env = "TENANT_CONFIG_TOKEN_FILE", global = true, default_value = DEFAULT_TOKEN_FILE)]
    pub token_file: PathBuf,
    /// PEM CA bundle to verify the service's certificate with (https URLs).
    #[arg(long, env = "TENANT_CONFIG_API_CA", global = true)]
    pub ca_file: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Print one TenantConfig's configuration of the caller's namespace.
    Get { name: String },
    /// Print it, then each change as it happens (one JSON line each, with the delay since the previous).
    Watch { name: String },
    /// Print the names the caller may read.
    List,
}

pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut endpoint = Channel::from_shared(args.url.clone())?;
    if args.url.starts_with("https://") {
        let ca = args
            .ca_file
            .as_ref()
            .ok_or("an https URL needs --ca-file, the CA that signed the service's certificate")?;
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca)?));
        endpoint = endpoint.tls_config(tls)?;
    }
    let mut client = ConfigServiceClient::new(endpoint.connect().await?);
    let token = args.token_file.as_path();
    match args.command {
        Command::Get { name } => {
            let config = client.get_config(authorized(token, proto::GetConfigRequest { name })?).await?.into_inner();
            println!("{}", json(&config, None));
        }
        Command::List => {
            let names = client.list_configs(authorized(token, proto::ListConfigsRequest {})?).await?.into_inner().names;
            println!("{}", serde_json::json!({ "names": names }));
        }
        Command::Watch { name } => {
            let request = proto::WatchConfigRequest { name, digest: String::new() };
            let mut stream = client.watch_config(authorized(token, request)?).await?.into_inner();
            let mut last = Instant::now();
            while let Some(config) = stream.message().await? {
                println!("{}", json(&config, Some(last.elapsed().as_secs_f64())));
                last = Instant::now();
            }
        }
    }
    Ok(())
}

/// `message` with the token of `token_file` (re-read each time: the kubelet rotates it).
fn authorized<T>(token_file: &std::path::Path, message: T) -> Result<Request<T>, Box<dyn std::error::Error>> {
    let token =
        std::fs::read_to_string(token_file).map_err(|e| format!("reading the token {}: {e}", token_file.display()))?;
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {}", token.trim()).parse()?);
    Ok(request)
}

fn json(config: &proto::Config, seconds_since_last: Option<f64>) -> serde_json::Value {
    let data: std::collections::BTreeMap<_, _> = config.data.iter().collect();
    let mut out = serde_json::json!({
        "namespace": config.namespace, "name": config.name, "tenant": config.tenant,
        "digest": config.digest, "data": data,
        "updated": config.updated.as_ref().map(|t| t.seconds),
    });
    if let Some(seconds) = seconds_since_last {
        out["secondsSinceLast"] = serde_json::json!(seconds);
    }
    out
}
