//! The AWS template (examples/aws/tenant-config.yaml): cfn-lint passes, its
//! EventBridge patterns are the controller's own (`event-patterns`), and the
//! controller role grants exactly the calls the controller makes.

mod support;

use std::{collections::BTreeSet, process::Command};

use serde_yaml::{Value, value::TaggedValue};
use support::{env, repo_root};

const TEMPLATE: &str = "examples/aws/tenant-config.yaml";

fn template() -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(repo_root().join(TEMPLATE)).unwrap()).unwrap()
}

/// Resolves `!Sub "...${Param}..."` with the parameters' defaults; other tags stay.
fn substitute(value: &Value, defaults: &Value) -> Value {
    match value {
        Value::Tagged(tagged) if tagged.tag == "Sub" && tagged.value.is_string() => {
            let mut s = tagged.value.as_str().unwrap().to_string();
            for (name, parameter) in defaults.as_mapping().unwrap() {
                if let Some(default) = parameter["Default"].as_str() {
                    s = s.replace(&format!("${{{}}}", name.as_str().unwrap()), default);
                }
            }
            Value::String(s)
        }
        Value::Tagged(tagged) => {
            Value::Tagged(Box::new(TaggedValue { tag: tagged.tag.clone(), value: substitute(&tagged.value, defaults) }))
        }
        Value::Mapping(m) => Value::Mapping(m.iter().map(|(k, v)| (k.clone(), substitute(v, defaults))).collect()),
        Value::Sequence(s) => Value::Sequence(s.iter().map(|v| substitute(v, defaults)).collect()),
        other => other.clone(),
    }
}

