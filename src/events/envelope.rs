//! Store-change events as the SQS queue delivers them (DESIGN.md §6). Pure.
//!
//! Three shapes are accepted: an EventBridge `Parameter Store Change` envelope,
//! an EventBridge envelope around a DynamoDB stream record (a Pipe to a bus),
//! and a bare DynamoDB stream record (a Pipe straight to SQS). Only what names
//! the changed key is read: the images in a stream record are ignored, because
//! events are hints and the reconcile re-reads the store.
//!
//! [`crate::store::change::locate`] then maps the changed key onto the
//! ConfigStores: a tenant's `(store, location)` or a shared parameter path.

use serde_json::{Map, Value};

use crate::{
    api::paths,
    store::change::{ItemEventName, StoreChange},
};

/// Larger bodies are refused unread. EventBridge events are at most 256 KiB,
/// and only a few hundred bytes of them matter here.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// SSM names are at most 2048 characters including the ARN-style prefix.
const MAX_NAME_LEN: usize = 2048;
/// DynamoDB key attributes are at most 2048 bytes (partition) / 1024 (sort).
const MAX_KEY_LEN: usize = 2048;

pub const SSM_SOURCE: &str = "aws.ssm";
pub const SSM_DETAIL_TYPE: &str = "Parameter Store Change";
pub const DYNAMODB_EVENT_SOURCE: &str = "aws:dynamodb";
pub const DYNAMODB_PIPE_DETAIL_TYPE: &str = "Event from aws:dynamodb";

/// One parsed message.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// EventBridge event id or stream record eventID, for logs (traces a
    /// message back to the change that caused it).
    pub id: Option<String>,
    /// What changed in a store; `None` for a well-formed EventBridge event of
    /// another kind (another source or detail-type reaching the queue through
    /// a broad rule): it concerns no object, so it is deleted and counted,
    /// not left for the dead-letter queue.
    pub change: Option<StoreChange>,
}

/// Why a message is not a store-change event. Such messages are never deleted:
/// the queue's redrive policy moves them to its dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("body of {0} bytes exceeds the {MAX_BODY_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("body is not JSON: {0}")]
    NotJson(String),
    #[error("body is not a JSON object")]
    NotAnObject,
    #[error("not a store-change event (source {event_source:?}, detail-type {detail_type:?})")]
    UnknownSource { event_source: String, detail_type: String },
    #[error("field {0} is missing")]
    Missing(&'static str),
    #[error("field {0} has the wrong type")]
    WrongType(&'static str),
    #[error("field {field} is invalid: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl Malformed {
    /// Low-cardinality label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Malformed::TooLarge(_) => "too_large",
            Malformed::NotJson(_) | Malformed::NotAnObject => "not_json_object",
            Malformed::UnknownSource { .. } => "unknown_source",
            Malformed::Missing(_) | Malformed::WrongType(_) => "wrong_shape",
            Malformed::Invalid { .. } => "invalid_value",
        }
    }
}

/// Parses one message body.
pub fn parse(body: &str) -> Result<Envelope, Malformed> {
    if body.len() > MAX_BODY_BYTES {
        return Err(Malformed::TooLarge(body.len()));
    }
    let value: Value = serde_json::from_str(body).map_err(|e| Malformed::NotJson(e.to_string()))?;
    let object = value.as_object().ok_or(Malformed::NotAnObject)?;
    if let Some(message) = sns_message(object)? {
        // An SNS topic between the rule and the queue wraps the event once.
        let inner: Value = serde_json::from_str(message).map_err(|e| Malformed::NotJson(e.to_string()))?;
        let inner = inner.as_object().ok_or(Malformed::NotAnObject)?;
        return parse_object(inner);
    }
    parse_object(object)
}

fn parse_object(object: &Map<String, Value>) -> Result<Envelope, Malformed> {
    if object.contains_key("detail-type") || object.contains_key("detail") {
        parse_eventbridge(object)
    } else if object.contains_key("eventSource") {
        parse_stream_record(object, "eventID")
    } else {
        Err(Malformed::UnknownSource { event_source: String::new(), detail_type: String::new() })
    }
}

/// The `Message` of an SNS notification (`Type: Notification` with a topic),
/// as SNS delivers to SQS without raw message delivery.
fn sns_message(object: &Map<String, Value>) -> Result<Option<&str>, Malformed> {
    if optional_str(object, "Type", "Type")? != Some("Notification") || !object.contains_key("TopicArn") {
        return Ok(None);
    }
    required_str(object, "Message", "Message").map(Some)
}

