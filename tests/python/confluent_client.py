#!/usr/bin/env python3
"""Drives weir's schema registry with Confluent's own Python client (confluent-kafka).

Usage: confluent_client.py REGISTRY_URL TOPIC

Registers a schema under TOPIC-value, fetches it back by id and by subject, looks it up,
checks compatibility, and serializes one record with AvroSerializer three ways (looking the
schema up, using the latest version, and registering it automatically under another
subject). Prints a JSON report on stdout: the schema id, the record, the subjects used and
each serialized message as hex, for the Rust test to check with apache-avro.

Every check raises on a mismatch, so a non-zero exit and the traceback say what went wrong.
"""

import json
import sys

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

SCHEMA = {
    "type": "record",
    "name": "Trade",
    "namespace": "weir.test",
    "fields": [
        {"name": "symbol", "type": "string"},
        {"name": "price", "type": "double"},
        {"name": "volume", "type": "long"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "side", "type": {"type": "enum", "name": "Side", "symbols": ["BUY", "SELL"]}},
        {"name": "note", "type": ["null", "string"], "default": None},
    ],
}

RECORD = {
    "symbol": "AAPL",
    "price": 187.25,
    "volume": 1200,
    "ts": 1700000000123,
    "side": "SELL",
    "note": "odd lot",
}


def expect(condition, what):
    if not condition:
        raise AssertionError(what)


def expect_error(call, http_status, error_code):
    try:
        call()
    except SchemaRegistryError as e:
        expect(
            (e.http_status_code, e.error_code) == (http_status, error_code),
            f"expected {http_status}/{error_code}, got {e.http_status_code}/{e.error_code}: "
            f"{e.error_message}",
        )
        return
    raise AssertionError(f"expected an error {error_code}")


def with_field(field):
    return dict(SCHEMA, fields=SCHEMA["fields"] + [field])


def avro(schema):
    return Schema(json.dumps(schema), "AVRO")


def main():
    url, topic = sys.argv[1], sys.argv[2]
    subject = f"{topic}-value"
    schema_str = json.dumps(SCHEMA)

    schema_id = SchemaRegistryClient({"url": url}).register_schema(subject, Schema(schema_str, "AVRO"))

    # A fresh client for each step, so each one goes over HTTP rather than to a cache.
    client = SchemaRegistryClient({"url": url})
    again = client.register_schema(subject, Schema(json.dumps(SCHEMA, indent=2), "AVRO"))
    expect(again == schema_id, f"same schema, other formatting: id {again} != {schema_id}")

    by_id = SchemaRegistryClient({"url": url}).get_schema(schema_id)
    expect(json.loads(by_id.schema_str) == SCHEMA, f"schema by id: {by_id.schema_str}")
    expect(by_id.schema_type == "AVRO", f"schema type {by_id.schema_type}")

    latest = SchemaRegistryClient({"url": url}).get_latest_version(subject)
    expect(
        (latest.schema_id, latest.version, latest.subject) == (schema_id, 1, subject),
        f"latest version: {latest}",
    )
    expect(json.loads(latest.schema.schema_str) == SCHEMA, "latest version's schema")
    version = SchemaRegistryClient({"url": url}).get_version(subject, 1)
    expect(version.schema_id == schema_id, f"version 1: {version}")
    expect(subject in client.get_subjects(), "subject listed")
    expect(client.get_versions(subject) == [1], "versions")

    looked_up = SchemaRegistryClient({"url": url}).lookup_schema(subject, Schema(schema_str, "AVRO"))
    expect((looked_up.schema_id, looked_up.version) == (schema_id, 1), f"lookup: {looked_up}")

    evolved = with_field({"name": "venue", "type": "string", "default": "XNAS"})
    breaking = with_field({"name": "venue", "type": "string"})
    expect(client.test_compatibility(subject, avro(evolved)) is True, "evolved is compatible")
    expect(client.test_compatibility(subject, avro(breaking)) is False, "breaking is not")
    expect(
        client.test_compatibility(subject, avro(breaking), verbose=True) is False,
        "breaking is not (verbose)",
    )
    expect_error(lambda: client.register_schema(subject, avro(breaking)), 409, 409)
    expect_error(lambda: client.get_schema(999999), 404, 40403)
    expect_error(lambda: client.get_latest_version("nobody-value"), 404, 40401)

    messages = {}
    context = SerializationContext(topic, MessageField.VALUE)
    lookup = AvroSerializer(
        SchemaRegistryClient({"url": url}), schema_str, conf={"auto.register.schemas": False}
    )
    messages["lookup"] = lookup(RECORD, context)
    use_latest = AvroSerializer(
        SchemaRegistryClient({"url": url}),
        schema_str,
        conf={"auto.register.schemas": False, "use.latest.version": True},
    )
    messages["latest"] = use_latest(RECORD, context)
    auto_topic = f"{topic}-auto"
    auto = AvroSerializer(
        SchemaRegistryClient({"url": url}), schema_str, conf={"auto.register.schemas": True}
    )
    messages["auto"] = auto(RECORD, SerializationContext(auto_topic, MessageField.VALUE))
    auto_latest = client.get_latest_version(f"{auto_topic}-value")
    expect(auto_latest.schema_id == schema_id, "the same schema keeps its id under another subject")

    expect(client.get_compatibility() == "BACKWARD", "default compatibility")
    client.set_compatibility(subject_name=subject, level="full")
    expect(client.get_compatibility(subject) == "FULL", "subject compatibility")

    json.dump(
        {
            "schema_id": schema_id,
            "record": RECORD,
            "subjects": sorted([subject, f"{auto_topic}-value"]),
            "messages": {name: data.hex() for name, data in messages.items()},
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
