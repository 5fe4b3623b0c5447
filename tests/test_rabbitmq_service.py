"""The RabbitMQ test services: a fresh vhost per test on the session's server, and a node of our own
whose restart loses non-persistent messages and keeps persistent ones (what the demo's broker-restart
loss relies on)."""
from __future__ import annotations

import pika
import pytest

from tracer.localsvc import ServiceError
from tracer.localsvc.rabbitmq import AmqpEndpoint, amqp_answers


def test_endpoint_round_trip_and_redaction():
    ep = AmqpEndpoint.parse("amqp://us%3Aer:p%40ss@10.0.0.1:5673/v%2F1")
    assert (ep.host, ep.port, ep.user, ep.password, ep.vhost) == ("10.0.0.1", 5673, "us:er", "p@ss", "v/1")
    assert AmqpEndpoint.parse(ep.url()) == ep
    assert "p@ss" not in repr(ep) and "p%40ss" not in ep.redacted() and "***" in ep.redacted()
    assert AmqpEndpoint.parse("amqp://guest:guest@127.0.0.1/").vhost == "/"
    with pytest.raises(ServiceError, match="not an amqp"):
        AmqpEndpoint.parse("http://u:secret@h/")


def test_each_test_has_a_vhost_of_its_own(rabbitmq, amqp_url):
    ep = AmqpEndpoint.parse(amqp_url)
    assert ep.vhost.startswith("msgtrace-")
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()  # the publish returns once the broker has the message: the count is exact
        ch.queue_declare("q")
        ch.basic_publish("", "q", b"x")
        assert ch.queue_declare("q", passive=True).method.message_count == 1
    finally:
        conn.close()
    with rabbitmq.vhost() as other:  # the same queue name elsewhere is another queue
        conn = pika.BlockingConnection(pika.URLParameters(other.url()))
        try:
            assert conn.channel().queue_declare("q").method.message_count == 0
        finally:
            conn.close()
    assert not amqp_answers(other)  # deleted


def test_own_node_restart_keeps_persistent_messages_only(rabbitmq_server):
    url = rabbitmq_server.url()
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("orders", durable=True)
    ch.basic_publish("", "orders", b"persistent", pika.BasicProperties(delivery_mode=2))
    ch.basic_publish("", "orders", b"transient", pika.BasicProperties(delivery_mode=1))
    assert ch.queue_declare("orders", passive=True).method.message_count == 2
    conn.close()
    rabbitmq_server.restart()
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        _, _, body = ch.basic_get("orders", auto_ack=True)
        assert body == b"persistent"
        assert ch.basic_get("orders", auto_ack=True) == (None, None, None)
    finally:
        conn.close()