fn parse_eventbridge(object: &Map<String, Value>) -> Result<Envelope, Malformed> {
    let source = optional_str(object, "source", "source")?.unwrap_or_default();
    let detail_type = required_str(object, "detail-type", "detail-type")?;
    let detail = object.get("detail").ok_or(Malformed::Missing("detail"))?;
    let detail = detail.as_object().ok_or(Malformed::WrongType("detail"))?;
    let id = optional_str(object, "id", "id")?.map(str::to_string);
    if source == SSM_SOURCE && detail_type == SSM_DETAIL_TYPE {
        let name = parameter_name(required_str(detail, "name", "detail.name")?);
        let operation = required_str(detail, "operation", "detail.operation")?;
        check_parameter_name(&name)?;
        if operation.is_empty() {
            return Err(Malformed::Invalid { field: "detail.operation", reason: "empty".into() });
        }
        let change = StoreChange::Parameter { name: name.into_owned(), operation: operation.into() };
        return Ok(Envelope { id, change: Some(change) });
    }
    if detail.get("eventSource").and_then(Value::as_str) == Some(DYNAMODB_EVENT_SOURCE) {
        let mut envelope = parse_stream_record(detail, "detail.eventID")?;
        envelope.id = id.or(envelope.id);
        return Ok(envelope);
    }
    if is_complete_eventbridge_event(object, source) {
        return Ok(Envelope { id, change: None });
    }
    Err(Malformed::UnknownSource { event_source: truncated(source), detail_type: truncated(detail_type) })
}

/// Every field EventBridge itself always sets (`account` aside: the local
/// emulator omits it): such a body is an event, only not one of ours.
fn is_complete_eventbridge_event(object: &Map<String, Value>, source: &str) -> bool {
    let string = |key| object.get(key).and_then(Value::as_str).is_some_and(|v| !v.is_empty());
    !source.is_empty() && string("id") && string("time") && object.get("resources").is_some_and(Value::is_array)
}

/// `detail.name` is a name, or (in some producers' events) the parameter's ARN
/// `arn:PARTITION:ssm:REGION:ACCOUNT:parameter/NAME`; a hierarchical name's
/// leading `/` is not repeated in its ARN.
fn parameter_name(name: &str) -> std::borrow::Cow<'_, str> {
    let resource = name.strip_prefix("arn:").and_then(|rest| {
        let mut parts = rest.splitn(5, ':');
        let (_partition, service, _region, _account) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        (service == "ssm").then_some(())?;
        parts.next()?.strip_prefix("parameter/")
    });
    match resource {
        Some(path) if path.contains('/') => format!("/{path}").into(),
        Some(plain) => plain.into(),
        None => name.into(),
    }
}

fn parse_stream_record(record: &Map<String, Value>, id_field: &'static str) -> Result<Envelope, Malformed> {
    let event_source = required_str(record, "eventSource", "eventSource")?;
    if event_source != DYNAMODB_EVENT_SOURCE {
        return Err(Malformed::UnknownSource { event_source: truncated(event_source), detail_type: String::new() });
    }
    let id = optional_str(record, "eventID", id_field)?.map(str::to_string);
    let event_name = match required_str(record, "eventName", "eventName")? {
        "INSERT" => ItemEventName::Insert,
        "MODIFY" => ItemEventName::Modify,
        "REMOVE" => ItemEventName::Remove,
        other => {
            return Err(Malformed::Invalid {
                field: "eventName",
                reason: format!("{:?} is not INSERT, MODIFY or REMOVE", truncated(other)),
            });
        }
    };
    // A stream record names its table in the stream ARN; a record that Kinesis
    // Data Streams for DynamoDB delivers names it in `tableName`.
    let table = match optional_str(record, "eventSourceARN", "eventSourceARN")?.and_then(table_from_stream_arn) {
        Some(table) => Some(table),
        None => optional_str(record, "tableName", "tableName")?.map(checked_table_name).transpose()?,
    };
    let dynamodb = record.get("dynamodb").ok_or(Malformed::Missing("dynamodb"))?;
    let dynamodb = dynamodb.as_object().ok_or(Malformed::WrongType("dynamodb"))?;
    let keys = dynamodb.get("Keys").ok_or(Malformed::Missing("dynamodb.Keys"))?;
    let keys = keys.as_object().ok_or(Malformed::WrongType("dynamodb.Keys"))?;
    if keys.is_empty() || keys.len() > 2 {
        return Err(Malformed::Invalid { field: "dynamodb.Keys", reason: format!("{} attributes", keys.len()) });
    }
    let mut string_keys = Vec::new();
    for (attribute, typed) in keys {
        let typed = typed.as_object().ok_or(Malformed::WrongType("dynamodb.Keys"))?;
        // Only string keys can be ours; a number or binary key is simply not.
        if let Some(value) = typed.get("S") {
            let value = value.as_str().ok_or(Malformed::WrongType("dynamodb.Keys"))?;
            if value.len() > MAX_KEY_LEN {
                return Err(Malformed::Invalid { field: "dynamodb.Keys", reason: "key too long".into() });
            }
            string_keys.push((attribute.clone(), value.to_string()));
        } else if typed.len() != 1 || !typed.keys().all(|t| t == "N" || t == "B") {
            return Err(Malformed::WrongType("dynamodb.Keys"));
        }
    }
    Ok(Envelope { id, change: Some(StoreChange::Item { event_name, table, keys: string_keys }) })
}

