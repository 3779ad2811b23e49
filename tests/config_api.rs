//! The config service (gRPC) against the real API server: real
//! ServiceAccount tokens from TokenRequest, validated by real TokenReviews;
//! the controller binary serving. Every path of the auth table, access by
//! ServiceAccount, a watch that sees two store changes in order, a watch cut
//! off when its namespace loses the tenant label or its pod is deleted.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::{eventually, process::Process, world::World};
use tenant_config_controller::config_api::proto::{
    GetConfigRequest, ListConfigsRequest, WatchConfigRequest, config_service_client::ConfigServiceClient,
};
use tonic::{Code, Request, transport::Channel};

const AUDIENCE: &str = "tenantconfig.io";

/// Tests take turns: each runs a controller that sees the whole cluster.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A token of ServiceAccount `ns/name` for `audiences`, optionally bound to a pod.
async fn token(w: &World, ns: &str, name: &str, audiences: &[&str], pod: Option<&Pod>) -> String {
    support::process::service_account_token(&w.client, ns, name, audiences, pod).await
}

/// A client of the config service at `addr`, once it answers.
async fn client_of(addr: &str) -> ConfigServiceClient<Channel> {
    let channel = eventually("the config service answers", || async {
        Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.ok()
    })
    .await;
    ConfigServiceClient::new(channel)
}

async fn service_account(w: &World, ns: &str, name: &str) {
    let sa: ServiceAccount = serde_json::from_value(json!({ "metadata": { "name": name } })).unwrap();
    Api::<ServiceAccount>::namespaced(w.client.clone(), ns).create(&PostParams::default(), &sa).await.unwrap();
}

fn with_token<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// How a watch ended (its status code; None for a clean end), if within a minute.
async fn ended_within_a_minute(
    watch: &mut tonic::Streaming<tenant_config_controller::config_api::proto::Config>,
) -> Option<Option<Code>> {
    let ending = async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), ending).await.ok()
}

