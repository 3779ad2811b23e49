//! The Rust AWS SDK against moto's real HTTP server: DynamoDB and SSM round trips.

mod support;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_ssm::types::ParameterType;
use support::{MotoAccount, aws_config};

#[tokio::test]
async fn dynamodb_table_and_item_round_trip() {
    let sdk = aws_config().await;
    let account = MotoAccount::fresh();
    let ddb = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&sdk).interceptor(account.clone()).build(),
    );
    support::create_table(&ddb, "tenant-config").await;
    ddb.put_item()
        .table_name("tenant-config")
        .item("pk", AttributeValue::S("TENANT#acme".into()))
        .item("sk", AttributeValue::S("CONFIG#payments".into()))
        .item("data", AttributeValue::M([("provider".to_string(), AttributeValue::S("stripe".into()))].into()))
        .send()
        .await
        .expect("put item");
    let got = ddb
        .get_item()
        .table_name("tenant-config")
        .key("pk", AttributeValue::S("TENANT#acme".into()))
        .key("sk", AttributeValue::S("CONFIG#payments".into()))
        .consistent_read(true)
        .send()
        .await
        .expect("get item");
    let data = got.item().and_then(|i| i.get("data")).and_then(|d| d.as_m().ok()).expect("data map");
    assert_eq!(data.get("provider").and_then(|v| v.as_s().ok()).map(String::as_str), Some("stripe"));

    // Another moto account does not see the table: tests are isolated.
    let other = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&sdk).interceptor(MotoAccount::fresh()).build(),
    );
    let tables = other.list_tables().send().await.unwrap();
    assert!(tables.table_names().is_empty(), "a fresh account starts empty: {:?}", tables.table_names());
}

#[tokio::test]
async fn ssm_parameter_round_trip() {
    let sdk = aws_config().await;
    let ssm = aws_sdk_ssm::Client::from_conf(
        aws_sdk_ssm::config::Builder::from(&sdk).interceptor(MotoAccount::fresh()).build(),
    );
    ssm.put_parameter()
        .name("/tenant-config/acme/payments/provider")
        .value("stripe")
        .r#type(ParameterType::String)
        .tags(aws_sdk_ssm::types::Tag::builder().key("tenantconfig.io/tenant").value("acme").build().unwrap())
        .send()
        .await
        .expect("put parameter");
    let got = ssm.get_parameter().name("/tenant-config/acme/payments/provider").send().await.expect("get parameter");
    assert_eq!(got.parameter().and_then(|p| p.value()), Some("stripe"));
    let by_path = ssm.get_parameters_by_path().path("/tenant-config/acme").recursive(true).send().await.unwrap();
    assert_eq!(by_path.parameters().len(), 1);
}
