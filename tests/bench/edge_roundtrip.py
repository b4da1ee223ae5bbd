"""Edge round trip: what HTTP -> edge -> bus -> actor -> edge costs, against two floors.

    python tests/bench/edge_roundtrip.py [--seconds 5] [--warmup 1] [--concurrency 1 16 64]
                                         [--json PATH] [--profile]

One run on one machine, one Tansu (started here), all servers up at once, every cell a fixed
time (``--warmup`` then ``--seconds`` measured), the paths measured back to back per
concurrency, the load client always a separate process keeping ``concurrency`` requests in
flight (a closed loop):

(a) ``plain``: a Litestar app under uvicorn answering ``GET /ping/{n}`` with ``Pong(n)`` as JSON
    itself: the same HTTP work with no bus;
(b) ``raw``: raw aiokafka request/reply, no HTTP: the client sends ``Ping`` to a request topic
    with ``reply_to``/``correlation_id`` headers; a raw aiokafka responder process answers on
    the client's reply topic (assigned, no group);
(c) ``edge``: ``GET /ping/{n}`` to ``greenroom edge`` -> Tansu -> ``greenroom run`` node for
    ``tests.support.edge_actors:Things`` -> Tansu -> edge (rate limits off; info-level JSON logs,
    one line per request, as deployed).

Prints req/s, p50 and p99 per cell, the ratios c/a and c/b, and how (c) compares with its target
(req/s >= 0.5 x b at 64 concurrent, p99 <= 2 x b); writes bench-results/edge_roundtrip.json.
``--profile`` samples the edge and the node with py-spy during the last (c) cell and prints
their top functions. It measures; it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402

from tests.support.edge_actors import Ping, Pong  # noqa: E402

PARTITIONS = 4
FETCH_MAX_WAIT_MS = 5  # Tansu does not wake a waiting fetch on new data (DESIGN.md)
KEYS = 1_000
REQUEST_TIMEOUT_S = 10.0
TARGET_RPS_RATIO = 0.5
TARGET_P99_RATIO = 2.0
REDIS_URL = os.environ.get("GREENROOM_REDIS_URL", "redis://127.0.0.1:6379/0")

Send = Callable[[int], Awaitable[bool]]


# --- the load client (a process of its own)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


async def drive(send: Send, concurrency: int, warmup: float, seconds: float) -> dict[str, Any]:
    """Keep ``concurrency`` requests in flight; count those that start and end in the window."""
    start = time.perf_counter() + warmup
    end = start + seconds
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    counter = 0

    async def worker() -> None:
        nonlocal counter
        while (began := time.perf_counter()) < end:
            counter += 1
            try:
                ok = await send(counter)
            except Exception as exc:  # counted, not fatal: the run goes on
                errors[type(exc).__name__] += 1
                continue
            done = time.perf_counter()
            if not ok:
                errors["status"] += 1
            elif began >= start and done <= end:
                latencies.append(done - began)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    latencies.sort()
    return {
        "concurrency": concurrency,
        "completed": len(latencies),
        "errors": dict(errors),
        "rps": len(latencies) / seconds,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


async def load_http(url: str, concurrency: int, warmup: float, seconds: float) -> dict[str, Any]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def send(i: int) -> bool:
            async with session.get(f"{url}/ping/{i % KEYS}") as response:
                await response.read()
                return response.status == 200

        return await drive(send, concurrency, warmup, seconds)


async def load_raw(
    bootstrap: str, topic: str, reply_topic: str, *, concurrency: int, warmup: float, seconds: float
) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=1
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
    )
    await producer.start()
    await consumer.start()
    pending: dict[bytes, asyncio.Future[bytes]] = {}
    encode = msgspec.json.Encoder().encode
    reply_to = reply_topic.encode()
    try:
        partition = TopicPartition(reply_topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_end(partition)

        async def read_replies() -> None:
            while True:
                batches = await consumer.getmany(timeout_ms=100, max_records=500)
                for records in batches.values():
                    for record in records:
                        correlation = dict(record.headers).get("correlation_id", b"")
                        future = pending.pop(correlation, None)
                        if future is not None and not future.done():
                            future.set_result(record.value)

        async def send(i: int) -> bool:
            correlation = uuid.uuid4().hex.encode()
            future = asyncio.get_running_loop().create_future()
            pending[correlation] = future
            try:
                await producer.send(
                    topic,
                    encode(Ping(n=i % KEYS)),
                    key=str(i % KEYS).encode(),
                    headers=[("correlation_id", correlation), ("reply_to", reply_to)],
                )
                body = await asyncio.wait_for(future, REQUEST_TIMEOUT_S)
            finally:
                pending.pop(correlation, None)
            return bool(body)

        reader = asyncio.create_task(read_replies())
        try:
            return await drive(send, concurrency, warmup, seconds)
        finally:
            reader.cancel()
    finally:
        await consumer.stop()
        await producer.stop()


# --- the servers of (a) and (b)


def serve_plain(port: int) -> None:
    """(a): the same answer as the edge's ``GET /ping/{n}``, built in the HTTP handler."""
    import uvicorn
    from litestar import Litestar, Response, get

    encode = msgspec.json.Encoder().encode

    @get("/ping/{n:int}", sync_to_thread=False)
    def ping(n: int) -> Response[bytes]:
        return Response(content=encode(Pong(n=n)), media_type="application/json")

    # Annotations are strings here (__future__), so name what they refer to.
    app = Litestar(
        [ping], logging_config=None, debug=False, signature_namespace={"Response": Response}
    )
    # As `greenroom edge` runs uvicorn.
    uvicorn.run(app, host="127.0.0.1", port=port, ws="none", access_log=False, log_level="warning")


