"""Creates the AWS side of tenant-config-controller on the local emulator.

The same pieces as the production template in examples/aws/: the table with a
NEW_AND_OLD_IMAGES stream, the event queue with its dead-letter queue (redrive
policy), an EventBridge Pipe from the stream to the default bus, and one rule
per event pattern delivering to the queue. The event patterns are the
controller's own (`tenant-config-controller event-patterns`), passed in as JSON,
so the local rules and the production ones cannot drift apart.

Prints one JSON object: queueUrl, deadLetterQueueUrl, streamArn.
Idempotent: existing pieces are reused.
"""

import argparse
import json
import os
import sys

import boto3
import botocore.config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--account", help="moto account id (x-moto-account-id); default: moto's default account")
    p.add_argument("--table", default="tenant-config")
    p.add_argument("--queue", default="tenant-config-events")
    p.add_argument("--pipe", default="tenant-config-dynamodb")
    p.add_argument("--patterns", required=True, help="JSON from `tenant-config-controller event-patterns`")
    p.add_argument("--max-receive-count", type=int, default=5)
    p.add_argument("--visibility-timeout", type=int, default=60)
    args = p.parse_args()
    patterns = json.loads(args.patterns)

    session = boto3.session.Session(region_name=os.environ.get("AWS_REGION", "us-east-1"))
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

    try:
        table = dynamodb.describe_table(TableName=args.table)["Table"]
    except dynamodb.exceptions.ResourceNotFoundException:
        table = dynamodb.create_table(
            TableName=args.table,
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        )["TableDescription"]
    stream_arn = table.get("LatestStreamArn")
    if not stream_arn:
        sys.exit(f"table {args.table} has no stream; the controller's events need NEW_AND_OLD_IMAGES")

    dlq_url = sqs.create_queue(QueueName=f"{args.queue}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue_url = sqs.create_queue(
        QueueName=args.queue,
        Attributes={
            "VisibilityTimeout": str(args.visibility_timeout),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": args.max_receive_count}),
        },
    )["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]

    bus_arn = events.describe_event_bus(Name="default")["Arn"]
    if not any(pipe["Name"] == args.pipe for pipe in pipes.list_pipes().get("Pipes", [])):
        pipes.create_pipe(
            Name=args.pipe,
            Source=stream_arn,
            SourceParameters={"DynamoDBStreamParameters": {"StartingPosition": "LATEST", "BatchSize": 1}},
            Target=bus_arn,
            RoleArn=f"arn:aws:iam::{bus_arn.split(':')[4]}:role/{args.pipe}",
            DesiredState="RUNNING",
        )
    for name, pattern in sorted(patterns.items()):
        rule = f"{args.queue}-{name}"
        events.put_rule(Name=rule, EventPattern=json.dumps(pattern), State="ENABLED")
        events.put_targets(Rule=rule, Targets=[{"Id": "queue", "Arn": queue_arn}])

    print(json.dumps({"queueUrl": queue_url, "deadLetterQueueUrl": dlq_url, "streamArn": stream_arn}))


if __name__ == "__main__":
    main()