/// A table name as DynamoDB allows it (3 to 255 of `a-zA-Z0-9_.-`).
fn checked_table_name(name: &str) -> Result<String, Malformed> {
    let valid = (3..=255).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if valid {
        Ok(name.to_string())
    } else {
        Err(Malformed::Invalid { field: "tableName", reason: format!("{:?} is not a table name", truncated(name)) })
    }
}

/// `arn:aws:dynamodb:REGION:ACCOUNT:table/NAME/stream/LABEL` → NAME.
fn table_from_stream_arn(arn: &str) -> Option<String> {
    let resource = arn.splitn(6, ':').nth(5)?;
    let mut parts = resource.split('/');
    (parts.next()? == "table").then_some(())?;
    parts.next().filter(|n| !n.is_empty()).map(str::to_string)
}

fn check_parameter_name(name: &str) -> Result<(), Malformed> {
    let invalid = |reason: &str| Err(Malformed::Invalid { field: "detail.name", reason: reason.into() });
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return invalid("empty or too long");
    }
    if !paths::has_parameter_name_charset(name) {
        return invalid("characters outside a-zA-Z0-9_.-/");
    }
    if let Some(path) = name.strip_prefix('/') {
        let segments: Vec<&str> = path.split('/').collect();
        if segments.iter().any(|s| s.is_empty()) {
            return invalid("empty path segment");
        }
        if !segments.iter().all(|s| paths::is_plain_segment(s)) {
            return invalid("path traversal ('.' or '..' segment)");
        }
    }
    Ok(())
}

fn required_str<'a>(object: &'a Map<String, Value>, key: &str, field: &'static str) -> Result<&'a str, Malformed> {
    optional_str(object, key, field)?.ok_or(Malformed::Missing(field))
}

fn optional_str<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<Option<&'a str>, Malformed> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Malformed::WrongType(field)),
    }
}