async fn get(
    client: &mut ConfigServiceClient<Channel>,
    token: Option<&str>,
    name: &str,
) -> Result<(String, std::collections::HashMap<String, String>), Code> {
    client
        .get_config(with_token(GetConfigRequest { name: name.into() }, token))
        .await
        .map(|r| {
            let c = r.into_inner();
            (format!("{}/{}@{}", c.namespace, c.name, c.tenant), c.data)
        })
        .map_err(|s| s.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_service_serves_each_caller_its_own_namespace_only() {
    let _turn = SERIAL.lock().await;
    let mut w = World::with_queue("capi", 5, 30).await;
    w.standard_stores().await;
    let (tenant_a, tenant_b) = (w.tenant(0), w.tenant(1));
    let a = w.namespace("a", Some(&tenant_a)).await;
    let b = w.namespace("b", Some(&tenant_b)).await;
    let unlabelled = w.namespace("u", None).await;
    for (ns, sa) in [(&a, "reader"), (&a, "other"), (&b, "reader"), (&unlabelled, "reader")] {
        service_account(&w, ns, sa).await;
    }
    let db = w.tag("db");
    let spec = |value: &str| json!({ "defaultTags": [db], "entries": [{ "key": "provider", "value": value }] });
    w.tenant_config(&a, "payments", spec("stripe-a")).await;
    w.tenant_config(&b, "payments", spec("stripe-b")).await;
    let mut restricted = spec("secret-ish");
    restricted["access"] = json!({ "serviceAccounts": ["other"] });
    w.tenant_config(&a, "restricted", restricted).await;
    w.tenant_config(&unlabelled, "payments", spec("nobody")).await;

    let (controller, addr) = support::process::serving_config_api("capi", w.queue_url(), &[]);
    w.wait_ready_count(&a, 2).await;
    w.wait_ready_count(&b, 1).await;
    let mut client = client_of(&addr).await;

    let reader_a = token(&w, &a, "reader", &[AUDIENCE], None).await;
    let other_a = token(&w, &a, "other", &[AUDIENCE], None).await;
    let reader_b = token(&w, &b, "reader", &[AUDIENCE], None).await;
    let unlabelled_reader = token(&w, &unlabelled, "reader", &[AUDIENCE], None).await;
    let api_server_audience = token(&w, &a, "reader", &[], None).await;

    // The service lists before it answers.
    let own = eventually("ready", || async { get(&mut client.clone(), Some(&reader_a), "payments").await.ok() }).await;
    assert_eq!(own.0, format!("{a}/payments@{tenant_a}"));
    assert_eq!(own.1["provider"], "stripe-a");
    // Who is asking decides which namespace: B's reader asking for "payments" gets B's.
    let theirs = get(&mut client, Some(&reader_b), "payments").await.unwrap();
    assert_eq!((theirs.0, theirs.1["provider"].as_str()), (format!("{b}/payments@{tenant_b}"), "stripe-b"));
    // The auth table.
    assert_eq!(get(&mut client, None, "payments").await.unwrap_err(), Code::Unauthenticated, "no token");
    assert_eq!(get(&mut client, Some("not.a.token"), "payments").await.unwrap_err(), Code::Unauthenticated);
    assert_eq!(
        get(&mut client, Some(&api_server_audience), "payments").await.unwrap_err(),
        Code::Unauthenticated,
        "a token for another audience (the API server's)"
    );
    assert_eq!(get(&mut client, Some(&unlabelled_reader), "payments").await.unwrap_err(), Code::PermissionDenied);
    assert_eq!(get(&mut client, Some(&reader_a), "nope").await.unwrap_err(), Code::NotFound);
    assert_eq!(get(&mut client, Some(&reader_a), "restricted").await.unwrap_err(), Code::PermissionDenied);
    assert_eq!(get(&mut client, Some(&other_a), "restricted").await.unwrap().1["provider"], "secret-ish");
    let listed = client.list_configs(with_token(ListConfigsRequest {}, Some(&reader_a))).await.unwrap().into_inner();
    assert_eq!(listed.names, ["payments"], "only what the caller may read");
    // grpcurl, a third-party client, through reflection alone (no proto file).
    let grpcurl = |args: &[&str]| {
        let out =
            std::process::Command::new(support::env("TCC_GRPCURL")).arg("-plaintext").args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, services, stderr) = grpcurl(&[&addr, "list"]);
    assert!(ok, "grpcurl list: {stderr}");
    for service in ["tenantconfig.v1.ConfigService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"] {
        assert!(services.lines().any(|l| l == service), "{service} in {services}");
    }
    let health = r#"{"service":"tenantconfig.v1.ConfigService"}"#;
    let (ok, status, stderr) = grpcurl(&["-d", health, &addr, "grpc.health.v1.Health/Check"]);
    assert!(ok && status.contains("SERVING"), "health: {status}{stderr}");
    let bearer = format!("authorization: Bearer {reader_a}");
    let (ok, got, stderr) =
        grpcurl(&["-H", &bearer, "-d", r#"{"name":"payments"}"#, &addr, "tenantconfig.v1.ConfigService/GetConfig"]);
    assert!(ok, "grpcurl GetConfig: {stderr}");
    let got: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(got["data"]["provider"], "stripe-a");
    let (ok, _, stderr) = grpcurl(&["-d", r#"{"name":"payments"}"#, &addr, "tenantconfig.v1.ConfigService/GetConfig"]);
    assert!(!ok && stderr.contains("Unauthenticated"), "grpcurl without a token: {stderr}");

    // The client in the binary, as a pod runs it: the token from a file, JSON out.
    let token_file = std::env::temp_dir().join(support::unique("capi-token"));
    std::fs::write(&token_file, &reader_a).unwrap();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenant-config-controller"))
            .arg("config")
            .args(args)
            .args(["--url", &format!("http://{addr}"), "--token-file", token_file.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, stdout, stderr) = cli(&["get", "payments"]);
    assert!(ok, "config get: {stderr}");
    let printed: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        (printed["data"]["provider"].as_str(), printed["tenant"].as_str()),
        (Some("stripe-a"), Some(tenant_a.as_str()))
    );
    assert_eq!(cli(&["list"]).1.trim(), r#"{"names":["payments"]}"#);
    let (ok, _, stderr) = cli(&["get", "restricted"]);
    assert!(
        !ok && stderr.contains("PermissionDenied") || stderr.contains("Permission"),
        "config get restricted: {stderr}"
    );

    // A watch: the current config, then each store change in order.
    let mut watch = client
        .watch_config(with_token(
            WatchConfigRequest { name: "payments".into(), digest: String::new() },
            Some(&reader_a),
        ))
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.data["provider"], "stripe-a");
    // A watch that holds the current digest waits for a change.
    let mut quiet = client
        .watch_config(with_token(
            WatchConfigRequest { name: "payments".into(), digest: first.digest.clone() },
            Some(&reader_a),
        ))
        .await
        .unwrap()
        .into_inner();
    for value in ["one", "two"] {
        let written = unix_now();
        w.set_item_key(&tenant_a, "payments", "feature", Some(value)).await;
        let next = tokio::time::timeout(Duration::from_secs(30), watch.message()).await.unwrap().unwrap().unwrap();
        assert_eq!(next.data.get("feature").map(String::as_str), Some(value), "in order, none stale");
        let updated = next.updated.as_ref().map_or(0, |t| t.seconds as u64);
        assert!(updated >= written - 1, "updated ({updated}) is this content's projection, not an earlier one's");
        let held = tokio::time::timeout(Duration::from_secs(30), quiet.message()).await.unwrap().unwrap().unwrap();
        assert_eq!(held.data.get("feature").map(String::as_str), Some(value), "no first message for a held digest");
    }

    // The namespace loses its tenant label: the open watch ends, denied.
    let unlabel = json!({ "metadata": { "labels": { "tenantconfig.io/tenant": null } } });
    Api::<Namespace>::all(w.client.clone()).patch(&a, &PatchParams::default(), &Patch::Merge(&unlabel)).await.unwrap();
    let ended = ended_within_a_minute(&mut watch).await.expect("the watch ends within 60 s");
    assert_eq!(ended, Some(Code::PermissionDenied));
    let relabel = json!({ "metadata": { "labels": { "tenantconfig.io/tenant": tenant_a } } });
    Api::<Namespace>::all(w.client.clone()).patch(&a, &PatchParams::default(), &Patch::Merge(&relabel)).await.unwrap();

    // A pod's token: once the pod is deleted, its open watch is cut off.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "app" },
        "spec": { "serviceAccountName": "reader", "containers": [{ "name": "app", "image": "not-pulled" }] }
    }))
    .unwrap();
    let pods = Api::<Pod>::namespaced(w.client.clone(), &a);
    let pod = pods.create(&PostParams::default(), &pod).await.unwrap();
    let pod_token = token(&w, &a, "reader", &[AUDIENCE], Some(&pod)).await;
    let mut pod_watch = eventually("the relabelled namespace is served again", || async {
        let request = WatchConfigRequest { name: "payments".into(), digest: String::new() };
        client.clone().watch_config(with_token(request, Some(&pod_token))).await.ok()
    })
    .await
    .into_inner();
    assert!(pod_watch.message().await.unwrap().is_some());
    pods.delete("app", &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await.unwrap();
    let ended = ended_within_a_minute(&mut pod_watch).await.expect("the deleted pod's watch ends within 60 s");
    assert_eq!(ended, Some(Code::Unauthenticated));
    w.clean_up().await;
    drop(controller);
}

/// A test CA and a server certificate for 127.0.0.1 from it (openssl, as the
/// test stack's own certificates).
fn certificates(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=capi-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=config-api",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
    ]);
    (dir.join("ca.crt"), dir.join("server.crt"), dir.join("server.key"))
}

/// TLS with a test CA: a client that trusts it is served; a plaintext client
/// is not; a renewed certificate is presented without a restart; without a
/// certificate or --config-api-insecure the process refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_service_speaks_tls_with_its_certificate() {
    use tonic::transport::{Certificate, ClientTlsConfig};
    let _turn = SERIAL.lock().await;
    let mut w = World::new("capi-tls").await;
    w.standard_stores().await;
    let tenant = w.tenant(0);
    let ns = w.namespace("a", Some(&tenant)).await;
    service_account(&w, &ns, "reader").await;
    let db = w.tag("db");
    w.tenant_config(
        &ns,
        "payments",
        json!({ "defaultTags": [db], "entries": [{ "key": "provider", "value": "tls" }] }),
    )
    .await;
    let dir = std::env::temp_dir().join(support::unique("capi-tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = certificates(&dir);
    let addr = format!("127.0.0.1:{}", support::process::free_port());

    let mut refused = Process::spawn("capi-no-tls", &["--leader-election", "false", "--config-api-addr", &addr], &[]);
    assert!(!refused.wait_exit(Duration::from_secs(30)).success(), "no certificate, not insecure: refused");
    assert!(refused.logs().contains("--config-api-tls-cert"), "says why: {}", refused.logs());

    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let args = [
        "--leader-election",
        "false",
        "--config-api-addr",
        &addr,
        "--config-api-tls-cert",
        cert,
        "--config-api-tls-key",
        key,
    ];
    let controller = Process::spawn("capi-tls", &args, &[]);
    w.wait_ready_count(&ns, 1).await;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&ca).unwrap()))
        .domain_name("localhost");
    let channel = eventually("the config service answers over TLS", || async {
        Channel::from_shared(format!("https://{addr}")).unwrap().tls_config(tls.clone()).unwrap().connect().await.ok()
    })
    .await;
    let token = token(&w, &ns, "reader", &[AUDIENCE], None).await;
    let client = ConfigServiceClient::new(channel);
    let got = eventually("served", || async { get(&mut client.clone(), Some(&token), "payments").await.ok() }).await;
    assert_eq!(got.1["provider"], "tls");
    let plaintext = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await;
    if let Ok(channel) = plaintext {
        let answer = get(&mut ConfigServiceClient::new(channel), Some(&token), "payments").await;
        assert!(answer.is_err(), "a plaintext client is not served: {answer:?}");
    }

    // cert-manager renews the certificate (from another CA here, to tell them
    // apart): the files are replaced as the kubelet does (write, then rename);
    // new connections get the new certificate, the open one keeps working.
    let (new_ca, new_cert, new_key) = certificates(&dir.join("renewed"));
    for (from, to) in [(&new_cert, cert), (&new_key, key)] {
        let staged = format!("{to}.new");
        std::fs::copy(from, &staged).unwrap();
        std::fs::rename(&staged, to).unwrap();
    }
    let renewed = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&new_ca).unwrap()))
        .domain_name("localhost");
    let channel = eventually("a new connection is served with the renewed certificate", || async {
        Channel::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(renewed.clone())
            .unwrap()
            .connect()
            .await
            .ok()
    })
    .await;
    assert_eq!(
        get(&mut ConfigServiceClient::new(channel), Some(&token), "payments").await.unwrap().1["provider"],
        "tls"
    );
    let old_ca_only = Channel::from_shared(format!("https://{addr}")).unwrap().tls_config(tls.clone()).unwrap();
    assert!(old_ca_only.connect().await.is_err(), "the old certificate is no longer presented");
    assert!(get(&mut client.clone(), Some(&token), "payments").await.is_ok(), "the open connection keeps working");
    w.clean_up().await;
    drop(controller);
}

