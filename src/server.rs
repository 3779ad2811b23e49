//! The HTTP endpoint (one port): `/metrics` (Prometheus text), `/healthz`
//! (the process serves), `/readyz` (lease state known and, when leading, the
//! watch caches synced).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, info};

use crate::telemetry::Metrics;

/// What `/readyz` answers from.
#[derive(Debug, Default)]
pub struct Probes {
    /// The reflector caches (ConfigStores, Namespaces, TenantConfigs) have listed once.
    pub caches_synced: AtomicBool,
    /// This process knows whether it leads (always true without election).
    pub lease_known: AtomicBool,
    /// This process is the active controller.
    pub leading: AtomicBool,
}

impl Probes {
    /// Ready: the lease state is known, and a leader has synced its caches. A
    /// standby is ready (it serves probes and waits); it reconciles nothing.
    pub fn ready(&self) -> bool {
        self.lease_known.load(Ordering::Acquire)
            && (!self.leading.load(Ordering::Acquire) || self.caches_synced.load(Ordering::Acquire))
    }
}

/// Binds `addr` and serves until `shutdown` resolves. Returns the bound address
/// through `bound` (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    probes: Arc<Probes>,
    bound: tokio::sync::oneshot::Sender<SocketAddr>,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    info!(address = %local, "serving /metrics, /healthz, /readyz");
    let _ = bound.send(local);
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
        probes.caches_synced.store(true, Ordering::Release);
        assert!(probes.ready());
        let metrics = Metrics::default();
        assert_eq!(respond("/readyz", &metrics, &probes).status(), StatusCode::OK);
        assert_eq!(respond("/nope", &metrics, &probes).status(), StatusCode::NOT_FOUND);
        let body = respond("/metrics", &metrics, &probes);
        assert_eq!(body.status(), StatusCode::OK);
    }
}