/// Keeps error messages (and logs) short whatever a hostile sender puts in.
fn truncated(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::ConfigStoreSpec,
        store::{
            Location, StoreRef,
            change::{Target, locate},
        },
    };

    fn sample(name: &str) -> String {
        // Copies of DESIGN.md's samples (../shared/events), kept in the repository,
        // with parameter names in the current layout (`{prefix}/{tenant}/_/{configType}/…`).
        let path = format!("{}/tests/fixtures/events/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn dynamodb_store() -> ConfigStoreSpec {
        serde_json::from_value(serde_json::json!({"dynamodb": {"tableName": "tenant-config"}})).unwrap()
    }

    fn ssm_store() -> ConfigStoreSpec {
        serde_json::from_value(serde_json::json!({"parameterStore": {
            "pathPrefix": "/tenant-config", "sharedPaths": ["/tenant-config-shared"]}}))
        .unwrap()
    }

    fn targets(body: &str) -> Vec<Target> {
        let (db, ssm) = (dynamodb_store(), ssm_store());
        let stores = [StoreRef { name: "db", spec: &db }, StoreRef { name: "ssm", spec: &ssm }];
        parse(body).expect("parses").change.map_or_else(Vec::new, |change| locate(&change, &stores))
    }

    fn tenant(store: &str, tenant: &str, env: Option<&str>, config_type: &str) -> Target {
        let location =
            Location { tenant: tenant.into(), environment: env.map(str::to_string), config_type: config_type.into() };
        Target::Tenant { store: store.into(), location }
    }

    #[test]
    fn shared_samples_parse_and_locate() {
        assert_eq!(
            targets(&sample("ssm-parameter-store-change-update.json")),
            [tenant("ssm", "acme", None, "payments")]
        );
        assert_eq!(
            targets(&sample("ssm-parameter-store-change-delete-shared.json")),
            [Target::Shared { store: "ssm".into(), name: "/tenant-config-shared/prod/payments/timeout-ms".into() }]
        );
        assert_eq!(targets(&sample("dynamodb-pipe-modify.json")), [tenant("db", "acme", None, "payments")]);
        assert_eq!(
            targets(&sample("dynamodb-stream-record-bare-remove.json")),
            [tenant("db", "globex", None, "search")]
        );
        let pipe = parse(&sample("dynamodb-pipe-modify.json")).unwrap();
        assert_eq!(pipe.id.as_deref(), Some("3f2c1d0e-9b8a-4c7d-8e6f-5a4b3c2d1e0f"));
        assert!(matches!(
            pipe.change,
            Some(StoreChange::Item { event_name: ItemEventName::Modify, table: Some(ref t), .. }) if t == "tenant-config"
        ));
    }

    /// Shapes other producers and wirings deliver (issue: tolerant intake).
    #[test]
    fn arn_names_kinesis_records_sns_and_other_sources() {
        // detail.name given as the parameter's ARN.
        assert_eq!(
            targets(&sample("ssm-parameter-store-change-arn-name.json")),
            [tenant("ssm", "acme", None, "payments")]
        );
        assert_eq!(parameter_name("arn:aws:ssm:us-east-1:1:parameter/a/b"), "/a/b");
        assert_eq!(parameter_name("arn:aws-us-gov:ssm:us-gov-west-1:1:parameter/plain"), "plain");
        assert_eq!(parameter_name("arn:aws:s3:::parameter/a/b"), "arn:aws:s3:::parameter/a/b", "not an SSM ARN");
        // A record naming its table in `tableName` is routed to that table's store only.
        assert_eq!(targets(&sample("dynamodb-kinesis-record-modify.json")), [tenant("db", "acme", None, "payments")]);
        let mut other_table: Value = serde_json::from_str(&sample("dynamodb-kinesis-record-modify.json")).unwrap();
        other_table["tableName"] = "someone-elses-table".into();
        assert_eq!(targets(&other_table.to_string()), [], "another table's record is not ours");
        other_table["tableName"] = "x/y".into();
        assert_eq!(parse(&other_table.to_string()).unwrap_err().metric_label(), "invalid_value");
        // An SNS topic between the rule and the queue.
        assert_eq!(targets(&sample("sns-notification-ssm-update.json")), [tenant("ssm", "acme", None, "payments")]);
        let sns: Value = serde_json::from_str(&sample("sns-notification-ssm-update.json")).unwrap();
        let mut broken = sns.clone();
        broken["Message"] = "{not json".into();
        assert_eq!(parse(&broken.to_string()).unwrap_err().metric_label(), "not_json_object");
        // A well-formed event of another source: no change, so acknowledged and counted.
        let other = parse(&sample("eventbridge-other-source-ec2.json")).unwrap();
        assert_eq!(other.change, None);
        assert_eq!(other.id.as_deref(), Some("7bf73129-1428-4cd3-a780-95db273d1602"));
        // One missing what EventBridge always sets stays malformed.
        let mut incomplete: Value = serde_json::from_str(&sample("eventbridge-other-source-ec2.json")).unwrap();
        incomplete.as_object_mut().unwrap().remove("time");
        assert_eq!(parse(&incomplete.to_string()).unwrap_err().metric_label(), "unknown_source");
    }

    #[test]
    fn optional_fields_may_be_absent() {
        let mut event: Value = serde_json::from_str(&sample("ssm-parameter-store-change-update.json")).unwrap();
        let object = event.as_object_mut().unwrap();
        object.remove("account");
        object.remove("id");
        object.remove("resources");
        object["detail"].as_object_mut().unwrap().remove("description");
        object["detail"].as_object_mut().unwrap().remove("type");
        assert_eq!(targets(&event.to_string()), [tenant("ssm", "acme", None, "payments")]);

        let mut record: Value = serde_json::from_str(&sample("dynamodb-stream-record-bare-remove.json")).unwrap();
        record.as_object_mut().unwrap().remove("eventSourceARN");
        record["dynamodb"].as_object_mut().unwrap().remove("OldImage");
        assert_eq!(targets(&record.to_string()), [tenant("db", "globex", None, "search")]);
    }

    #[test]
    fn environments_and_foreign_keys() {
        let ssm = |name: &str| {
            format!(
                r#"{{"source":"aws.ssm","detail-type":"Parameter Store Change","detail":{{"name":"{name}","operation":"Update"}}}}"#
            )
        };
        assert_eq!(
            targets(&ssm("/tenant-config/acme/prod/payments/k")),
            [tenant("ssm", "acme", Some("prod"), "payments")]
        );
        // Without an environment the level is `_`: a configType named like an
        // environment is another location, and another writer's nested key
        // belongs to the location above it.
        assert_eq!(targets(&ssm("/tenant-config/acme/_/prod/k")), [tenant("ssm", "acme", None, "prod")]);
        assert_eq!(targets(&ssm("/tenant-config/acme/_/pay/a/b")), [tenant("ssm", "acme", None, "pay")]);
        assert_eq!(targets(&ssm("/tenant-config/a/b/c/d/e")), [tenant("ssm", "a", Some("b"), "c")]);
        // Another application's parameters, paths too shallow (the old layout).
        for foreign in
            ["/other/acme/_/payments/k", "/tenant-config/acme/payments/k", "/tenant-config/acme/_/payments", "plain"]
        {
            assert_eq!(targets(&ssm(foreign)), [], "{foreign}");
        }
        // A shared path's sibling with a common string prefix is not under it.
        assert_eq!(targets(&ssm("/tenant-config-shared2/x")), []);

        let item = |pk: &str, sk: &str, arn: &str| {
            format!(
                r#"{{"eventSource":"aws:dynamodb","eventName":"INSERT","eventSourceARN":"{arn}","dynamodb":{{"Keys":{{"pk":{{"S":"{pk}"}},"sk":{{"S":"{sk}"}}}}}}}}"#
            )
        };
        let arn = "arn:aws:dynamodb:us-east-1:1:table/tenant-config/stream/x";
        assert_eq!(
            targets(&item("TENANT#acme", "CONFIG#payments#ENV#prod", arn)),
            [tenant("db", "acme", Some("prod"), "payments")]
        );
        assert_eq!(targets(&item("USER#1", "CONFIG#x", arn)), []);
        assert_eq!(targets(&item("TENANT#acme", "PROFILE", arn)), []);
        assert_eq!(targets(&item("TENANT#a/b", "CONFIG#x", arn)), []);
        assert_eq!(
            targets(&item("TENANT#acme", "CONFIG#payments", "arn:aws:dynamodb:us-east-1:1:table/other/stream/x")),
            []
        );
    }

    #[test]
    fn hostile_inputs_are_malformed_with_a_reason() {
        let ssm = |detail: &str| {
            format!(r#"{{"source":"aws.ssm","detail-type":"Parameter Store Change","detail":{detail}}}"#)
        };
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "not_json_object"),
            ("{\"source\":\"aws.ssm\",".into(), "not_json_object"),
            ("[1,2]".into(), "not_json_object"),
            ("\"x\"".into(), "not_json_object"),
            ("{}".into(), "unknown_source"),
            (
                r#"{"source":"aws.ec2","detail-type":"EC2 Instance State-change Notification","detail":{}}"#.into(),
                "unknown_source",
            ),
            (ssm(r#"{"operation":"Update"}"#), "wrong_shape"),
            (ssm(r#"{"name":7,"operation":"Update"}"#), "wrong_shape"),
            (ssm(r#"{"name":"/tenant-config/acme/p/k"}"#), "wrong_shape"),
            (ssm(r#""a string""#), "wrong_shape"),
            (ssm(r#"{"name":"/tenant-config/acme/../globex/p/k","operation":"Update"}"#), "invalid_value"),
            (ssm(r#"{"name":"/tenant-config/./acme/p/k","operation":"Update"}"#), "invalid_value"),
            (ssm(r#"{"name":"/tenant-config//acme/p/k","operation":"Update"}"#), "invalid_value"),
            (ssm(r#"{"name":"/tenant config/acme/p/k","operation":"Update"}"#), "invalid_value"),
            (ssm(r#"{"name":"/tenant-config/acme/p/k","operation":""}"#), "invalid_value"),
            (r#"{"source":"aws.ssm","detail-type":["Parameter Store Change"],"detail":{}}"#.into(), "wrong_shape"),
            (
                r#"{"eventSource":"aws:dynamodb","eventName":"DROP","dynamodb":{"Keys":{"pk":{"S":"x"}}}}"#.into(),
                "invalid_value",
            ),
            (r#"{"eventSource":"aws:dynamodb","eventName":"INSERT","dynamodb":{}}"#.into(), "wrong_shape"),
            (r#"{"eventSource":"aws:dynamodb","eventName":"INSERT","dynamodb":{"Keys":[]}}"#.into(), "wrong_shape"),
            (
                r#"{"eventSource":"aws:dynamodb","eventName":"INSERT","dynamodb":{"Keys":{"pk":{"S":1}}}}"#.into(),
                "wrong_shape",
            ),
            (
                r#"{"eventSource":"aws:dynamodb","eventName":"INSERT","dynamodb":{"Keys":{"pk":{"M":{}}}}}"#.into(),
                "wrong_shape",
            ),
            (r#"{"eventSource":"aws:dynamodb","eventName":"INSERT","dynamodb":{"Keys":{}}}"#.into(), "invalid_value"),
            (r#"{"eventSource":"aws:kinesis","eventName":"INSERT"}"#.into(), "unknown_source"),
            (format!(r#"{{"pad":"{}"}}"#, "x".repeat(900 * 1024)), "too_large"),
        ];
        for (body, label) in cases {
            let short: String = body.chars().take(80).collect();
            match parse(&body) {
                Ok(envelope) => panic!("{short}: parsed as {envelope:?}"),
                Err(e) => {
                    assert_eq!(e.metric_label(), label, "{short}: {e}");
                    assert!(e.to_string().len() < 300, "error message stays short: {e}");
                }
            }
        }
    }

    #[test]
    fn stream_arn_names_the_table() {
        assert_eq!(table_from_stream_arn("arn:aws:dynamodb:us-east-1:1:table/t/stream/2026").as_deref(), Some("t"));
        assert_eq!(table_from_stream_arn("arn:aws:dynamodb:us-east-1:1:index/t"), None);
        assert_eq!(table_from_stream_arn("garbage"), None);
    }

    mod properties {
        use super::*;
        use crate::api::is_valid_key;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            /// Whatever the body, parsing returns (never panics), and whatever
            /// parses locates only keys that are valid names.
            #[test]
            fn arbitrary_bodies_never_panic(body in "\\PC{0,400}") {
                if let Ok(envelope) = parse(&body) {
                    for target in targets_of(&envelope) {
                        if let Target::Tenant { location: Location { tenant, config_type, .. }, .. } = target {
                            prop_assert!(is_valid_key(&tenant) && is_valid_key(&config_type));
                        }
                    }
                }
            }

            /// Names built from arbitrary segments: located targets never carry a
            /// traversal or separator, and a parameter outside every prefix is ignored.
            #[test]
            fn parameter_names(segments in proptest::collection::vec("[-._a-z/]{0,12}", 0..7)) {
                let name = format!("/{}", segments.join("/"));
                let body = serde_json::json!({
                    "source": "aws.ssm", "detail-type": "Parameter Store Change",
                    "detail": {"name": name, "operation": "Update"}}).to_string();
                if let Ok(envelope) = parse(&body) {
                    prop_assert!(!name.split('/').any(|s| s == ".."));
                    for target in targets_of(&envelope) {
                        match target {
                            Target::Tenant { location: Location { tenant, config_type, environment }, .. } => {
                                prop_assert!(name.starts_with("/tenant-config/"));
                                for part in [tenant, config_type].into_iter().chain(environment) {
                                    prop_assert!(is_valid_key(&part) && part != "..");
                                }
                            }
                            Target::Shared { name: shared, .. } => {
                                prop_assert!(shared.starts_with("/tenant-config-shared/"));
                            }
                        }
                    }
                }
            }

            /// Truncating a valid sample anywhere is malformed, never a panic.
            #[test]
            fn truncated_samples(cut in 0usize..1200) {
                let body = sample("dynamodb-pipe-modify.json");
                let cut = cut.min(body.len().saturating_sub(2));
                let mut end = cut;
                while !body.is_char_boundary(end) { end -= 1; }
                prop_assert!(parse(&body[..end]).is_err());
            }
        }

        fn targets_of(envelope: &Envelope) -> Vec<Target> {
            let (db, ssm) = (dynamodb_store(), ssm_store());
            let stores = [StoreRef { name: "db", spec: &db }, StoreRef { name: "ssm", spec: &ssm }];
            envelope.change.as_ref().map_or_else(Vec::new, |change| locate(change, &stores))
        }
    }
}
