"""Creates the AWS side of tenant-config-controller on the local emulator, from
the production CloudFormation template (examples/aws/tenant-config.yaml).

moto's CloudFormation knows neither Pipes nor queue policies, so this reads the
template itself and creates what it declares, with the same properties: the
table (pk/sk, NEW_AND_OLD_IMAGES stream), the dead-letter queue, the event queue
and its redrive policy, the Pipe's event bus (with its policy, stored but not
enforced by moto), the Pipe from the stream to that bus, and each rule with its
bus, event pattern and queue target. IAM roles and the queue policy are listed
but not created: the emulator does not enforce IAM.

Parameters default to the template's; override with --param Name=Value.
Prints one JSON object: queueUrl, deadLetterQueueUrl, streamArn.
Idempotent: existing pieces are reused.
"""

import argparse
import json
import os
import re
import sys

import boto3
import botocore.config
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TEMPLATE = os.path.join(HERE, "..", "examples", "aws", "tenant-config.yaml")


class Tag:
    def __init__(self, name, value):
        self.name, self.value = name, value


def cfn_loader():
    class Loader(yaml.SafeLoader):
        pass

    def construct(loader, suffix, node):
        if isinstance(node, yaml.ScalarNode):
            value = loader.construct_scalar(node)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        return Tag(suffix, value)

    Loader.add_multi_constructor("!", construct)
    return Loader


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--template", default=DEFAULT_TEMPLATE)
    p.add_argument("--param", action="append", default=[], help="Name=Value, overrides a template parameter")
    p.add_argument("--account", help="moto account id (x-moto-account-id); default: moto's default account")
    p.add_argument("--max-receive-count", type=int, help="override the redrive policy (tests of the dead-letter path)")
    p.add_argument("--visibility-timeout", type=int, help="override the queue's visibility timeout")
    args = p.parse_args()

    with open(args.template) as f:
        template = yaml.load(f, Loader=cfn_loader())
    params = {name: str(spec.get("Default", "")) for name, spec in template["Parameters"].items()}
    for override in args.param:
        name, _, value = override.partition("=")
        if name not in params:
            sys.exit(f"unknown template parameter {name}")
        params[name] = value
    region = os.environ.get("AWS_REGION", "us-east-1")
    session = boto3.session.Session(region_name=region)
    config = botocore.config.Config(retries={"max_attempts": 3})

    def client(name):
        c = session.client(name, endpoint_url=os.environ["AWS_ENDPOINT_URL"], config=config)
        if args.account:
            c.meta.events.register(
                "before-send.*.*",
                lambda request, **_: request.headers.__setitem__("x-moto-account-id", args.account),
            )
        return c

    dynamodb, sqs, events, pipes = client("dynamodb"), client("sqs"), client("events"), client("pipes")
    bus_arn = events.describe_event_bus(Name="default")["Arn"]
    account = bus_arn.split(":")[4]
    attributes = {}  # logical id -> {"Ref": ..., attribute: ...}

    def resolve(value):
        if isinstance(value, Tag):
            if value.name == "Ref":
                if value.value in params:
                    return params[value.value]
                return {"AWS::AccountId": account, "AWS::Region": region, "AWS::Partition": "aws"}.get(
                    value.value, attributes.get(value.value, {}).get("Ref")
                )
            if value.name == "GetAtt":
                logical, attribute = value.value.split(".", 1) if isinstance(value.value, str) else value.value
                if resources[logical]["Type"] == "AWS::IAM::Role" and attribute == "Arn":
                    # Roles are not created here; their ARN as a name stands in.
                    return f"arn:aws:iam::{account}:role/{params.get('QueueName', 'tenant-config')}-{logical}"
                return attributes[logical][attribute]
            if value.name == "Sub":
                pseudo = {"AWS::AccountId": account, "AWS::Region": region, "AWS::Partition": "aws"}
                return re.sub(r"\$\{([^}]+)\}", lambda m: params.get(m.group(1), pseudo.get(m.group(1), m.group(0))), value.value)
            raise ValueError(f"unsupported intrinsic !{value.name}")
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v) for v in value]
        return value

    resources = template["Resources"]
    order = ["AWS::DynamoDB::Table", "AWS::SQS::Queue", "AWS::Events::EventBus", "AWS::Pipes::Pipe", "AWS::Events::Rule"]
    # Queues: the dead-letter queue first (the event queue's redrive policy names it).
    ordered = sorted(
        resources.items(),
        key=lambda kv: (
            order.index(kv[1]["Type"]) if kv[1]["Type"] in order else len(order),
            "RedrivePolicy" in kv[1].get("Properties", {}),
        ),
    )
    skipped = []
    for logical, resource in ordered:
        kind, props = resource["Type"], resource.get("Properties", {})
        if kind == "AWS::DynamoDB::Table":
            props = resolve(props)
            name = props["TableName"]
            try:
                table = dynamodb.describe_table(TableName=name)["Table"]
            except dynamodb.exceptions.ResourceNotFoundException:
                table = dynamodb.create_table(
                    TableName=name,
                    BillingMode=props["BillingMode"],
                    AttributeDefinitions=props["AttributeDefinitions"],
                    KeySchema=props["KeySchema"],
                    StreamSpecification={"StreamEnabled": True, **props["StreamSpecification"]},
                )["TableDescription"]
            attributes[logical] = {"Ref": name, "Arn": table["TableArn"], "StreamArn": table["LatestStreamArn"]}
        elif kind == "AWS::SQS::Queue":
            props = resolve(props)
            queue_attributes = {"VisibilityTimeout": str(props.get("VisibilityTimeout", 30))}
            if args.visibility_timeout is not None:
                queue_attributes["VisibilityTimeout"] = str(args.visibility_timeout)
            if "RedrivePolicy" in props:
                redrive = dict(props["RedrivePolicy"])
                if args.max_receive_count is not None:
                    redrive["maxReceiveCount"] = args.max_receive_count
                queue_attributes["RedrivePolicy"] = json.dumps(redrive)
            url = sqs.create_queue(QueueName=props["QueueName"], Attributes=queue_attributes)["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            attributes[logical] = {"Ref": url, "Arn": arn}
        elif kind == "AWS::Events::EventBus":
            props = resolve(props)
            try:
                arn = events.describe_event_bus(Name=props["Name"])["Arn"]
            except events.exceptions.ResourceNotFoundException:
                arn = events.create_event_bus(Name=props["Name"])["EventBusArn"]
            if "Policy" in props:
                events.put_permission(EventBusName=props["Name"], Policy=json.dumps(props["Policy"]))
            attributes[logical] = {"Ref": props["Name"], "Arn": arn}
        elif kind == "AWS::Pipes::Pipe":
            props = resolve(props)
            if not any(pipe["Name"] == props["Name"] for pipe in pipes.list_pipes().get("Pipes", [])):
                pipes.create_pipe(
                    Name=props["Name"],
                    Source=props["Source"],
                    SourceParameters=props.get("SourceParameters", {}),
                    Target=props["Target"],
                    RoleArn=props["RoleArn"],
                    DesiredState="RUNNING",
                )
            attributes[logical] = {"Ref": props["Name"]}
        elif kind == "AWS::Events::Rule":
            props = resolve(props)
            rule = f"{params.get('QueueName', 'tenant-config')}-{logical}"
            bus = props.get("EventBusName", "default")
            pattern = json.dumps(props["EventPattern"])
            arn = events.put_rule(Name=rule, EventBusName=bus, EventPattern=pattern, State="ENABLED")["RuleArn"]
            targets = [{"Id": t["Id"], "Arn": t["Arn"]} for t in props["Targets"]]
            events.put_targets(Rule=rule, EventBusName=bus, Targets=targets)
            attributes[logical] = {"Ref": rule, "Arn": arn}
        else:
            skipped.append(f"{logical} ({kind})")

    queue, dlq, table = (
        next(v for k, v in attributes.items() if resources[k]["Type"] == "AWS::SQS::Queue" and "RedrivePolicy" in resources[k]["Properties"]),
        next(v for k, v in attributes.items() if resources[k]["Type"] == "AWS::SQS::Queue" and "RedrivePolicy" not in resources[k]["Properties"]),
        next(v for k, v in attributes.items() if resources[k]["Type"] == "AWS::DynamoDB::Table"),
    )
    print(f"not emulated (IAM is not enforced locally): {', '.join(skipped)}", file=sys.stderr)
    print(json.dumps({"queueUrl": queue["Ref"], "deadLetterQueueUrl": dlq["Ref"], "streamArn": table["StreamArn"]}))


if __name__ == "__main__":
    main()
