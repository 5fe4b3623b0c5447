"""The red-packet story on Kafka, end to end, with every loss from the seeds injected as a real fault.

The same story with kafka-python or confluent-kafka in the services (``client``). Nothing here
writes a trace event or decides a verdict: events come from the hooks inside the services'
processes, verdicts from ``msgtrace reconcile``. The orchestrator only starts and breaks things, and
keeps the ground truth of what it broke, so the two can be put side by side.
"""
from __future__ import annotations

import contextlib
from functools import partial
from pathlib import Path

from rich.console import Console

from tracer.demo.apps import DLQ_TOPIC, PAYMENT_API_HANGS, RETRY_TOPIC, TOPIC
from tracer.demo.base import GROUPS, App, Category, StoryBase, build_categories
from tracer.demo.proxy import FaultProxy
from tracer.localsvc import TansuBroker, free_port, wait_until

CASES = {
    "delivered": "the normal path",
    "never_sent": "order committed, process killed before send",
    "send_failed": "network to the broker cut during the send, error swallowed",
    "lost_in_broker": "broker acked from memory and restarted before consumption",
    "lost_in_consumer": "auto-commit ran ahead of a worker thread; instance SIGKILLed",
    "failed_and_committed": "handler raised, error swallowed, offset committed",
    "dead_lettered": "poison message sent to the dead-letter topic",
    "redelivered": "points instance killed after processing, before its commit",
}


def categories(replay: bool = True) -> dict[str, Category]:
    return build_categories(CASES, replay)


