//! The config service (DESIGN.md §11): applications read and watch their
//! TenantConfigs' projected configuration over gRPC
//! (`proto/tenantconfig/v1/config.proto`), the caller taken only from its
//! ServiceAccount token. Served by every replica from its own watches, with
//! server reflection and the standard health service so that `grpcurl` works
//! without the proto file.

pub mod auth;
pub mod client;
pub mod issuer_keys;
pub mod proto;
pub mod service;
pub mod tls;
pub mod view;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use tonic::transport::Server;
use tracing::info;

use self::{
    auth::Authenticator,
    proto::config_service_server::ConfigServiceServer,
    service::{ConfigApi, OpenWatches},
    view::View,
};

/// The flags of the config service.
#[derive(clap::Args, Clone, Debug)]
#[group(id = "config_api_settings")]
#[command(next_help_heading = "Config service (gRPC)")]
pub struct Settings {
    /// Address of the config service (gRPC); unset: not served.
    #[arg(long, env = "TENANT_CONFIG_CONFIG_API_ADDR")]
    pub config_api_addr: Option<SocketAddr>,
    /// PEM certificate (chain) of the config service.
    #[arg(long, env = "TENANT_CONFIG_CONFIG_API_TLS_CERT")]
    pub config_api_tls_cert: Option<PathBuf>,
    /// PEM private key of the config service.
    #[arg(long, env = "TENANT_CONFIG_CONFIG_API_TLS_KEY")]
    pub config_api_tls_key: Option<PathBuf>,
    /// The audience callers' ServiceAccount tokens must carry.
    #[arg(long, env = "TENANT_CONFIG_CONFIG_API_AUDIENCE", default_value = "tenantconfig.io")]
    pub config_api_audience: String,
    /// Open watches one tenant may hold at once (over: RESOURCE_EXHAUSTED).
    #[arg(long, env = "TENANT_CONFIG_CONFIG_API_MAX_WATCHES_PER_TENANT", default_value_t = 1000)]
    pub config_api_max_watches_per_tenant: usize,
    /// Serve plaintext (no TLS): tokens then cross the network in the clear.
    #[arg(long, env = "TENANT_CONFIG_CONFIG_API_INSECURE", default_value_t = false)]
    pub config_api_insecure: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "--config-api-addr needs --config-api-tls-cert and --config-api-tls-key, or --config-api-insecure for plaintext"
    )]
    NoTls,
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("config service address {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("config service: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("config service reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

impl Settings {
    /// The certificate to serve with (re-read when its files change), or
    /// none for an explicit `--config-api-insecure`.
    fn tls(&self) -> Result<Option<Arc<tls::ReloadingCert>>, Error> {
        match (&self.config_api_tls_cert, &self.config_api_tls_key, self.config_api_insecure) {
            (Some(cert), Some(key), _) => Ok(Some(tls::ReloadingCert::load(cert.clone(), key.clone())?)),
            (_, _, true) => Ok(None),
            _ => Err(Error::NoTls),
        }
    }
}

/// Serves the config service at `addr` until `shutdown`.
pub async fn serve(
    settings: Settings,
    addr: SocketAddr,
    client: kube::Client,
    labels: (String, String),
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let tls = settings.tls()?;
    let (view, keep_current) = View::start(&client);
    let auth =
        Arc::new(Authenticator::new(client, settings.config_api_audience.clone(), metrics.token_reviews.clone()));
    let api = Arc::new(ConfigApi {
        auth,
        view: view.clone(),
        tenant_label: labels.0,
        environment_label: labels.1,
        open_watches: OpenWatches::new(settings.config_api_max_watches_per_tenant, metrics.config_watches.clone()),
    });
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_not_serving::<ConfigServiceServer<Arc<ConfigApi>>>().await;
    let mut ready = view.ready.clone();
    let serving = async move {
        if ready.wait_for(|r| *r).await.is_ok() {
            health.set_serving::<ConfigServiceServer<Arc<ConfigApi>>>().await;
            info!("config service ready: its caches have listed");
        }
        std::future::pending::<()>().await
    };
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr, source })?;
    info!(%addr, tls = tls.is_some(), "serving the config service");
    let router = Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(ConfigServiceServer::new(api));
    let served = async move {
        match tls {
            Some(cert) => router.serve_with_incoming_shutdown(tls::incoming(listener, cert)?, shutdown).await,
            None => {
                let plain = plaintext_connections(listener);
                router.serve_with_incoming_shutdown(plain, shutdown).await
            }
        }
        .map_err(Error::from)
    };
    tokio::select! {
        result = served => result?,
        _ = keep_current => {}
        _ = serving => {}
    }
    Ok(())
}

/// The plaintext connections of `listener`.
fn plaintext_connections(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = Result<tokio::net::TcpStream, std::io::Error>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    })
}
