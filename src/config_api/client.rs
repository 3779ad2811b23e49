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
    /// The name the service's certificate must carry, when the URL names it
    /// otherwise (e.g. a pod IP); default: the URL's host.
    #[arg(long, env = "TENANT_CONFIG_API_SERVER_NAME", global = true)]
    pub server_name: Option<String>,
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Print one TenantConfig's configuration of the caller's namespace.
    Get { name: String },
    /// Print it, then each change as it happens (one JSON line each, with the
    /// delay since the previous). A lost connection or a rotated token is
    /// followed by a new watch from the digest held: nothing is printed twice.
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
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca)?));
        if let Some(name) = &args.server_name {
            tls = tls.domain_name(name);
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    // Connected on first use and again after a loss (watch's retries).
    let mut client = ConfigServiceClient::new(endpoint.connect_lazy());
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
        Command::Watch { name } => watch(&mut client, token, name).await?,
    }
    Ok(())
}

/// Prints each new config of `name` until the service refuses for good.
async fn watch(
    client: &mut ConfigServiceClient<Channel>,
    token: &std::path::Path,
    name: String,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut held = String::new();
    let mut last = Instant::now();
    let mut failures = 0u32;
    loop {
        let request = proto::WatchConfigRequest { name: name.clone(), digest: held.clone() };
        let ended = match client.watch_config(authorized(token, request)?).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(config)) => {
                            failures = 0;
                            println!("{}", json(&config, Some(last.elapsed().as_secs_f64())));
                            last = Instant::now();
                            held = config.digest;
                        }
                        Ok(None) => break tonic::Status::unavailable("the service ended the watch"),
                        Err(status) => break status,
                    }
                }
            }
            Err(status) => status,
        };
        failures += 1;
        if !worth_retrying(&ended, failures) {
            return Err(ended.into());
        }
        let wait = std::time::Duration::from_millis(250 * 2u64.pow(failures.min(6)));
        eprintln!("watch ended ({}: {}); again in {wait:?}", ended.code(), ended.message());
        tokio::time::sleep(wait).await;
    }
}

/// Whether a watch's end may pass: the service restarting or unreachable, or
/// a token that expired (the kubelet will have written a new one; three
/// refusals in a row are final).
fn worth_retrying(status: &tonic::Status, failures: u32) -> bool {
    use tonic::Code;
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled | Code::ResourceExhausted => true,
        Code::Unauthenticated => failures < 3,
        _ => false,
    }
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
