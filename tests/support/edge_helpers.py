"""Helpers for tests and benchmarks that drive a real edge: tokens, servers, process stacks.

* :class:`SigningKey` mints EdDSA tokens (and its public half is what an auth service hands out);
  :data:`TEST_KEY` is a fixed one, so node processes and tests agree on it without talking.
* :func:`serve` runs an ASGI app under uvicorn on a free 127.0.0.1 port, in-process.
* :func:`edge_stack` starts, as production runs them, ``greenroom run`` node processes for the
  test actors of :mod:`tests.support.edge_actors` and a ``greenroom edge`` process in front of
  them, on Kafka (Tansu) and Redis; it waits for a real HTTP round trip through the bus before
  yielding and stops every process it started (SIGTERM, then SIGKILL) however the block ends.

Heavy clients (uvicorn, httpx, redis) are imported where used, so node processes that import
:mod:`tests.support.edge_actors` (and through it this module) stay light.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm

from actors.auth.contracts import PublicKey
from runtime.config import ENV_PREFIX, Settings

ROOT: Final = Path(__file__).resolve().parents[2]
GREENROOM: Final = Path(sys.executable).with_name("greenroom")
ACTORS: Final = "tests.support.edge_actors"

ISSUER: Final = "greenroom-e2e"
AUDIENCE: Final = "greenroom-e2e-api"


# --- tokens


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 signing key with its ``kid``: mints tokens, publishes its public half."""

    kid: str
    private: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    @classmethod
    def from_seed(cls, kid: str, seed: bytes) -> SigningKey:
        """The same key in every process that passes the same ``seed`` (tests only)."""
        return cls(kid, Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed).digest()))

    def public(self) -> PublicKey:
        """The public key as the auth service's contract carries it."""
        jwk = json.loads(OKPAlgorithm.to_jwk(self.private.public_key()))
        return PublicKey(kid=self.kid, kty=jwk["kty"], crv=jwk["crv"], x=jwk["x"], alg="EdDSA")

    def token(
        self,
        sub: str = "user-1",
        *,
        roles: Sequence[str] = (),
        exp_in: float = 300,
        aud: str = AUDIENCE,
        iss: str = ISSUER,
        kid: str | None = None,
    ) -> str:
        """A signed access token; ``exp_in`` < 0 makes an expired one."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": sub,
            "iss": iss,
            "aud": aud,
            "iat": now,
            "exp": now + int(exp_in),
        }
        if roles:
            claims["roles"] = list(roles)
        return jwt.encode(claims, self.private, algorithm="EdDSA", headers={"kid": kid or self.kid})

    def bearer(self, sub: str = "user-1", **claims: Any) -> dict[str, str]:
        """``{"Authorization": "Bearer <token>"}`` for :meth:`token` with these claims."""
        return {"Authorization": f"Bearer {self.token(sub, **claims)}"}


TEST_KEY: Final = SigningKey.from_seed("e2e-k1", b"greenroom end-to-end test signing key")
"""The key the test auth service publishes and tests sign with (never use outside tests)."""


def unsigned_token(sub: str = "mallory", *, kid: str = TEST_KEY.kid) -> str:
    """A well-formed token with ``alg: none`` and otherwise valid claims."""
    now = int(time.time())
    claims = {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": now + 300}
    return jwt.encode(claims, None, algorithm="none", headers={"kid": kid})


# --- in-process server


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Run ``app`` under uvicorn on a free 127.0.0.1 port, in this event loop; yields its URL."""
    import anyio
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, lifespan="on", log_level="warning", ws="none", http="h11", access_log=False
    )
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(20):
            # uvicorn exposes start-up only as a flag.
            while not server.started:
                if server.should_exit:
                    raise RuntimeError("server failed to start")
                await anyio.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
    sock.close()


# --- processes


def wait_until(predicate: Callable[[], bool], *, within: float, what: str) -> None:
    """Poll ``predicate`` until true; raise TimeoutError naming ``what`` after ``within`` s."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {within:.0f}s waiting for {what}")
        time.sleep(0.05)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # The kernel SIGKILLs the child if the test process dies first, so no server outlives a
    # crashed or killed test run. PR_SET_PDEATHSIG = 1.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


@dataclass
class ServiceProcess:
    """One child process with its output in a log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509 - only prctl, no locks
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL, at once (what a crash or an OOM kill looks like)."""
        if self.alive:
            assert self.popen is not None
            self.popen.kill()
            self.popen.wait()

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (a graceful drain), then SIGKILL after ``timeout``; returns the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def stack_settings(bootstrap: str, redis_url: str, prefix: str, **overrides: Any) -> Settings:
    """Settings for a test deployment on Tansu (DESIGN.md: its producer and fetch limits)."""
    values: dict[str, Any] = {
        "broker": "kafka",
        "kafka_bootstrap": bootstrap,
        "kafka_idempotence": False,
        "kafka_fetch_max_wait_ms": 5,
        "kafka_session_timeout_ms": 6_000,
        "kafka_heartbeat_interval_ms": 500,
        "commit_interval_s": 0.2,
        "partitions": 4,
        "topic_prefix": prefix,
        "redis_url": redis_url,
        "shutdown_timeout_s": 5.0,
        "log_format": "json",
    }
    values.update(overrides)
    return Settings(**values)


def process_env(settings: Settings) -> dict[str, str]:
    """This process's environment without its ``GREENROOM_*`` variables, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(settings.env())
    env["PYTHONUNBUFFERED"] = "1"  # so a failed start-up's log is complete when it is printed
    return env