#[test]
fn cfn_lint_passes() {
    let out = Command::new(env("CFN_LINT")).arg(repo_root().join(TEMPLATE)).output().expect("cfn-lint runs");
    assert!(
        out.status.success(),
        "cfn-lint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rules_use_the_controllers_event_patterns() {
    let t = template();
    let parameters = &t["Parameters"];
    let default = |p: &str| parameters[p]["Default"].as_str().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_tenant-config-controller"))
        .args(["event-patterns", "--pipe-name", &default("PipeName")])
        .args(["--parameter-prefix", &default("TenantPathPrefix"), "--parameter-prefix", &default("SharedPathPrefix")])
        .output()
        .unwrap();
    assert!(out.status.success());
    let code: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (rule, pattern) in [("ParameterStoreRule", "parameter-store"), ("DynamoDbRule", "dynamodb")] {
        let in_template = substitute(&t["Resources"][rule]["Properties"]["EventPattern"], parameters);
        let in_template: serde_json::Value = serde_json::to_value(&in_template).unwrap();
        assert_eq!(in_template, code[pattern], "{rule} must equal `event-patterns` {pattern}");
    }
}

#[test]
fn controller_role_grants_exactly_the_calls_the_controller_makes() {
    let t = template();
    let policy = &t["Resources"]["ControllerRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"];
    let mut actions = BTreeSet::new();
    for statement in policy.as_sequence().unwrap() {
        // The KMS statement sits inside !If [HasKmsKey, statement, NoValue].
        let statement = match statement {
            Value::Tagged(t) => t.value[1].clone(),
            s => s.clone(),
        };
        assert_eq!(statement["Effect"].as_str(), Some("Allow"));
        match &statement["Action"] {
            Value::String(a) => {
                actions.insert(a.clone());
            }
            Value::Sequence(list) => actions.extend(list.iter().map(|a| a.as_str().unwrap().to_string())),
            other => panic!("unexpected Action {other:?}"),
        }
    }
    // Every AWS operation in src/ (store backends and the event consumer).
    let expected: BTreeSet<String> = [
        "dynamodb:GetItem",
        "dynamodb:Query",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "ssm:GetParametersByPath",
        "ssm:PutParameter",
        "ssm:DeleteParameters",
        "ssm:AddTagsToResource",
        "ssm:DescribeParameters",
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "kms:Encrypt",
        "kms:Decrypt",
        "kms:GenerateDataKey",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(actions, expected);
    // And those operations are the ones the code calls.
    let mut called = BTreeSet::new();
    for file in ["src/store/dynamodb.rs", "src/store/parameter_store.rs", "src/events/sqs.rs"] {
        let source = std::fs::read_to_string(repo_root().join(file)).unwrap();
        for (method, action) in [
            (".get_item()", "dynamodb:GetItem"),
            (".query()", "dynamodb:Query"),
            (".update_item()", "dynamodb:UpdateItem"),
            (".delete_item()", "dynamodb:DeleteItem"),
            (".put_item()", "dynamodb:PutItem"),
            (".get_parameters_by_path()", "ssm:GetParametersByPath"),
            (".put_parameter()", "ssm:PutParameter"),
            (".delete_parameters()", "ssm:DeleteParameters"),
            (".delete_parameter()", "ssm:DeleteParameter"),
            (".add_tags_to_resource()", "ssm:AddTagsToResource"),
            (".describe_parameters()", "ssm:DescribeParameters"),
            (".get_parameter()", "ssm:GetParameter"),
            (".receive_message()", "sqs:ReceiveMessage"),
            (".delete_message_batch()", "sqs:DeleteMessage"),
            (".change_message_visibility", "sqs:ChangeMessageVisibility"),
        ] {
            if source.contains(method) {
                called.insert(action.to_string());
            }
        }
    }
    let granted_non_kms: BTreeSet<String> = actions.into_iter().filter(|a| !a.starts_with("kms:")).collect();
    assert_eq!(granted_non_kms, called, "grants follow the calls in src/");
}

/// Tenant scoping in IAM: table items only in `TENANT#` partitions, KMS only
/// through SSM and only for parameters of the controller's paths (encryption
/// writes under the tenant prefix; reads there and under the shared prefix).
#[test]
fn controller_role_is_scoped_to_tenant_partitions_and_its_parameter_paths() {
    let t = template();
    let statements = t["Resources"]["ControllerRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|s| match s {
            Value::Tagged(t) => t.value[1].clone(),
            s => s.clone(),
        })
        .collect::<Vec<_>>();
    let by_sid = |sid: &str| statements.iter().find(|s| s["Sid"].as_str() == Some(sid)).unwrap().clone();
    let items = by_sid("TableItems");
    let leading = &items["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"];
    assert_eq!(leading[0].as_str(), Some("TENANT#*"));
    let context = |sid: &str| -> Vec<String> {
        let statement = substitute(&by_sid(sid), &t["Parameters"]);
        let via = statement["Condition"]["StringEquals"]["kms:ViaService"].as_str().unwrap_or_default().to_string();
        assert!(via.starts_with("ssm."), "{sid}: via SSM only, not {via:?}");
        let arns = &statement["Condition"]["StringLike"]["kms:EncryptionContext:PARAMETER_ARN"];
        arns.as_sequence().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect()
    };
    let written = context("SecureStringsWritten");
    assert_eq!(written.len(), 1);
    assert!(written[0].ends_with(":parameter/tenant-config/*"), "{written:?}");
    let read = context("SecureStringsRead");
    assert!(read.iter().any(|a| a.ends_with(":parameter/tenant-config-shared/*")), "{read:?}");
    assert_eq!(by_sid("SecureStringsRead")["Action"].as_str(), Some("kms:Decrypt"));
}

/// The Pipe's events travel on a bus of its own whose policy denies PutEvents
/// to every principal but the Pipe's role; the Pipe may put events only there,
/// and the DynamoDB rule listens only there (a "Pipe <name>" event forged on
/// the default bus matches nothing: tests/events_e2e.rs sends one).
#[test]
fn only_the_pipe_can_put_events_on_the_bus_the_dynamodb_rule_listens_to() {
    let t = template();
    let resources = &t["Resources"];
    let tag = |v: &Value| match v {
        Value::Tagged(t) => (t.tag.to_string(), t.value.clone()),
        other => panic!("an intrinsic function, not {other:?}"),
    };
    let bus = &resources["PipeEventBus"];
    assert_eq!(bus["Type"].as_str(), Some("AWS::Events::EventBus"));
    let bus_arn = substitute(&bus["Properties"]["Policy"]["Statement"][0]["Resource"], &t["Parameters"]);
    let bus_arn = bus_arn.as_str().unwrap().to_string();
    assert!(bus_arn.ends_with(":event-bus/tenant-config-dynamodb-events"), "{bus_arn}");
    let statements = bus["Properties"]["Policy"]["Statement"].as_sequence().unwrap();
    assert_eq!(statements.len(), 1, "nothing but the denial");
    let deny = &statements[0];
    assert_eq!(deny["Effect"].as_str(), Some("Deny"));
    assert_eq!(deny["Principal"].as_str(), Some("*"));
    assert_eq!(deny["Action"].as_str(), Some("events:PutEvents"));
    let except = &deny["Condition"]["ArnNotEquals"]["aws:PrincipalArn"];
    assert_eq!(tag(except), ("!GetAtt".to_string(), Value::String("PipeRole.Arn".into())));

    let pipe = &resources["Pipe"]["Properties"];
    assert_eq!(tag(&pipe["Target"]), ("!GetAtt".to_string(), Value::String("PipeEventBus.Arn".into())));
    let rule = &resources["DynamoDbRule"]["Properties"];
    assert_eq!(tag(&rule["EventBusName"]), ("!Ref".to_string(), Value::String("PipeEventBus".into())));
    let pipe_grants = resources["PipeRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"].clone();
    let put = pipe_grants.as_sequence().unwrap().iter().find(|s| s["Action"].as_str() == Some("events:PutEvents"));
    let resource = substitute(&put.expect("the Pipe puts events")["Resource"], &t["Parameters"]);
    assert_eq!(resource.as_str(), Some(bus_arn.as_str()), "the Pipe puts events only on its bus");
}
