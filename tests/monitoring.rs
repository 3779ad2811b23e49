//! Monitoring shipped with the chart: the alert rules pass `promtool check
//! rules` and their unit tests (`promtool test rules`), the chart renders them
//! and the dashboard, and every metric the rules and the dashboard query is
//! exported on `/metrics` of a running controller.

mod support;

use std::{collections::BTreeSet, process::Command};

use serde_yaml::Value;
use support::{env, helm, process::Process, repo_root};

const RULES: &str = "charts/tenant-config-controller/files/prometheus-rules.yaml";
const DASHBOARD: &str = "charts/tenant-config-controller/files/grafana-dashboard.json";

fn promtool(args: &[&str]) {
    let out = Command::new(env("TCC_PROMTOOL")).args(args).current_dir(repo_root()).output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_are_valid_and_fire_when_they_should() {
    promtool(&["check", "rules", RULES]);
    promtool(&["test", "rules", "tests/prometheus/alerts-test.yaml"]);
}

/// Every expression the rules and the dashboard evaluate.
fn queries() -> Vec<String> {
    let rules: Value = serde_yaml::from_str(&std::fs::read_to_string(repo_root().join(RULES)).unwrap()).unwrap();
    let mut exprs: Vec<String> = rules["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().iter().map(|r| r["expr"].as_str().unwrap().to_string()))
        .collect();
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join(DASHBOARD)).unwrap()).expect("dashboard JSON");
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    exprs.extend(variables.iter().filter_map(|v| v["query"].as_str()).filter(|q| q.contains('(')).map(String::from));
    exprs
}

/// The metric families an expression names (`_total`, `_bucket`, `_sum`,
/// `_count` belong to their family).
fn families(expr: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut word = String::new();
    for c in expr.chars().chain([' ']) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
            continue;
        }
        if word.starts_with("tenant_config_") || word.starts_with("process_") {
            let family = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| word.strip_suffix(suffix))
                .unwrap_or(&word);
            found.insert(family.to_string());
        }
        word.clear();
    }
    found
}

#[tokio::test]
async fn every_queried_metric_is_exported() {
    env("KUBECONFIG");
    let controller = Process::spawn("monitoring", &["--leader-election", "false"], &[]);
    let body = support::eventually("the controller serves /metrics", || async {
        let (status, body) = controller.get("/metrics")?;
        (status == 200 && body.contains("tenant_config_leader 1")).then_some(body)
    })
    .await;
    let exported: BTreeSet<String> = body
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.split_whitespace().next().map(String::from))
        .collect();
    let queried: BTreeSet<String> = queries().iter().flat_map(|e| families(e)).collect();
    assert!(queried.len() >= 15, "the rules and dashboard query the controller's metrics: {queried:?}");
    let missing: Vec<&String> = queried.difference(&exported).collect();
    assert!(missing.is_empty(), "queried but not exported: {missing:?}\nexported: {exported:?}");
}

/// The chart ships the rules verbatim and the dashboard for Grafana's sidecar.
#[test]
fn the_chart_renders_the_rules_and_the_dashboard() {
    let (ok, stdout, stderr) = helm(&[
        "template",
        "tcc",
        "charts/tenant-config-controller",
        "--namespace",
        "tcc-system",
        "--kube-version",
        "1.37.2",
        "--set",
        "metrics.prometheusRule.enabled=true",
        "--set",
        "metrics.grafanaDashboard.enabled=true",
    ]);
    assert!(ok, "helm template: {stderr}");
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&stdout)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect();
    let rule = docs.iter().find(|d| d["kind"] == "PrometheusRule").expect("a PrometheusRule");
    let rules: Value = serde_yaml::from_str(&std::fs::read_to_string(repo_root().join(RULES)).unwrap()).unwrap();
    assert_eq!(rule["spec"]["groups"], rules["groups"], "the rules as tested");
    let dashboard = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["labels"]["grafana_dashboard"] == "1")
        .expect("a dashboard ConfigMap for the sidecar");
    let json = dashboard["data"]["tenant-config-controller.json"].as_str().unwrap();
    assert_eq!(json.trim_end(), std::fs::read_to_string(repo_root().join(DASHBOARD)).unwrap().trim_end());
    let (ok, stdout, _) = helm(&["template", "tcc", "charts/tenant-config-controller", "--kube-version", "1.37.2"]);
    assert!(ok && !stdout.contains("PrometheusRule") && !stdout.contains("grafana_dashboard"), "both are opt-in");
}
