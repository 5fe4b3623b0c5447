"""Reconcile cases beside the scenario of tests/test_reconcile.py: how the queries are declared for a
cluster, replays of messages rebuilt from the source of truth, half messages, commits without an
offset. Stores: chDB and the 18.16 server (``store`` fixture)."""
from __future__ import annotations
def test_cluster_declarations_of_the_reconcile_queries():
    """On a cluster (tracer/store/cluster.py): pass 1 runs on every shard over its own whole messages
    (only counts and candidates travel); the per-message aggregations of the evidence queries finish on
    the shards. tests/test_cluster.py checks the answers equal one server's."""
    from tracer.analysis import passes
    from tracer.analysis.sql import Ident, render
    from tracer.store.cluster import ShardLocal, declared

    assert declared(passes.scan_msg_sql(None, False)) is ShardLocal.PER_SHARD
    assert declared(passes.scan_pairs_sql(None)) is ShardLocal.PER_SHARD
    for name in ("reconcile_frontier", "reconcile_queue_order", "reconcile_queue_sends", "reconcile_replay_runs"):
        assert declared(render(name)) is ShardLocal.GROUP_BY, name
    assert declared(render("reconcile_resolve", hashes=Ident("h_x"))) is ShardLocal.GROUP_BY
