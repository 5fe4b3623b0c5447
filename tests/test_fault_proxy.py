"""The demo's TCP fault proxy in front of a real broker: cut means failed sends, heal means recovery."""
from __future__ import annotations

import pytest
from kafka import KafkaProducer
from kafka.errors import KafkaError

from tracer.demo.proxy import FaultProxy
from tracer.localsvc import TansuBroker, free_port, wait_until


@pytest.fixture
def proxied_broker():
    port = free_port()
    broker = TansuBroker(advertised_port=port).start()
    proxy = FaultProxy(broker.port, port=port)
    yield proxy
    proxy.close()
    broker.stop()


def test_cut_fails_sends_and_heal_recovers(proxied_broker):
    proxy = proxied_broker
    producer = KafkaProducer(bootstrap_servers=proxy.address, retries=0, enable_idempotence=False,
                             request_timeout_ms=2000, delivery_timeout_ms=3000, max_block_ms=5000,
                             reconnect_backoff_ms=100, reconnect_backoff_max_ms=300)
    assert producer.send("t", b"before", partition=0).get(timeout=30).offset == 0
    proxy.cut()
    with pytest.raises(KafkaError):
        producer.send("t", b"during", partition=0).get(timeout=30)
    proxy.heal()
    md = wait_until(lambda: producer.send("t", b"after", partition=0).get(timeout=10), 30, "a send after heal")
    assert md.offset == 1  # "during" never reached the broker
    producer.close()