/// Reads need no leadership: of two replicas under leader election, the
/// standby serves the config service as the leader does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_replica_serves_reads() {
    let _turn = SERIAL.lock().await;
    let mut w = World::new("capi-standby").await;
    w.standard_stores().await;
    let tenant = w.tenant(0);
    let ns = w.namespace("a", Some(&tenant)).await;
    service_account(&w, &ns, "reader").await;
    let db = w.tag("db");
    let spec = json!({ "defaultTags": [db], "entries": [{ "key": "provider", "value": "standby" }] });
    w.tenant_config(&ns, "payments", spec).await;
    let lease = format!("{}-lease", w.id);
    let replica = |name: &str, addr: &str| {
        let args =
            ["--lease-name", &lease, "--lease-namespace", &ns, "--config-api-addr", addr, "--config-api-insecure"];
        Process::spawn(name, &args, &[])
    };
    let (first_addr, second_addr) = (
        format!("127.0.0.1:{}", support::process::free_port()),
        format!("127.0.0.1:{}", support::process::free_port()),
    );
    let first = replica("capi-first", &first_addr);
    w.wait_ready_count(&ns, 1).await;
    let second = replica("capi-second", &second_addr);
    let leading = |p: &Process| p.metric("tenant_config_leader") == Some(1.0);
    eventually("one leader, one standby", || async { (leading(&first) != leading(&second)).then_some(()) }).await;
    let token = token(&w, &ns, "reader", &[AUDIENCE], None).await;
    for (who, addr) in [("first", &first_addr), ("second", &second_addr)] {
        let got = eventually(&format!("the {who} replica serves"), || async {
            let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.ok()?;
            get(&mut ConfigServiceClient::new(channel), Some(&token), "payments").await.ok()
        })
        .await;
        assert_eq!(got.1["provider"], "standby", "{who}");
    }
    assert!(!leading(&second), "the second replica was the standby throughout");
    w.clean_up().await;
    drop((first, second));
}