async def raw_responder(bootstrap: str, topic: str) -> None:
    """(b): answers each ``Ping`` on its ``reply_to`` topic with a ``Pong``."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"raw-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=True,
        auto_offset_reset="latest",
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=1
    )
    decode = msgspec.json.Decoder(Ping).decode
    encode = msgspec.json.Encoder().encode
    await producer.start()
    await consumer.start()
    try:
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=100)
        print("READY", flush=True)
        while True:
            batches = await consumer.getmany(timeout_ms=100, max_records=500)
            acks = []
            for records in batches.values():
                for record in records:
                    headers = dict(record.headers)
                    pong = Pong(n=decode(record.value).n)
                    acks.append(
                        await producer.send(
                            headers["reply_to"].decode(),
                            encode(pong),
                            key=record.key,
                            headers=[("correlation_id", headers["correlation_id"])],
                        )
                    )
            for ack in acks:
                await ack
    finally:
        await consumer.stop()
        await producer.stop()


# --- the runner


def _script(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used (Linux /proc), 0.0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_load(
    mode_args: Sequence[str],
    concurrency: int,
    args: argparse.Namespace,
    servers: dict[str, int] | None = None,
) -> Any:
    """One cell; with ``servers`` (name -> pid), also the CPU seconds each used per request."""
    command = _script(
        "_load",
        *mode_args,
        "--concurrency",
        str(concurrency),
        "--warmup",
        str(args.warmup),
        "--seconds",
        str(args.seconds),
    )
    servers = servers or {}
    before = {name: cpu_seconds(pid) for name, pid in servers.items()}
    load_before = children_cpu_seconds()
    out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    used = {name: cpu_seconds(pid) - before[name] for name, pid in servers.items()}
    used["load client"] = children_cpu_seconds() - load_before
    # Per request over the whole cell (warm-up included), so the parts can be compared: on a
    # 2-core machine the path is bounded by the sum of its processes' CPU per request.
    requests = max(1, result["completed"]) * (args.warmup + args.seconds) / args.seconds
    result["cpu_ms_per_request"] = {name: 1000 * s / requests for name, s in used.items()}
    result["load1"] = os.getloadavg()[0]  # the machine's load after the cell, for the record
    return result


@contextmanager
def plain_server() -> Iterator[tuple[str, int]]:
    """(a) in a process of its own; yields its URL and pid."""
    from tests.support.edge_helpers import free_port, round_trip_ok, wait_until

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(_script("_plain", "--port", str(port)), cwd=ROOT)
    try:
        wait_until(
            lambda: server.poll() is None and round_trip_ok(url),
            within=90,
            what="the plain Litestar server",
        )
        yield url, server.pid
    finally:
        server.terminate()
        server.wait(10)


@contextmanager
def raw_server(
    bootstrap: str, concurrency: Sequence[int]
) -> Iterator[tuple[str, dict[int, str], int]]:
    """(b)'s responder in a process of its own; yields its topic, a reply topic per cell and its
    pid."""
    import anyio

    from runtime.bus.kafka import KafkaBroker

    topic = f"bench.requests.{uuid.uuid4().hex[:6]}"
    replies = {c: f"bench.replies.{uuid.uuid4().hex[:6]}.{c}" for c in concurrency}

    async def create_topics() -> None:
        async with KafkaBroker(bootstrap, idempotence=False) as admin:
            await admin.ensure_topics({topic: PARTITIONS, **dict.fromkeys(replies.values(), 1)})

    anyio.run(create_topics)
    responder = subprocess.Popen(
        _script("_raw-responder", bootstrap, topic), cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert responder.stdout is not None
        if responder.stdout.readline().strip() != "READY":
            raise RuntimeError("the raw responder did not start")
        yield topic, replies, responder.pid
    finally:
        responder.terminate()
        responder.wait(10)


def measure(
    args: argparse.Namespace, bootstrap: str, tansu_pid: int, tmp: Path
) -> tuple[dict[str, Any], str]:
    """Every cell, the three paths back to back per concurrency, so each ratio compares
    measurements taken seconds apart (a shared machine's load drifts over minutes)."""
    from tests.support.edge_helpers import edge_stack

    results: dict[str, list[Any]] = {"a": [], "b": [], "c": []}
    profile = ""
    with (
        plain_server() as (plain_url, plain_pid),
        raw_server(bootstrap, args.concurrency) as (topic, replies, responder_pid),
        edge_stack(
            bootstrap=bootstrap,
            redis_url=REDIS_URL,
            log_dir=tmp / "edge",
            unique=uuid.uuid4().hex[:10],
            edge_args=["--rate-limit-ip", "0", "--rate-limit-subject", "0"],
            log_level="info",
            partitions=PARTITIONS,
        ) as stack,
    ):
        a_pids = {"plain server": plain_pid}
        b_pids = {"raw responder": responder_pid, "tansu": tansu_pid}
        c_pids = {"edge": stack.edge.pid, "node": stack.things[0].pid, "tansu": tansu_pid}
        for c in args.concurrency:
            results["a"].append(run_load(["http", plain_url], c, args, a_pids))
            results["b"].append(run_load(["raw", bootstrap, topic, replies[c]], c, args, b_pids))
            if args.profile and c == args.concurrency[-1]:
                pids = {"edge": stack.edge.pid, "node": stack.things[0].pid}
                with profiling(pids, args.warmup + args.seconds, tmp) as report:
                    results["c"].append(run_load(["http", stack.url], c, args, c_pids))
                profile = report()
            else:
                results["c"].append(run_load(["http", stack.url], c, args, c_pids))
    return results, profile


class profiling:  # noqa: N801 - used as a context manager, like contextlib's
    """py-spy ``record`` of some processes for ``seconds``; ``report()`` after the block."""

    def __init__(self, pids: dict[str, int], seconds: float, tmp: Path) -> None:
        self.pids = pids
        self.seconds = seconds
        self.tmp = tmp
        self.spies: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}

    def __enter__(self) -> Callable[[], str]:
        spy = Path(sys.executable).with_name("py-spy")
        for name, pid in self.pids.items():
            out = self.tmp / f"profile-{name}.txt"
            # --gil: only samples holding the GIL, i.e. Python CPU time, not waiting on sockets.
            command = [str(spy), "record", "--gil", "--format", "raw", "--nonblocking"]
            command += ["--rate", "100"]
            command += ["--duration", str(int(self.seconds)), "--pid", str(pid), "-o", str(out)]
            popen = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            self.spies[name] = (popen, out)
        return self.report

    def __exit__(self, *exc: object) -> None:
        for popen, _ in self.spies.values():
            try:
                popen.wait(self.seconds + 20)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()

    def report(self, top: int = 15) -> str:
        lines = []
        for name, (popen, out) in self.spies.items():
            if not out.exists():
                error = popen.stderr.read().decode() if popen.stderr else ""
                lines.append(f"{name}: no profile ({error.strip()[:200]})")
                continue
            lines.append(f"{name}: top {top} by own / inclusive CPU time (share of GIL samples)")
            lines.extend(_top_frames(out.read_text(), top))
        return "\n".join(lines)