def node_process(
    actor: str, settings: Settings, log_dir: Path, *, name: str | None = None
) -> ServiceProcess:
    """``greenroom run <actor> --health-file ...`` (not started)."""
    name = name or actor.rsplit(":", 1)[-1].lower()
    return ServiceProcess(
        name,
        [
            str(GREENROOM),
            "run",
            actor,
            "--app-dir",
            str(ROOT),
            "--health-file",
            str(log_dir / f"{name}.health.json"),
        ],
        process_env(settings),
        log_dir / f"{name}.log",
    )


def node_running(process: ServiceProcess) -> bool:
    """Whether the node's heartbeat file says it runs (its consumer has its first assignment).

    Raises:
        RuntimeError: the process has exited.
    """
    if not process.alive:
        raise RuntimeError(f"{process.name} exited early:\n{process.tail()}")
    health = process.log.with_name(f"{process.name}.health.json")
    try:
        return bool(json.loads(health.read_text()).get("state") == "running")
    except (FileNotFoundError, json.JSONDecodeError):
        return False


def edge_process(
    settings: Settings,
    log_dir: Path,
    port: int,
    *,
    redis_prefix: str,
    routes: str = f"{ACTORS}:ROUTES",
    args: Sequence[str] = (),
    name: str = "edge",
) -> ServiceProcess:
    """``greenroom edge`` for the test routes, issuer and audience (not started)."""
    return ServiceProcess(
        name,
        [
            str(GREENROOM),
            "edge",
            "--app-dir",
            str(ROOT),
            "--port",
            str(port),
            "--routes",
            routes,
            "--jwt-issuer",
            ISSUER,
            "--jwt-audience",
            AUDIENCE,
            "--redis-prefix",
            redis_prefix,
            *args,
        ],
        process_env(settings),
        log_dir / f"{name}.log",
    )


def round_trip_ok(url: str) -> bool:
    """One ``GET /ping/0`` through the bus answered 200 (short timeout, no exceptions)."""
    import httpx

    try:
        return httpx.get(f"{url}/ping/0", timeout=3.0).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class EdgeStack:
    """A running edge in front of node processes; what a test needs to talk to and break it."""

    url: str
    settings: Settings
    redis_prefix: str
    edge: ServiceProcess
    auth: ServiceProcess
    things: list[ServiceProcess]
    log_dir: Path

    def logs(self, lines: int = 30) -> str:
        """The tail of every process's log (printed when a start-up fails)."""
        return "\n".join(
            f"--- {p.name} (pid {p.pid if p.popen else '-'})\n{p.tail(lines)}"
            for p in (self.edge, self.auth, *self.things)
        )


@contextmanager
def edge_stack(
    *,
    bootstrap: str,
    redis_url: str,
    log_dir: Path,
    unique: str,
    things_replicas: int = 1,
    edge_args: Sequence[str] = (),
    **overrides: Any,
) -> Iterator[EdgeStack]:
    """Nodes for ``TestAuth`` and ``Things`` (``things_replicas`` of them) and an edge, on Kafka.

    Topics are prefixed ``e2e<unique>.`` and the edge's Redis keys ``test:e2e:<unique>:``, so
    concurrent runs never share state; those keys are deleted at the end. ``overrides`` are
    :class:`Settings` fields for every process. Yields once ``GET /ping/0`` went through the
    bus and back.

    Raises:
        TimeoutError: a node or the edge did not come up (the message carries their logs).
    """
    settings = stack_settings(bootstrap, redis_url, f"e2e{unique}.", **overrides)
    redis_prefix = f"test:e2e:{unique}:"
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    stack = EdgeStack(
        url=f"http://127.0.0.1:{port}",
        settings=settings,
        redis_prefix=redis_prefix,
        edge=edge_process(settings, log_dir, port, redis_prefix=redis_prefix, args=edge_args),
        auth=node_process(f"{ACTORS}:TestAuth", settings, log_dir, name="auth"),
        things=[
            node_process(f"{ACTORS}:Things", settings, log_dir, name=f"things-{i}")
            for i in range(things_replicas)
        ],
        log_dir=log_dir,
    )
    try:
        try:
            # The nodes create their topics; the edge only publishes to them.
            stack.auth.start()
            for node in stack.things:
                node.start()
                # One at a time: each start waits out the rebalance the previous one caused.
                wait_until(functools.partial(node_running, node), within=60, what=node.name)
            wait_until(lambda: node_running(stack.auth), within=60, what="the auth node")
            stack.edge.start()
            wait_until(lambda: _edge_up(stack), within=90, what="the edge to answer a round trip")
        except (TimeoutError, RuntimeError) as exc:
            raise TimeoutError(f"{exc}\n{stack.logs()}") from exc
        yield stack
    finally:
        for process in (stack.edge, *stack.things, stack.auth):
            process.stop()
        delete_keys(redis_url, redis_prefix)


StackFactory = Callable[..., AbstractContextManager[EdgeStack]]
"""Starts an :func:`edge_stack` on given infrastructure (the e2e ``start_stack`` fixture)."""


def _edge_up(stack: EdgeStack) -> bool:
    if not stack.edge.alive:
        raise RuntimeError(f"the edge exited early:\n{stack.edge.tail()}")
    return round_trip_ok(stack.url)


def delete_keys(redis_url: str, prefix: str) -> None:
    """Delete every Redis key under ``prefix`` (a test's rate limits and idempotency keys)."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
    except redis.RedisError as exc:
        print(f"could not delete test keys {prefix}*: {exc}", file=sys.stderr)
    finally:
        client.close()
