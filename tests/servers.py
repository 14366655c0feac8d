"""Real servers for the test suite: single nodes and a 3-master cluster.

Built on ``axon.embedded.ServerProcess``; every server runs on a free loopback
port with its data in a temporary directory, and the suite tears it down.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from axon.embedded import ServerProcess

AOF_ARGS = ["--appendonly", "yes", "--appendfsync", "everysec"]

CLUSTER_SLOTS = 16384


def wait_for(condition: object, *, timeout: float, what: str) -> None:
    """Poll ``condition()`` until true, failing with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@contextmanager
def single(binary: Path, directory: Path, *, args: list[str]) -> Iterator[ServerProcess]:
    """One server process, stopped on exit."""
    server = ServerProcess(binary, directory, args=args)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def cluster(binary: Path, directory: Path, *, masters: int = 3) -> Iterator[list[ServerProcess]]:
    """A Redis Cluster of ``masters`` nodes, slots split evenly, AOF on.

    Slots are assigned with CLUSTER ADDSLOTSRANGE and nodes joined with
    CLUSTER MEET; the context yields once every node reports ``cluster_state:ok``.
    """
    nodes = [
        ServerProcess(
            binary,
            directory / f"node{i}",
            args=[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "5000",
                *AOF_ARGS,
            ],
        )
        for i in range(masters)
    ]
    clients: list[redis.Redis] = []
    try:
        for node in nodes:
            node.start()
            clients.append(redis.Redis(host="127.0.0.1", port=node.port))
        per = CLUSTER_SLOTS // masters
        for i, client in enumerate(clients):
            first = i * per
            last = CLUSTER_SLOTS - 1 if i == masters - 1 else first + per - 1
            client.cluster("ADDSLOTSRANGE", first, last)
        for node in nodes[1:]:
            clients[0].cluster("MEET", "127.0.0.1", node.port)

        def ready() -> bool:
            for client in clients:
                info = client.cluster("INFO")
                if info.get("cluster_state") != "ok":
                    return False
                if int(info.get("cluster_known_nodes", 0)) != masters:
                    return False
            return True

        wait_for(ready, timeout=30, what="the cluster to converge")
        yield nodes
    finally:
        for client in clients:
            client.close()
        for node in nodes:
            node.stop()