def _frame(raw: str) -> str:
    # py-spy raw frames read "function (path/to/file.py:line)"; keep file:function.
    function, _, where = raw.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3", str(ROOT) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{function.strip()}"


def _top_frames(collapsed: str, top: int) -> list[str]:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame(f) for f in stack.split(";") if f and not f.startswith("process ")]
        if not frames:
            continue
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return ["  (no samples)"]
    rows = [f"  own  {n / total:6.1%}  {f}" for f, n in own.most_common(top)]
    rows += [f"  incl {n / total:6.1%}  {f}" for f, n in inclusive.most_common(top)]
    return rows


def cell(results: list[Any], concurrency: int) -> dict[str, Any]:
    return next(r for r in results if r["concurrency"] == concurrency)


def summarize(data: dict[str, Any]) -> None:
    names = {"a": "plain Litestar", "b": "raw aiokafka", "c": "edge via Tansu"}
    print(
        f"edge round trip: {data['seconds']}s per cell after {data['warmup']}s warm-up, "
        f"{data['partitions']} partitions, Tansu, python {data['python']}, {data['cpus']} CPUs"
    )
    print(
        f"{'path':<18}{'conc':>6}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}{'load1':>7}"
    )
    for key, label in names.items():
        for r in data["results"][key]:
            errors = sum(r["errors"].values())
            print(
                f"{label:<18}{r['concurrency']:>6}{r['rps']:>10,.0f}{r['p50_ms']:>10.2f}"
                f"{r['p99_ms']:>10.2f}{errors:>8}{r['load1']:>7.1f}"
            )
    print(f"{'ratios':<18}{'conc':>6}{'c/a req/s':>12}{'c/b req/s':>12}{'c/b p99':>10}")
    for c in data["concurrency"]:
        a, b, e = (cell(data["results"][k], c) for k in "abc")
        print(
            f"{'':<18}{c:>6}{e['rps'] / a['rps']:>12.2f}{e['rps'] / b['rps']:>12.2f}"
            f"{e['p99_ms'] / b['p99_ms']:>10.2f}"
        )
    print("CPU ms per request, by process (the path is bounded by their sum on few cores):")
    for key, label in names.items():
        for r in data["results"][key]:
            parts = r.get("cpu_ms_per_request", {})
            total = sum(parts.values())
            detail = ", ".join(f"{name} {ms:.2f}" for name, ms in parts.items())
            print(f"  {label:<16}{r['concurrency']:>6}  total {total:.2f}: {detail}")
    t = data["target"]
    verdict = "met" if t["met"] else "NOT met"
    print(
        f"target at {t['concurrency']} concurrent: c/b req/s {t['rps_ratio']:.2f} "
        f"(>= {TARGET_RPS_RATIO}), c/b p99 {t['p99_ratio']:.2f} (<= {TARGET_P99_RATIO}): {verdict}"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    from runtime.infra.tansu import TansuServer

    with tempfile.TemporaryDirectory(prefix="greenroom-edge-bench-") as tmp_name:
        tmp = Path(tmp_name)
        tansu = TansuServer(tmp / "tansu")
        tansu.start()
        try:
            assert tansu.process.pid is not None
            results, profile = measure(args, tansu.bootstrap, tansu.process.pid, tmp)
        finally:
            tansu.stop()
    top = max(args.concurrency)
    b, e = cell(results["b"], top), cell(results["c"], top)
    rps_ratio, p99_ratio = e["rps"] / b["rps"], e["p99_ms"] / b["p99_ms"]
    return {
        "seconds": args.seconds,
        "warmup": args.warmup,
        "concurrency": args.concurrency,
        "partitions": PARTITIONS,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "results": results,
        "target": {
            "concurrency": top,
            "rps_ratio": rps_ratio,
            "p99_ratio": p99_ratio,
            "met": rps_ratio >= TARGET_RPS_RATIO and p99_ratio <= TARGET_P99_RATIO,
        },
        "profile": profile,
    }


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("_"):
        return _internal(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per cell")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured time per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--json", type=Path, default=ROOT / "bench-results" / "edge_roundtrip.json")
    parser.add_argument("--profile", action="store_true", help="py-spy the edge and node")
    args = parser.parse_args(argv)
    data = run(args)
    summarize(data)
    if data["profile"]:
        print(data["profile"])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {args.json}")
    return None


def _internal(argv: list[str]) -> None:
    """The processes the runner starts: ``_load``, ``_plain``, ``_raw-responder``."""
    role, rest = argv[0], argv[1:]
    if role == "_plain":
        parser = argparse.ArgumentParser()
        parser.add_argument("--port", type=int, required=True)
        serve_plain(parser.parse_args(rest).port)
    elif role == "_raw-responder":
        asyncio.run(raw_responder(*rest))
    elif role == "_load":
        parser = argparse.ArgumentParser()
        parser.add_argument("mode", choices=["http", "raw"])
        parser.add_argument("target", nargs="+")
        parser.add_argument("--concurrency", type=int, required=True)
        parser.add_argument("--warmup", type=float, required=True)
        parser.add_argument("--seconds", type=float, required=True)
        a = parser.parse_args(rest)
        if a.mode == "http":
            coro = load_http(a.target[0], a.concurrency, a.warmup, a.seconds)
        else:
            bootstrap, topic, reply_topic = a.target
            coro = load_raw(
                bootstrap,
                topic,
                reply_topic,
                concurrency=a.concurrency,
                warmup=a.warmup,
                seconds=a.seconds,
            )
        print(json.dumps(asyncio.run(coro)))
    else:
        raise SystemExit(f"unknown role {role}")


if __name__ == "__main__":
    main()