class Story(StoryBase):
    """Runs the Kafka story; see ``run()``."""

    replayable = True

    def __init__(self, workdir: Path, scale: int = 20, seed: int = 7, sink: str = "collector",
                 console: Console | None = None, client: str = "kafka-python", replay: bool = True) -> None:
        self.client = client
        self.replay = replay
        self.proxy: FaultProxy | None = None
        super().__init__(workdir, scale=scale, seed=seed, sink=sink, console=console)

    def categories(self) -> dict[str, Category]:
        return categories(self.replay)

    @property
    def business_bootstrap(self) -> str:
        assert self.proxy is not None
        return self.proxy.address

    def app_argv(self, role: str) -> list[str]:
        return ["--bootstrap", self.business_bootstrap]

    def describe(self) -> str:
        return f"Kafka ({self.client})"

    def create_topics(self) -> None:
        from kafka.admin import KafkaAdminClient, NewTopic

        admin = KafkaAdminClient(bootstrap_servers=self.business_bootstrap, request_timeout_ms=10000)
        try:
            admin.create_topics([NewTopic(TOPIC, 2, 1), NewTopic(DLQ_TOPIC, 1, 1), NewTopic(RETRY_TOPIC, 1, 1)])
        finally:
            admin.close()

    def caught_up(self, group: str, topics: tuple[str, ...] = (TOPIC, RETRY_TOPIC)) -> bool:
        """Has ``group`` committed everything that is in ``topics``?"""
        from kafka import KafkaConsumer, TopicPartition

        probe = KafkaConsumer(bootstrap_servers=self.business_bootstrap, group_id=group, enable_auto_commit=False)
        try:
            tps = [TopicPartition(t, p) for t in topics for p in sorted(probe.partitions_for_topic(t) or ())]
            ends = probe.end_offsets(tps)
            self.last_lag = {(tp.topic, tp.partition): (probe.committed(tp), ends[tp]) for tp in tps}
            return all((c or 0) >= e for c, e in self.last_lag.values())
        finally:
            probe.close()

    @staticmethod
    def owns_both(app: App) -> bool:
        return app.assigned() == [0, 1]

    @staticmethod
    def split(first: App, second: App) -> bool:
        """Does each of two instances of a group own one of the two partitions?"""
        a, b = first.assigned(), second.assigned()
        return bool(a and b and len(a) == 1 and len(b) == 1)

    def settle(self) -> None:
        for g in GROUPS:
            wait_until(partial(self.caught_up, g), 60, f"{g} to commit everything it processed")
        self.flush_services()

    def await_replays(self, msg_ids: set[str], timeout: float = 60) -> None:
        """Both groups handled each re-published message from the retry topic (by their own logs)."""
        orders = [m.removesuffix(":paid") for m in sorted(msg_ids)]
        self.done_everywhere(orders, ("paid", "handler_error", "dead_lettered"), timeout, topic=RETRY_TOPIC)

    def cleanup(self) -> None:
        for app in self.apps.values():
            with contextlib.suppress(Exception):  # cleanup goes on whatever one process did
                app.kill()
        if self.proxy:
            self.proxy.close()
        for b in self.brokers:
            b.stop()

    # --- the story -------------------------------------------------------------------------------------
    def run(self) -> None:
        w = self.workdir
        proxy_port = free_port()
        self.business = TansuBroker(workdir=str(w / "logs"), advertised_port=proxy_port)
        self.brokers.append(self.business.start())  # tracked at once: cleanup() stops what started
        self.start_audit()
        self.proxy = FaultProxy(self.business.port, port=proxy_port)
        self.step(f"brokers up: business {self.proxy.address} (through a fault proxy), "
                  f"audit {self.audit_bootstrap}; store {self.store_url}; services on {self.client}")
        self.create_topics()
        order = self.start_app("order", "order", "orders.db")

        # 3. the broker acknowledges, then loses the messages (memory broker restarted)
        lost = [self.new_order("lost_in_broker") for _ in range(2)]
        for o in lost:
            self.pay(o)
        for o in lost:
            order.wait_event("acked", order_id=o["order_id"])
        self.step(f"[yellow]fault[/]: business broker restarted after acking {len(lost)} orders "
                  "(acked from memory, never consumed)")
        order.stop()  # a deploy goes by; its spool is shipped on the way out
        self.business.restart()
        self.proxy.reset_all()
        self.create_topics()
        order = self.start_app("order", "order", "orders.db")

        # consumers join one step at a time per group (Tansu wedges a group changed mid-rebalance); the two
        # groups are independent, so they join side by side
        rp1 = self.start_app("red-packet-1", "red-packet", "redpacket.db", wait=False)
        pts1 = self.start_app("points-1", "points", "points.db", wait=False, commit_every="3")
        for first in (rp1, pts1):
            first.wait_event("ready", timeout=60)
            first.wait(partial(self.owns_both, first), 60, f"{first.name} owning both partitions")
        rp2 = self.start_app("red-packet-2", "red-packet", "redpacket.db", wait=False)
        pts2 = self.start_app("points-2", "points", "points.db", wait=False, commit_every="3")
        for first, second in ((rp1, rp2), (pts1, pts2)):
            second.wait_event("ready", timeout=60)
            second.wait(partial(self.split, first, second), 60, f"{second.name}: the group split over two instances")
        self.step("consumers ready: red-packet x2 (auto-commit, worker threads), points x2 (manual commit)")

        # the normal path
        batch = [self.new_order("delivered") for _ in range(self.scale)]
        for o in batch:
            self.pay(o)
        self.done_everywhere([o["order_id"] for o in batch])
        self.step(f"{len(batch)} orders paid and delivered to both groups")

        # 8. the audit's own broker loses the events of those orders before the collector read them
        self.audit_broker_fault([o["order_id"] for o in batch])

        # 5. handler raises, error swallowed, offset committed
        frozen = [self.new_order("failed_and_committed", user=f"frozen-{i}") for i in range(2)]
        # 6. poison message to the dead-letter topic
        poison = [self.new_order("dead_lettered", amount=a) for a in ("-5.00", "NaN")]
        for o in frozen + poison:
            self.pay(o)
        self.done_everywhere([o["order_id"] for o in frozen], rp_event="handler_error")
        self.done_everywhere([o["order_id"] for o in poison], rp_event="dead_lettered")
        self.step(f"[yellow]fault[/]: {len(frozen)} payments rejected and swallowed, "
                  f"{len(poison)} poison messages dead-lettered")

        # 1. order committed, process killed before the send
        ns = self.new_order("never_sent")
        self.pay(ns, crash_before_send=True)
        order.proc.wait(30)
        self.dead_spools.append(self.workdir / "spool" / "order")
        self.step(f"[yellow]fault[/]: order service SIGKILLed after committing {ns['order_id']}, before sending")
        order = self.start_app("order", "order", "orders.db")  # restarted; adopts the dead one's spool

        # 2. the network to the broker cut during a send; the app swallows the error
        sf = self.new_order("send_failed")
        self.proxy.cut()
        self.pay(sf)
        order.wait_event("send_error", order_id=sf["order_id"], timeout=30)
        self.proxy.heal()
        self.step(f"[yellow]fault[/]: network cut during the send of {sf['order_id']}; error swallowed")

        # 4. auto-commit runs ahead of the worker thread; the instance is SIGKILLed
        for g in GROUPS:
            wait_until(partial(self.caught_up, g), 60, f"{g} caught up before the crash")
        slow = self.new_order("lost_in_consumer", user="slow-1")
        self.fault(PAYMENT_API_HANGS, True)
        self.pay(slow)
        victim = self.wait_logged("red-packet", "slow_payment", 30, "a red-packet instance to start the slow payment",
                                  order_id=slow["order_id"])
        rec = victim.find("processing", order_id=slow["order_id"])[-1]
        # the victim's own auto-commit (confirmed to it by the broker) has passed the in-flight message
        victim.wait(lambda: any(int(c["offsets"].get(str(rec["partition"]), -1)) > rec["offset"]
                                for c in victim.find("auto_committed")), 30,
                    "auto-commit to pass the in-flight message")
        victim.kill()
        self.fault(PAYMENT_API_HANGS, False)  # the payment API is back (for the survivor, and the replay)
        self.dead_spools.append(self.workdir / "spool" / victim.name)
        rp_survivor = rp2 if victim is rp1 else rp1
        self.step(f"[yellow]fault[/]: {victim.name} SIGKILLed mid-payment of {slow['order_id']} "
                  "after auto-commit covered it")

        # 7. processed, killed before the manual commit, redelivered after the rebalance (meanwhile the
        # red-packet group rebalances: another group, the two do not disturb each other)
        wait_until(partial(self.caught_up, "points"), 30, "points caught up")
        r = self.new_order("redelivered")
        self.pay(r)
        victim = self.wait_logged("points", "points", 30, "a points instance to process the order",
                                  order_id=r["order_id"], fresh=True)
        victim.kill()  # before its next commit (every 3 s)
        self.dead_spools.append(self.workdir / "spool" / victim.name)
        pts_survivor = pts2 if victim is pts1 else pts1
        rp_survivor.wait(partial(self.owns_both, rp_survivor), 60, "the surviving red-packet instance to take over")
        self.step(f"{rp_survivor.name} took over the red-packet partitions")
        pts_survivor.wait(partial(self.owns_both, pts_survivor), 60, "the surviving points instance to take over")
        pts_survivor.wait_event("points", order_id=r["order_id"], fresh=False, timeout=60)
        self.step(f"[yellow]fault[/]: {victim.name} SIGKILLed after processing {r['order_id']}, before "
                  "committing; redelivered to the survivor after the rebalance (idempotent)")

        # traffic after the faults
        batch = [self.new_order("delivered") for _ in range(max(4, self.scale // 4))]
        for o in batch:
            self.pay(o)
        self.done_everywhere([o["order_id"] for o in batch])
        self.settle()
        self.step(f"{len(batch)} more orders delivered after the faults; every service shipped its audit events")
