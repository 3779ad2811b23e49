"""moto's server plus the event plumbing AWS has and moto lacks (DESIGN.md §9).

moto stores DynamoDB stream records but its EventBridge Pipes move no data, and
its SSM emits no `Parameter Store Change` events. This launcher hooks both, inside
the moto process, and plays AWS's part:

* every record appended to a table's stream is delivered by each RUNNING Pipe
  whose source is that stream: to an event bus as the Pipe-shaped envelope
  (source "Pipe <name>", detail-type "Event from aws:dynamodb", the record as
  detail), or to an SQS queue as the bare stream record;
* every successful PutParameter / DeleteParameter / DeleteParameters /
  LabelParameterVersion is put on the account's default event bus as a
  `Parameter Store Change` event (source aws.ssm);
* and it closes a moto race that lost SQS messages sent during a delete.

Delivery happens on one background thread, after the API call returned, in
order, as in AWS (asynchronous, at most seconds late). Rules and targets are
moto's own: what reaches a queue is decided by the event patterns the test or
demo set up, exactly as in AWS.

Usage: python aws_emulator.py -H 127.0.0.1 -p PORT   (same flags as moto_server)
"""

import datetime
import faulthandler
import json
import logging
import queue
import signal
import sys
import threading
import time

from moto import server
from moto.dynamodb.models.table import StreamShard
from moto.events.models import events_backends
from moto.pipes.models import pipes_backends
from moto.sqs.models import Message, Queue, SQSBackend, sqs_backends
from moto.ssm.models import SimpleSystemManagerBackend

log = logging.getLogger("aws_emulator")
deliveries: "queue.Queue" = queue.Queue()


def deliver_forever() -> None:
    last_report = 0.0
    while True:
        job = deliveries.get()
        backlog = deliveries.qsize()
        if backlog > 100 and time.monotonic() - last_report > 5:
            last_report = time.monotonic()
            log.warning("event delivery backlog: %d", backlog)
        try:
            job()
        except Exception:  # one failed delivery must not stop the others
            log.exception("event delivery failed")


def put_event(account: str, region: str, entry: dict) -> None:
    results = events_backends[account][region].put_events([entry])
    for result in results:
        if "ErrorCode" in result:
            log.error("PutEvents refused: %s", result)


# --- DynamoDB stream -> Pipes -------------------------------------------------

original_stream_add = StreamShard.add


def stream_add(self, old, new):
    original_stream_add(self, old, new)
    if not self.items:
        return  # a Lambda event source mapping consumed them
    record = dict(self.items[-1].to_json())
    table = self.table
    stream_arn = f"{table.table_arn}/stream/{table.latest_stream_label}"
    dynamodb = dict(record["dynamodb"])
    created = dynamodb.get("ApproximateCreationDateTime")
    if isinstance(created, datetime.datetime):
        dynamodb["ApproximateCreationDateTime"] = created.replace(tzinfo=datetime.timezone.utc).timestamp()
    record["dynamodb"] = dynamodb
    record["awsRegion"] = table.region_name
    record["eventSourceARN"] = stream_arn
    account, region = self.account_id, table.region_name
    deliveries.put(lambda: deliver_stream_record(account, region, stream_arn, record))


def deliver_stream_record(account: str, region: str, stream_arn: str, record: dict) -> None:
    for pipe in list(pipes_backends[account][region].pipes.values()):
        if pipe.source != stream_arn or pipe.desired_state != "RUNNING":
            continue
        body = json.dumps(record, default=str)
        target = pipe.target
        if ":events:" in target:
            put_event(account, region, {
                "Source": f"Pipe {pipe.name}",
                "DetailType": "Event from aws:dynamodb",
                "Detail": body,
                "EventBusName": target,
            })
        elif ":sqs:" in target:
            queue_name = target.rsplit(":", 1)[1]
            sqs_backends[account][region].send_message(queue_name, body)
        else:
            log.warning("pipe %s: target %s is not emulated", pipe.name, target)


StreamShard.add = stream_add

# --- SSM -> Parameter Store Change ---------------------------------------------


def parameter_event(backend, name: str, operation: str, parameter_type: str | None, description: str | None):
    account, region = backend.account_id, backend.region_name
    arn = f"arn:aws:ssm:{region}:{account}:parameter/{name.lstrip('/')}"
    detail = {"operation": operation, "name": name}
    if parameter_type:
        detail["type"] = parameter_type
    if description is not None:
        detail["description"] = description
    entry = {
        "Source": "aws.ssm",
        "DetailType": "Parameter Store Change",
        "Detail": json.dumps(detail),
        "Resources": [arn],
    }
    deliveries.put(lambda: put_event(account, region, entry))


def existing_type(backend, name: str):
    versions = backend._parameters.get(backend._parameters.normalize_name(name))
    return versions[-1].parameter_type if versions else None


original_put_parameter = SimpleSystemManagerBackend.put_parameter


