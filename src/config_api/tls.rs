//! TLS for the config service with its certificate re-read when the files
//! change: cert-manager renews the Secret, the kubelet updates the mounted
//! files, and the next handshake presents the new certificate — no restart,
//! no dropped watches. A pair that does not parse (caught mid-update) leaves
//! the one in use in place until a good pair is there.

use std::{
    fmt,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use futures::Stream;
use rustls::{
    ServerConfig,
    crypto::aws_lc_rs,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tracing::{info, warn};

/// How long a client has to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The certificate and key files, and the pair last read from them.
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Loaded>,
}

struct Loaded {
    stamps: (Option<SystemTime>, Option<SystemTime>),
    key: Arc<CertifiedKey>,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert").field("cert", &self.cert).field("key", &self.key).finish()
    }
}

impl ReloadingCert {
    /// Reads the pair now: a service that cannot start with it does not start.
    pub fn load(cert: PathBuf, key: PathBuf) -> Result<Arc<Self>, TlsError> {
        let stamps = (modified(&cert), modified(&key));
        let loaded = certified_key(&cert, &key)?;
        Ok(Arc::new(ReloadingCert { cert, key, current: RwLock::new(Loaded { stamps, key: loaded }) }))
    }

    /// The pair to present, read again first if either file changed.
    fn current(&self) -> Arc<CertifiedKey> {
        let stamps = (modified(&self.cert), modified(&self.key));
        {
            let loaded = self.current.read().expect("certificate lock");
            if loaded.stamps == stamps {
                return loaded.key.clone();
            }
        }
        let mut loaded = self.current.write().expect("certificate lock");
        match certified_key(&self.cert, &self.key) {
            Ok(key) => {
                info!(cert = %self.cert.display(), "config service certificate reloaded");
                *loaded = Loaded { stamps, key };
            }
            Err(e) => warn!(error = %e, "config service certificate changed but does not load; keeping the one in use"),
        }
        loaded.key.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn modified(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn certified_key(cert: &PathBuf, key: &PathBuf) -> Result<Arc<CertifiedKey>, TlsError> {
    let read_error =
        |path: &PathBuf, e: &dyn fmt::Display| TlsError::Read { path: path.clone(), message: e.to_string() };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| read_error(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_error(cert, &e))?;
    if chain.is_empty() {
        return Err(read_error(cert, &"no certificate in the file"));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| read_error(key, &e))?;
    let signing = aws_lc_rs::default_provider().key_provider.load_private_key(private)?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// The accepted connections of `listener`, each after its TLS handshake
/// (HTTP/2 by ALPN), handshakes running apart so that a slow client delays
/// only itself.
pub fn incoming(
    listener: TcpListener,
    cert: Arc<ReloadingCert>,
) -> Result<impl Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "config service: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let (acceptor, handed) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = handed.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "config service: TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "config service: TLS handshake timed out"),
                }
            });
        }
    });
    Ok(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }))
}