/// A ServiceAccount token for `ns/name` expiring at `exp` (Unix seconds),
/// signed with the test API server's own service-account key — as the API
/// server signs them, but with an expiry TokenRequest does not allow (at
/// least ten minutes ahead). The API server validates it in TokenReviews like
/// any other.
async fn token_expiring_at(w: &World, ns: &str, name: &str, exp: u64) -> String {
    let sa = Api::<ServiceAccount>::namespaced(w.client.clone(), ns).get(name).await.unwrap();
    let claims = json!({
        "iss": "https://kubernetes.default.svc.cluster.local",
        "aud": [AUDIENCE],
        "sub": format!("system:serviceaccount:{ns}:{name}"),
        "iat": unix_now().min(exp) - 600, "nbf": unix_now().min(exp) - 600, "exp": exp,
        "kubernetes.io": { "namespace": ns, "serviceaccount": { "name": name, "uid": sa.metadata.uid.unwrap() } }
    });
    signed_rs256(&claims, std::path::Path::new(&support::env("TCC_SA_SIGNING_KEY")))
}

/// A JWT of `claims` signed (RS256) with the private key at `key` (openssl).
fn signed_rs256(claims: &serde_json::Value, key: &std::path::Path) -> String {
    use base64::Engine;
    use std::io::Write;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let signed = format!("{}.{}", b64(br#"{"alg":"RS256","typ":"JWT"}"#), b64(claims.to_string().as_bytes()));
    let mut openssl = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    openssl.stdin.take().unwrap().write_all(signed.as_bytes()).unwrap();
    let out = openssl.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl dgst -sign");
    format!("{signed}.{}", b64(&out.stdout))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// What one caller or tenant can hold is bounded: an expired token is
/// refused, a watch ends when its token expires, a token is reviewed once
/// however often it is used, and a tenant cannot hold more open watches than
/// its cap (another tenant still can).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_hold_no_more_than_their_token_and_tenant_allow() {
    let _turn = SERIAL.lock().await;
    let mut w = World::with_queue("capi-bounds", 5, 30).await;
    w.standard_stores().await;
    let (tenant_a, tenant_b) = (w.tenant(0), w.tenant(1));
    let a = w.namespace("a", Some(&tenant_a)).await;
    let b = w.namespace("b", Some(&tenant_b)).await;
    service_account(&w, &a, "reader").await;
    service_account(&w, &b, "reader").await;
    let db = w.tag("db");
    let spec = json!({ "defaultTags": [db], "entries": [{ "key": "provider", "value": "bounded" }] });
    w.tenant_config(&a, "payments", spec.clone()).await;
    w.tenant_config(&b, "payments", spec).await;
    let cap = ["--config-api-max-watches-per-tenant", "3"];
    let (controller, addr) = support::process::serving_config_api("capi-bounds", w.queue_url(), &cap);
    w.wait_ready_count(&a, 1).await;
    w.wait_ready_count(&b, 1).await;
    let mut client = client_of(&addr).await;

    // Minted tokens are real ones: a valid one is served, an expired one
    // (past the API server's minute of leeway) is not.
    let minted = token_expiring_at(&w, &a, "reader", unix_now() + 3600).await;
    eventually("a minted token is served", || async { get(&mut client.clone(), Some(&minted), "payments").await.ok() })
        .await;
    let expired = token_expiring_at(&w, &a, "reader", unix_now() - 120).await;
    assert_eq!(get(&mut client, Some(&expired), "payments").await.unwrap_err(), Code::Unauthenticated, "expired");

    // A watch ends when its token expires, without waiting for a review.
    let short = token_expiring_at(&w, &a, "reader", unix_now() + 15).await;
    let request = WatchConfigRequest { name: "payments".into(), digest: String::new() };
    let mut watch = client.watch_config(with_token(request.clone(), Some(&short))).await.unwrap().into_inner();
    assert!(watch.message().await.unwrap().is_some(), "served while valid");
    let ended = ended_within_a_minute(&mut watch).await.expect("the watch ends when its token expires");
    assert_eq!(ended, Some(Code::Unauthenticated));

    // One TokenReview per token, however many calls and rechecks use it.
    let reviews = || controller.metric_sum("tenant_config_config_api_token_reviews_total", &[]);
    let before = reviews();
    let token_a = token(&w, &a, "reader", &[AUDIENCE], None).await;
    // Twenty at once: they wait for one review, not one each.
    let reads = (0..20).map(|_| {
        let mut client = client.clone();
        let token_a = token_a.clone();
        async move { get(&mut client, Some(&token_a), "payments").await }
    });
    for read in futures::future::join_all(reads).await {
        read.unwrap();
    }
    let mut watches = Vec::new();
    for _ in 0..3 {
        watches.push(client.watch_config(with_token(request.clone(), Some(&token_a))).await.unwrap().into_inner());
    }
    w.set_item_key(&tenant_a, "payments", "feature", Some("on")).await;
    for watch in &mut watches {
        assert!(watch.message().await.unwrap().is_some(), "the first message");
        let next = tokio::time::timeout(Duration::from_secs(30), watch.message()).await.unwrap().unwrap().unwrap();
        assert_eq!(next.data.get("feature").map(String::as_str), Some("on"));
    }
    // Past three of the watches' own rechecks of the token (every 10 s).
    tokio::time::sleep(Duration::from_secs(32)).await;
    assert_eq!(reviews() - before, 1.0, "one TokenReview for 20 concurrent reads, 3 watches and their rechecks");

    // The tenant's cap: a fourth watch is refused, another tenant's is not.
    let refused = client.watch_config(with_token(request.clone(), Some(&token_a))).await;
    assert_eq!(refused.map(drop).unwrap_err().code(), Code::ResourceExhausted, "tenant A holds 3 watches");
    let token_b = token(&w, &b, "reader", &[AUDIENCE], None).await;
    let mut other = client.watch_config(with_token(request.clone(), Some(&token_b))).await.unwrap().into_inner();
    assert!(other.message().await.unwrap().is_some(), "tenant B is served");
    assert_eq!(controller.metric("tenant_config_config_api_watches"), Some(4.0));
    // A closed watch gives its place back.
    drop(watches.pop());
    eventually("a closed watch frees its place", || async {
        client.clone().watch_config(with_token(request.clone(), Some(&token_a))).await.ok()
    })
    .await;

    // Tenant A floods the service with tokens while B's new pod makes its
    // first call: forged ones (any namespace claimed) cost no TokenReview at
    // all, A's genuine ones take turns with B's in the review budget (50/s):
    // B waits for one turn, not for the 1,000 (20 s) ahead of it.
    let rejected = || controller.metric_sum("tenant_config_config_api_token_reviews_total", &["rejected"]);
    let rejected_before = rejected();
    let forged: Vec<String> = (0..500)
        .map(|i| {
            let sub = if i % 2 == 0 { &b } else { &a };
            forged_token(&format!("system:serviceaccount:{sub}:reader"), i)
        })
        .collect();
    let mut genuine = Vec::new();
    for chunk in (0..500).collect::<Vec<_>>().chunks(50) {
        let minted = futures::future::join_all(chunk.iter().map(|_| token(&w, &a, "reader", &[AUDIENCE], None))).await;
        genuine.extend(minted);
    }
    let flood: Vec<_> = forged
        .iter()
        .chain(&genuine)
        .map(|t| {
            let mut client = client.clone();
            let t = t.clone();
            tokio::spawn(async move { get(&mut client, Some(&t), "payments").await.map(drop) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fresh_b = token(&w, &b, "reader", &[AUDIENCE], None).await;
    let asked = std::time::Instant::now();
    get(&mut client, Some(&fresh_b), "payments").await.expect("B is served during A's flood");
    let waited = asked.elapsed();
    let outcomes = futures::future::join_all(flood).await;
    let (served, refused) = outcomes.iter().fold((0, 0), |(s, r), o| match o {
        Ok(Ok(())) => (s + 1, r),
        _ => (s, r + 1),
    });
    assert_eq!((served, refused), (500, 500), "A's genuine tokens served, its forged ones refused");
    assert_eq!(rejected() - rejected_before, 0.0, "no TokenReview spent on a forged token");
    assert!(waited < Duration::from_secs(5), "B waited {waited:?} behind A's 500 reviews (10 s at 50/s)");
    w.clean_up().await;
    drop(controller);
}

/// A token shaped like the API server's (RS256, its issuer and audience) but
/// signed with a key of the caller's own.
fn forged_token(sub: &str, n: usize) -> String {
    static KEY: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| {
        let path = std::env::temp_dir().join(support::unique("forger.key"));
        let out = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl genpkey");
        path
    });
    let claims = json!({ "iss": "https://kubernetes.default.svc.cluster.local", "aud": [AUDIENCE], "sub": sub,
        "exp": unix_now() + 3600, "iat": unix_now(), "jti": n });
    // A real signature, by the wrong key: what a forger can make.
    signed_rs256(&claims, key)
}
