"""Confluent's own Python client against psymatch's registry and topics.

An independent implementation of the registry API and the wire format: if
it reads what psymatch writes and psymatch reads what it writes, both sides
speak Confluent. Driven by the Rust test processors/cli/tests/interop.rs;
prints one JSON document per command on stdout.

    confluent_client.py registry URL SUBJECT
    confluent_client.py consume BROKERS URL TOPIC KEY
    confluent_client.py produce BROKERS URL TOPIC KEY EVENT_ID
    confluent_client.py produce_compressed BROKERS URL TOPIC CODEC COUNT
"""
import json
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import (
    AvroDeserializer,
    AvroSerializer,
)
from confluent_kafka.serialization import MessageField, SerializationContext


def registry(url, subject):
    """Exercise the client's registry calls on an existing subject."""
    client = SchemaRegistryClient({"url": url})
    latest = client.get_latest_version(subject)
    by_id = client.get_schema(latest.schema_id)
    looked_up = client.lookup_schema(subject, latest.schema)
    compatible = client.test_compatibility(subject, latest.schema)
    # Registering the same schema again returns the same id.
    again = client.register_schema(subject, latest.schema)
    print(json.dumps({
        "subjects": client.get_subjects(),
        "versions": client.get_versions(subject),
        "latest_id": latest.schema_id,
        "latest_version": latest.version,
        "by_id_matches": by_id.schema_str == latest.schema.schema_str,
        "lookup_version": looked_up.version,
        "compatible": compatible,
        "register_again_id": again,
        "level": client.get_compatibility(),
    }))


def default(value):
    """JSON for values fastavro returns that json cannot encode."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(repr(value))


def consume(brokers, url, topic, key):
    """Print the decoded values of every record of TOPIC with KEY."""
    client = SchemaRegistryClient({"url": url})
    deserializer = AvroDeserializer(client)
    consumer = Consumer({
        "bootstrap.servers": brokers,
        "group.id": "psymatch-interop-%s" % uuid.uuid4(),
        "enable.auto.commit": False,
    })
    metadata = consumer.list_topics(topic, timeout=10)
    partitions = metadata.topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p))[1]
            for p in partitions}
    done = {p for p, end in ends.items() if end == 0}
    found = []
    deadline = time.monotonic() + 30
    while len(done) < len(ends) and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is None or message.error():
            continue
        if message.offset() + 1 >= ends[message.partition()]:
            done.add(message.partition())
        if message.key() != key.encode():
            continue
        context = SerializationContext(topic, MessageField.VALUE)
        value = deserializer(message.value(), context)
        headers = {k: v.decode() for k, v in (message.headers() or [])}
        found.append({"value": value, "headers": headers})
    consumer.close()
    print(json.dumps(found, default=default))


def produce(brokers, url, topic, key, event_id):
    """Publish a patient.resume_search command with Confluent's serializer."""
    client = SchemaRegistryClient({"url": url})
    serializer = AvroSerializer(client, conf={
        "auto.register.schemas": False,
        "use.latest.version": True,
    })
    value = {
        "event_id": event_id,
        "event_type": "patient.resume_search",
        "version": 1,
        "timestamp": int(time.time() * 1000),
        "producer": "python-interop",
        "correlation_id": None,
        "payload": ("psymatch.patient.ResumeSearch", {"patient_id": key}),
    }
    context = SerializationContext(topic, MessageField.VALUE)
    producer = Producer({"bootstrap.servers": brokers})
    producer.produce(topic, key=key, value=serializer(value, context))
    remaining = producer.flush(30)
    print(json.dumps({"unsent": remaining}))


def produce_compressed(brokers, url, topic, codec, count):
    """Publish COUNT patient.resume_search commands (keys CODEC-0, ...)
    in batches compressed with CODEC, as another team's producer would."""
    client = SchemaRegistryClient({"url": url})
    serializer = AvroSerializer(client, conf={
        "auto.register.schemas": False,
        "use.latest.version": True,
    })
    context = SerializationContext(topic, MessageField.VALUE)
    producer = Producer({
        "bootstrap.servers": brokers,
        "compression.type": codec,
        # Many records per batch: the batch is what is compressed.
        "linger.ms": 50,
    })
    for n in range(int(count)):
        key = "%s-%d" % (codec, n)
        value = {
            "event_id": str(uuid.uuid4()),
            "event_type": "patient.resume_search",
            "version": 1,
            "timestamp": int(time.time() * 1000),
            "producer": "python-" + codec,
            "correlation_id": None,
            "payload": ("psymatch.patient.ResumeSearch", {"patient_id": key}),
        }
        producer.produce(topic, key=key, value=serializer(value, context))
    remaining = producer.flush(30)
    print(json.dumps({"unsent": remaining}))


if __name__ == "__main__":
    commands = {
        "registry": registry,
        "consume": consume,
        "produce": produce,
        "produce_compressed": produce_compressed,
    }
    commands[sys.argv[1]](*sys.argv[2:])
