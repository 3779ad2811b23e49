//! A fault-injecting HTTP proxy in front of moto (DESIGN.md §9): moto never
//! throttles or fails, AWS does. Requests are matched by operation (the
//! `X-Amz-Target` header of the JSON protocols, e.g. `AmazonSSM.PutParameter`:
//! a rule names `PutParameter`, a whole service as `AmazonSSM.*`, or `*`) and
//! answered with a ThrottlingException (HTTP 400), an HTTP 500 or a dropped
//! connection — either instead of forwarding or after forwarding (the write is
//! applied, its answer lost) — a chosen number of times or with a probability;
//! everything else is forwarded.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// HTTP 400 `ThrottlingException`, as AWS answers when rate limits are hit.
    Throttle,
    /// HTTP 500 `InternalServerError`.
    ServerError,
    /// The connection is closed without an answer, as when the endpoint is unreachable.
    Unreachable,
    /// The request is forwarded and applied, then its answer is lost: the
    /// caller gets an HTTP 500 `InternalServerError` for a write that happened.
    AppliedThenServerError,
    /// The request is forwarded and applied, then the connection is closed
    /// before the answer: the caller cannot tell whether the write happened.
    AppliedThenDropped,
    /// The request is forwarded after this delay and answered normally: a slow store.
    Slow(std::time::Duration),
}

impl Fault {
    /// Whether the request still reaches the upstream.
    fn forwards(self) -> bool {
        matches!(self, Fault::AppliedThenServerError | Fault::AppliedThenDropped | Fault::Slow(_))
    }

    /// Whether the upstream's answer is replaced by the fault's.
    fn loses_answer(self) -> bool {
        matches!(self, Fault::AppliedThenServerError | Fault::AppliedThenDropped)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Times {
    /// The next N matching requests.
    Next(u32),
    /// Every matching request, until the rule is cleared.
    Always,
    /// Each matching request with this probability (0.0–1.0).
    Probability(f64),
}

#[derive(Debug, Clone)]
struct Rule {
    /// Operation name (`PutParameter`), service (`AmazonSSM.*`) or `*` for every operation.
    operation: String,
    fault: Fault,
    times: Times,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    injected: u64,
    forwarded: u64,
    /// Every request seen, by `X-Amz-Target`.
    seen: std::collections::BTreeMap<String, u64>,
    rng: u64,
}

impl Rule {
    fn matches(&self, target: &str) -> bool {
        let operation = target.rsplit('.').next().unwrap_or_default();
        match self.operation.strip_suffix('*') {
            Some("") => true,
            Some(service) => target.starts_with(service),
            None => self.operation == operation,
        }
    }
}

/// A running proxy; dropped, it stops serving.
pub struct FaultProxy {
    pub url: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy on a free 127.0.0.1 port in front of `upstream` (e.g. moto's URL).
    pub async fn start(upstream: &str) -> FaultProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr: SocketAddr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State { rng: 0x9E37_79B9_7F4A_7C15, ..Default::default() }));
        let upstream: hyper::Uri = upstream.parse().expect("upstream URL");
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (state, client, upstream) = (shared.clone(), client.clone(), upstream.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(req, state.clone(), client.clone(), upstream.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FaultProxy { url: format!("http://{addr}"), state, task }
    }

    /// Injects `fault` into requests of `operation` (`*` for all).
    pub fn inject(&self, operation: &str, fault: Fault, times: Times) {
        self.state.lock().unwrap().rules.push(Rule { operation: operation.into(), fault, times });
    }

    /// Removes every rule: from now on everything is forwarded.
    pub fn clear(&self) {
        self.state.lock().unwrap().rules.clear();
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.state.lock().unwrap().injected
    }

    /// Requests forwarded to the upstream so far.
    pub fn forwarded(&self) -> u64 {
        self.state.lock().unwrap().forwarded
    }

    /// Requests seen so far (answered or faulted) whose target matches `pattern`
    /// (same syntax as [`FaultProxy::inject`]).
    pub fn seen(&self, pattern: &str) -> u64 {
        let rule = Rule { operation: pattern.into(), fault: Fault::Throttle, times: Times::Always };
        self.state.lock().unwrap().seen.iter().filter(|(t, _)| rule.matches(t)).map(|(_, n)| n).sum()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `X-Amz-Target: AmazonSSM.PutParameter`.
fn target_of(req: &Request<Incoming>) -> String {
    req.headers().get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

/// Decides, under the lock, whether this request gets a fault.
fn pick_fault(state: &Mutex<State>, target: &str) -> Option<Fault> {
    let mut guard = state.lock().unwrap();
    let s = &mut *guard;
    *s.seen.entry(target.to_string()).or_default() += 1;
    // The first matching rule that fires wins; each probability rule rolls on
    // its own, so several fault kinds can share one operation.
    let mut fault = None;
    for rule in s.rules.iter_mut().filter(|r| r.matches(target)) {
        let fires = match &mut rule.times {
            Times::Next(0) => false,
            Times::Next(n) => {
                *n -= 1;
                true
            }
            Times::Always => true,
            Times::Probability(p) => {
                // xorshift: deterministic per proxy, no extra dependency.
                s.rng ^= s.rng << 13;
                s.rng ^= s.rng >> 7;
                s.rng ^= s.rng << 17;
                ((s.rng % 10_000) as f64 / 10_000.0) < *p
            }
        };
        if fires {
            fault = Some(rule.fault);
            break;
        }
    }
    if fault.is_some() {
        s.injected += 1;
    }
    fault
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    client: Client<HttpConnector, Full<Bytes>>,
    upstream: hyper::Uri,
) -> Result<Response<Full<Bytes>>, Box<dyn std::error::Error + Send + Sync>> {
    let target = target_of(&req);
    let fault = pick_fault(&state, &target);
    match fault {
        Some(fault) if !fault.forwards() => return fault_response(fault),
        Some(Fault::Slow(delay)) => tokio::time::sleep(delay).await,
        _ => {}
    }
    state.lock().unwrap().forwarded += 1;
    let (mut parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    parts.uri = format!("{}{}", upstream.to_string().trim_end_matches('/'), path).parse().unwrap();
    let response = match client.request(Request::from_parts(parts, Full::new(body))).await {
        Ok(r) => r,
        Err(e) => {
            return Ok(Response::builder().status(502).body(Full::new(Bytes::from(format!("proxy: {e}")))).unwrap());
        }
    };
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    if let Some(fault) = fault.filter(|f| f.loses_answer()) {
        // The upstream has applied the request; its answer goes nowhere.
        return fault_response(fault);
    }
    Ok(Response::from_parts(parts, Full::new(body)))
}

/// The answer a fault gives; an `Err` makes hyper close the connection unanswered.
fn fault_response(fault: Fault) -> Result<Response<Full<Bytes>>, Box<dyn std::error::Error + Send + Sync>> {
    let (status, code, message) = match fault {
        Fault::Throttle => (400, "ThrottlingException", "Rate exceeded"),
        Fault::ServerError | Fault::AppliedThenServerError => (500, "InternalServerError", "injected server error"),
        Fault::Unreachable | Fault::AppliedThenDropped => return Err("injected: connection dropped".into()),
        Fault::Slow(_) => unreachable!("a slow request is answered by the upstream"),
    };
    let body = format!(r#"{{"__type":"{code}","message":"{message}"}}"#);
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amzn-errortype", code)
        .body(Full::new(Bytes::from(body)))
        .unwrap())
}
