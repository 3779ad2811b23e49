//! The controller binary as a separate process, as it runs in a pod: its HTTP
//! endpoint, signals and log file.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::unique;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One controller process of the built binary.
pub struct Process {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Process {
    /// Starts `tenant-config-controller run` with its HTTP endpoint on a free
    /// loopback port, `args`, and `env` on top of this process's environment.
    pub fn spawn(name: &str, args: &[&str], env: &[(&str, &str)]) -> Process {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("{}.log", unique(name)));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenant-config-controller"));
        cmd.arg("run").args(["--http-addr", &format!("127.0.0.1:{port}")]).args(args);
        cmd.envs(env.iter().copied());
        let child = cmd.stdout(file.try_clone().unwrap()).stderr(file).stdin(Stdio::null()).spawn().expect("spawn");
        Process { child, port, log }
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let status = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Some((status, body))
    }

    /// The value of one metric line (name with labels exactly as exported).
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics")?;
        body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// The sum of every series of metric `name` whose labels contain all of
    /// `labels` (e.g. `operation="PutParameter"`); 0 when none, NaN when the
    /// endpoint does not answer.
    pub fn metric_sum(&self, name: &str, labels: &[&str]) -> f64 {
        let Some((_, body)) = self.get("/metrics") else { return f64::NAN };
        let prefix = format!("{name}{{");
        body.lines()
            .filter(|l| l.starts_with(&prefix) && labels.iter().all(|label| l.contains(label)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([&format!("-{signal}"), &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "controller did not exit within {within:?}; log: {}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A token of ServiceAccount `namespace/name` from TokenRequest, valid one
/// hour, for `audiences` (none: the API server's own), bound to `pod` if given.
pub async fn service_account_token(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    audiences: &[&str],
    pod: Option<&k8s_openapi::api::core::v1::Pod>,
) -> String {
    use k8s_openapi::api::{
        authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
        core::v1::ServiceAccount,
    };
    let bound = pod.map(|p| BoundObjectReference {
        kind: Some("Pod".into()),
        api_version: Some("v1".into()),
        name: p.metadata.name.clone(),
        uid: p.metadata.uid.clone(),
    });
    let audiences = (!audiences.is_empty()).then(|| audiences.iter().map(|a| a.to_string()).collect());
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences,
            expiration_seconds: Some(3600),
            bound_object_ref: bound,
            ..Default::default()
        }),
        ..Default::default()
    };
    kube::Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(name, &kube::api::PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{name}: {e}"))
        .status
        .and_then(|s| s.token)
        .expect("TokenRequest returns a token")
}

/// A kubeconfig file for the local API server that authenticates as the
/// ServiceAccount `namespace/name` (a TokenRequest token, valid one hour).
pub async fn kubeconfig_as_service_account(client: &kube::Client, namespace: &str, name: &str) -> PathBuf {
    let token = service_account_token(client, namespace, name, &[], None).await;
    let admin_kubeconfig = std::fs::read_to_string(super::env("KUBECONFIG")).unwrap();
    let path = std::env::temp_dir().join(format!("{}.kubeconfig", unique(name)));
    std::fs::write(&path, admin_kubeconfig.replace(&super::env("TCC_ADMIN_TOKEN"), &token)).unwrap();
    path
}

/// A controller (no leader election) that consumes `queue_url` and serves
/// the config service in plaintext on a free loopback port; and that address.
pub fn serving_config_api(name: &str, queue_url: &str, extra: &[&str]) -> (Process, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let args = ["--leader-election", "false", "--event-queue-url", queue_url, "--config-api-addr", &addr];
    let process = Process::spawn(name, &[&args[..], &["--config-api-insecure"], extra].concat(), &[]);
    (process, addr)
}

/// A client that uses the given kubeconfig file.
pub async fn client_from(kubeconfig: &std::path::Path) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
    kube::Client::try_from(config).unwrap()
}

/// CPU seconds (user + system, all threads) a process has used so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let ticks: Vec<f64> = rest.split_whitespace().skip(11).take(2).filter_map(|f| f.parse().ok()).collect();
    ticks.iter().sum::<f64>() / 100.0 // USER_HZ is 100 on Linux
}

/// CPU used by each process of the stack, for "where did the time go".
#[derive(Clone)]
pub struct CpuSnapshot(Vec<(String, f64)>);

impl CpuSnapshot {
    /// The local stack's servers, the controller (when it runs in its own
    /// process) and this process, named `this_process`.
    pub fn take(controller: Option<u32>, this_process: &str) -> Self {
        let dir = super::env("TCC_STATE_DIR");
        let mut all: Vec<(String, f64)> = ["moto", "kube-apiserver", "etcd"]
            .iter()
            .map(|name| {
                let pid = std::fs::read_to_string(format!("{dir}/{name}.pid")).ok().and_then(|p| p.trim().parse().ok());
                (name.to_string(), pid.map(cpu_seconds).unwrap_or(f64::NAN))
            })
            .collect();
        if let Some(pid) = controller {
            all.push(("controller".into(), cpu_seconds(pid)));
        }
        all.push((this_process.into(), cpu_seconds(std::process::id())));
        CpuSnapshot(all)
    }

    /// "moto 41.0 s, kube-apiserver 12.3 s, ..." used since `earlier`.
    pub fn since(&self, earlier: &CpuSnapshot, wall: Duration) -> String {
        let parts: Vec<String> = self
            .0
            .iter()
            .zip(&earlier.0)
            .map(|((name, now), (_, then))| format!("{name} {:.0} s", now - then))
            .collect();
        let total: f64 = self.0.iter().zip(&earlier.0).map(|((_, now), (_, then))| now - then).sum();
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        format!(
            "{} (of {:.0} core-s: {:.0}% busy)",
            parts.join(", "),
            wall.as_secs_f64() * cores,
            100.0 * total / (wall.as_secs_f64() * cores)
        )
    }
}
