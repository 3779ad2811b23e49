//! The HTTP endpoint (one port): `/metrics` (Prometheus text), `/healthz`
//! (the process serves), `/readyz` (lease state known and, when leading, the
//! watch caches synced).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::watch};
use tracing::{debug, info};

use crate::metrics::Metrics;

/// The watch caches readiness waits for.
#[derive(Clone, Copy, Debug)]
pub enum Cache {
    ConfigStores = 0,
    Namespaces = 1,
    TenantConfigs = 2,
}

/// What `/readyz` answers from, and what reconciles wait for before they
/// trust the caches.
#[derive(Debug)]
pub struct Probes {
    /// Which caches have listed once in this leadership term.
    listed: Mutex<[bool; 3]>,
    /// True once all of them have.
    synced: watch::Sender<bool>,
    /// This process knows whether it leads (always true without election).
    pub lease_known: AtomicBool,
    /// This process is the active controller.
    pub leading: AtomicBool,
}

impl Default for Probes {
    fn default() -> Self {
        Probes {
            listed: Mutex::default(),
            synced: watch::Sender::new(false),
            lease_known: AtomicBool::default(),
            leading: AtomicBool::default(),
        }
    }
}

impl Probes {
    /// Ready: the lease state is known, and a leader has synced its caches. A
    /// standby is ready (it serves probes and waits); it reconciles nothing.
    pub fn ready(&self) -> bool {
        self.lease_known.load(Ordering::Acquire) && (!self.leading.load(Ordering::Acquire) || *self.synced.borrow())
    }

    /// A cache completed a listing (call it after the listing is in the cache).
    pub fn listed(&self, cache: Cache) {
        let mut listed = self.listed.lock().unwrap();
        listed[cache as usize] = true;
        if listed.iter().all(|l| *l) && !*self.synced.borrow() {
            self.synced.send_replace(true);
            info!("caches synced");
        }
    }

    /// Follows whether every cache has listed.
    pub fn caches_synced(&self) -> watch::Receiver<bool> {
        self.synced.subscribe()
    }

    /// The caches are gone (the controller stopped): the next term lists anew.
    pub fn caches_dropped(&self) {
        *self.listed.lock().unwrap() = Default::default();
        self.synced.send_replace(false);
    }
}

/// Binds the HTTP endpoint: a port in use is an error at start, not a
/// process that runs without probes.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await?;
    info!(address = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    Ok(listener)
}

/// Serves on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    probes: Arc<Probes>,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => accepted?,
        };
        let (metrics, probes) = (metrics.clone(), probes.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let response = respond(request.uri().path(), &metrics, &probes);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            if let Err(e) =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await
            {
                debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
}

fn respond(path: &str, metrics: &Metrics, probes: &Probes) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", metrics.encode()),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" if probes.ready() => (StatusCode::OK, "text/plain", "ready\n".to_string()),
        "/readyz" => {
            (StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready: caches or lease state pending\n".into())
        }
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found; try /metrics, /healthz, /readyz\n".into()),
    };
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_lease_state_and_synced_caches_when_leading() {
        let probes = Probes::default();
        assert!(!probes.ready());
        probes.lease_known.store(true, Ordering::Release);
        assert!(probes.ready(), "a standby is ready");
        probes.leading.store(true, Ordering::Release);
        assert!(!probes.ready(), "a leader waits for its caches");
        probes.listed(Cache::ConfigStores);
        probes.listed(Cache::Namespaces);
        assert!(!probes.ready(), "every cache must have listed");
        probes.listed(Cache::TenantConfigs);
        assert!(probes.ready());
        assert!(*probes.caches_synced().borrow());
        let metrics = Metrics::default();
        assert_eq!(respond("/readyz", &metrics, &probes).status(), StatusCode::OK);
        assert_eq!(respond("/nope", &metrics, &probes).status(), StatusCode::NOT_FOUND);
        let body = respond("/metrics", &metrics, &probes);
        assert_eq!(body.status(), StatusCode::OK);
        probes.caches_dropped();
        assert!(!probes.ready(), "a new term lists anew");
    }
}
