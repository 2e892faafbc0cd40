#!/usr/bin/env python3
"""The hand-written baseline for weir's end-to-end benchmark.

What a user would write without weir: a Python consumer that reads Avro records from a
Kafka topic (Confluent wire format, schemas from a schema registry) and inserts each one
into a Postgres table, committing the database and then the Kafka offsets every --batch
messages.

Usage:
    baseline.py --brokers HOST:PORT --registry URL --database-url POSTGRES_URL \
                --topic TOPIC --table TABLE --group GROUP --records N [--batch 500]

Needs: pip install "confluent-kafka[avro,schemaregistry]>=2.10" "psycopg[binary]>=3.1"

The table must already exist, with one column per Avro field (same names). TABLE may be
schema-qualified (myschema.ticks). The script stops once N messages have been inserted
and committed, and prints one JSON object on stdout:

    {"records": N, "seconds": ..., "cpu_seconds": ..., "peak_rss_bytes": ...}

seconds runs from the first message received to the last commit; cpu_seconds is user+sys
of this process (all its threads, librdkafka's included); peak_rss_bytes is ru_maxrss.
Progress goes to stderr at most every 5 s. Any error exits non-zero with a message on
stderr; so does a 60 s stretch without a message.
"""

import argparse
import json
import resource
import sys
import time

import psycopg
from psycopg import sql
from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

IDLE_TIMEOUT = 60.0
PROGRESS_EVERY = 5.0


class BaselineError(Exception):
    pass


def log(message):
    print(f"baseline: {message}", file=sys.stderr, flush=True)


def parse_args():
    parser = argparse.ArgumentParser(
        description="Consume Avro records from Kafka and insert them into Postgres, by hand."
    )
    parser.add_argument("--brokers", required=True, help="Kafka bootstrap servers, HOST:PORT")
    parser.add_argument("--registry", required=True, help="schema registry URL")
    parser.add_argument("--database-url", required=True, help="Postgres connection URL")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--table", required=True, help="target table, optionally schema.table")
    parser.add_argument("--group", required=True, help="Kafka consumer group id")
    parser.add_argument("--records", required=True, type=int, help="stop after this many")
    parser.add_argument("--batch", type=int, default=500, help="commit every this many")
    args = parser.parse_args()
    if args.records <= 0:
        parser.error("--records must be positive")
    if args.batch <= 0:
        parser.error("--batch must be positive")
    return args


def insert_statement(table, columns):
    return sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.Identifier(*table.split(".")),
        sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        sql.SQL(", ").join(sql.Placeholder() * len(columns)),
    )


def run(args):
    registry = SchemaRegistryClient({"url": args.registry})
    deserializer = AvroDeserializer(registry)

    conn = psycopg.connect(args.database_url)
    consumer = Consumer(
        {
            "bootstrap.servers": args.brokers,
            "group.id": args.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        consumer.subscribe([args.topic])
        cursor = conn.cursor()
        statements = {}  # column tuple -> INSERT statement

        consumed = 0
        committed = 0
        first_at = None
        last_commit_at = None
        last_message_at = time.monotonic()
        last_progress_at = last_message_at

        def commit():
            nonlocal committed, last_commit_at
            conn.commit()
            try:
                consumer.commit(asynchronous=False)
            except KafkaException as e:
                # Nothing new to commit (no offset moved since the last commit) is harmless.
                if e.args[0].code() != KafkaError._NO_OFFSET:
                    raise
                log(f"offset commit after {consumed}: nothing to commit")
            committed = consumed
            last_commit_at = time.monotonic()

        while committed < args.records:
            msg = consumer.poll(1.0)
            now = time.monotonic()
            if now - last_progress_at >= PROGRESS_EVERY:
                log(f"{consumed} consumed, {committed} committed")
                last_progress_at = now

            if msg is None:
                if now - last_message_at >= IDLE_TIMEOUT:
                    raise BaselineError(
                        f"no message for {IDLE_TIMEOUT:.0f} s from topic {args.topic!r}; "
                        f"consumed {consumed} of {args.records}"
                    )
                continue
            if msg.error():
                if msg.error().fatal():
                    raise KafkaException(msg.error())
                log(f"consumer error (continuing): {msg.error()}")
                continue

            last_message_at = now
            if first_at is None:
                first_at = now

            try:
                row = deserializer(
                    msg.value(), SerializationContext(msg.topic(), MessageField.VALUE)
                )
            except Exception as e:
                raise BaselineError(
                    f"cannot deserialize {msg.topic()}[{msg.partition()}]@{msg.offset()} "
                    f"(registry {args.registry}): {type(e).__name__}: {e}"
                ) from e
            if row is None:
                raise BaselineError(
                    f"null value at {msg.topic()}[{msg.partition()}]@{msg.offset()}"
                )
            columns = tuple(row.keys())
            statement = statements.get(columns)
            if statement is None:
                statement = statements[columns] = insert_statement(args.table, columns)
            cursor.execute(statement, tuple(row.values()))
            consumed += 1

            if consumed % args.batch == 0 or consumed == args.records:
                commit()

        log(f"{consumed} consumed, {committed} committed; done")
        return {
            "records": committed,
            "seconds": last_commit_at - first_at,
        }
    finally:
        consumer.close()
        conn.close()


def main():
    args = parse_args()
    try:
        result = run(args)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except Exception as e:  # noqa: BLE001 - report anything, exit non-zero
        log(f"error: {type(e).__name__}: {e}")
        return 1
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    result["peak_rss_bytes"] = usage.ru_maxrss * 1024
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