def put_parameter(self, name, description, value, parameter_type, *args, **kwargs):
    existed = existing_type(self, name) is not None
    result = original_put_parameter(self, name, description, value, parameter_type, *args, **kwargs)
    parameter_event(self, name, "Update" if existed else "Create", result.parameter_type, description or "")
    return result


original_delete_parameter = SimpleSystemManagerBackend.delete_parameter


def delete_parameter(self, name):
    parameter_type = existing_type(self, name)
    original_delete_parameter(self, name)
    parameter_event(self, name, "Delete", parameter_type, None)


original_delete_parameters = SimpleSystemManagerBackend.delete_parameters


def delete_parameters(self, names):
    types = {name: existing_type(self, name) for name in names}
    deleted = original_delete_parameters(self, names)
    for name in deleted:
        parameter_event(self, name, "Delete", types.get(name), None)
    return deleted


original_label_parameter_version = SimpleSystemManagerBackend.label_parameter_version


def label_parameter_version(self, name, *args, **kwargs):
    result = original_label_parameter_version(self, name, *args, **kwargs)
    parameter_event(self, name, "LabelParameterVersion", existing_type(self, name), None)
    return result


# --- moto SQS: DeleteMessage vs. a concurrent SendMessage -----------------------
# moto's Queue.delete_message rebuilds the message list without the queue's lock,
# while add_message appends under it: a message sent during a delete can vanish.
# With events delivered from a background thread while the controller deletes,
# that lost events (seen as changes that never arrived). AWS loses nothing here,
# so the emulator takes the lock.

original_queue_delete_message = Queue.delete_message


def queue_delete_message(self, receipt_handle):
    with self._messages_lock:
        return original_queue_delete_message(self, receipt_handle)


Queue.delete_message = queue_delete_message

# --- moto SQS: ReceiveMessage cost ----------------------------------------------
# For every message it returns, moto reads the retention period through
# get_queue_attributes, which computes every attribute, the message counts among
# them (a pass over the whole queue): a receive costs O(10 x queue length). With
# thousands of events queued (scale benchmark) moto spent its time there. Same
# answer, read directly.


def is_message_valid_based_on_retention_period(self, queue_name, message):
    retention_period = self.get_queue(queue_name).message_retention_period
    return retention_period + message.sent_timestamp / 1000 > time.time()


SQSBackend.is_message_valid_based_on_retention_period = is_message_valid_based_on_retention_period

# moto decides visibility and delay per message with datetime arithmetic, and
# every SendMessage computes all queue attributes (three passes over the queue
# to count messages): with thousands queued, sends took most of moto's CPU
# (py-spy). Same comparison on the same clock (ms since the epoch), cheaper.
Message.visible = property(lambda self: time.time() * 1000.0 > self.visible_at)
Message.delayed = property(lambda self: time.time() * 1000.0 < self.delayed_until)

# --- moto SSM: DescribeParameters cost ------------------------------------------
# With a Path filter moto still visits every parameter in the account, and for
# each one looks it up twice and copies its tags (`_match_filters`): O(all
# parameters) of slow Python per call, and again for every page. AWS indexes by
# path. At 10,000 parameters one call took 82 ms (2.3 ms with this patch, one
# path's parameters): moto, not the caller, set the pace of the scale benchmark.
# Same answer: names outside the path are skipped before the per-parameter work.

original_describe_parameters = SimpleSystemManagerBackend.describe_parameters


def describe_parameters(self, filters, parameter_filters):
    paths = [f for f in parameter_filters or [] if f.get("Key") == "Path"]
    values = paths[0].get("Values", []) if len(paths) == 1 else []
    if filters or not values or any(v.strip("/") == "" for v in values):
        return original_describe_parameters(self, filters, parameter_filters)
    # A name under a path starts with "/<path>/" (moto compares the same way).
    prefixes = tuple("/" + v.strip("/") + "/" for v in values)
    self._validate_parameter_filters(parameter_filters, by_path=False)
    result = []
    # The original's loop (no `filters` here), over names under the path only.
    for name in [n for n in list(self._parameters) if ("/" + n.lstrip("/")).startswith(prefixes)]:
        parameter = self.get_parameter(name)
        if parameter is not None and self._match_filters(parameter, parameter_filters):
            result.append(parameter)
    return result


SimpleSystemManagerBackend.describe_parameters = describe_parameters
SimpleSystemManagerBackend.put_parameter = put_parameter
SimpleSystemManagerBackend.delete_parameter = delete_parameter
SimpleSystemManagerBackend.delete_parameters = delete_parameters
SimpleSystemManagerBackend.label_parameter_version = label_parameter_version

if __name__ == "__main__":
    # `kill -USR1 <pid>` writes every thread's stack to the log (for hangs). It
    # once killed a busy server mid-dump; py-spy (pip) samples a live one safely.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    threading.Thread(target=deliver_forever, name="event-delivery", daemon=True).start()
    server.main(sys.argv[1:])
