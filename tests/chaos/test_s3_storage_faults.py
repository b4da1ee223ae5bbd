"""S3, storage leg: object storage slowed, then cut, through the fault proxy; then healed.

``greenroom up`` runs the auth service and the files service (tests/chaos/shop_actors.py
``ChaosFiles`` with ``CHAOS_FAST_BREAKER=1``: its bucket's policy times out after 1 s, retries
once, and a breaker over 10 calls opens for 2 s); the edge runs the shop's routes. Every byte
between the files service and SeaweedFS goes through a
:class:`~runtime.testing.fault_proxy.FaultProxy` (``GREENROOM_S3_ENDPOINT`` points at it, so IAM
provisioning, the service's own calls and the presigned URLs it signs all do).

Files are staged while storage is healthy: declared through the edge (``POST /files``) and their
bytes PUT to the presigned URL. The load is ``POST /files/{id}/complete`` through the edge, which
makes the files service check the stored object (HEAD and a ranged GET, through its policy);
a file whose completion was not 2xx goes back into the pool and is completed later, as a client
would retry. Phases: normal, slowed (1.5 s per chunk each way), cut (blackhole), healed.

Checks (behaviour): with storage cut, every request is answered; the breaker opens (its state
change is in the node's log, and 503 bodies name the open circuit) and the edge answers ``503``
with ``Retry-After`` (latencies recorded in the summary); after healing, requests succeed again
within a bounded wait, the breaker closes, every staged file can be completed, an upload streamed
through the edge (``PUT /files/{id}/content``) works again, and every file reads back through
the edge byte for byte: no upload acknowledged with a 2xx is lost.

Recorded, not asserted: one download streamed by the edge (``GET /files/{id}/content``) during
the cut. The edge fetches the bytes from storage itself, with its own transfer timeout and no
breaker, so the files service's breaker does not make that fail fast (see the summary's
``edge_streamed_download_during_cut``).
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from runtime.infra._process import free_port
from runtime.infra.seaweedfs import SeaweedFSServer
from runtime.infra.tansu import TansuServer
from runtime.testing.fault_proxy import FaultProxy
from tests.chaos._chaosrun import ChaosRun
from tests.chaos._harness import base_env, write_summary
from tests.chaos._phases import (
    Phases,
    account,
    breaker_changes,
    first_2xx_after,
    latency_ms,
    statuses,
)
from tests.support.up import UpProcess

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.kafka,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.s3,
    pytest.mark.timeout(300),
]

RATE_PER_S = 10.0
DEADLINE_S = 5.0
STAGED = 60  # files whose bytes are in storage before the faults; completions draw on them
PASSWORD = "correct horse battery staple 42"


async def _with_retries(call: Any, what: str, attempts: int = 8) -> httpx.Response:
    """A set-up or check request, retried (bounded) on 5xx and transport errors."""
    last = ""
    for attempt in range(attempts):
        try:
            response: httpx.Response = await call()
        except httpx.HTTPError as exc:
            last = repr(exc)
        else:
            if response.status_code < 500:
                return response
            last = f"{response.status_code} {response.text[:200]}"
        await anyio.sleep(0.5 * (attempt + 1))
    raise AssertionError(f"{what}: still failing after {attempts} attempts: {last}")


async def test_s3_storage_slowed_then_cut_opens_the_breaker_and_recovers(  # noqa: PLR0917
    tansu: TansuServer,
    postgres_url: str,
    redis_url: str,
    seaweed: SeaweedFSServer,
    unique: str,
    tmp_path: Path,
    ups: list[UpProcess],
) -> None:
    from adapters.postgres import drop_actor

    prefix = f"chaos_{unique}"
    breaker = f"gr-{prefix.replace('_', '-')}-files.s3"
    contents: dict[str, bytes] = {}  # every staged file's bytes, by file id
    pending: deque[str] = deque()  # staged files not completed with a 2xx yet
    completed_by: dict[int, str] = {}  # request index -> the file it completed with a 2xx
    probe: dict[str, Any] = {}
    try:
        async with FaultProxy("127.0.0.1", seaweed.port) as proxy:
            env = base_env(
                tansu.bootstrap,
                unique,
                tmp_path / "run",
                GREENROOM_PARTITIONS="2",
                GREENROOM_POSTGRES_URL=postgres_url,
                GREENROOM_REDIS_URL=redis_url,
                GREENROOM_S3_ENDPOINT=f"http://{proxy.host}:{proxy.port}",
                GREENROOM_S3_ACCESS_KEY=seaweed.access_key,
                GREENROOM_S3_SECRET_KEY=seaweed.secret_key,
                GREENROOM_S3_REGION=seaweed.region,
                GREENROOM_EDGE_PORT=str(free_port()),
                GREENROOM_REQUEST_TIMEOUT_S=str(DEADLINE_S),
                CHAOS_DATA_PREFIX=prefix,
                CHAOS_FAST_BREAKER="1",
            )
            run = ChaosRun(
                env=env,
                tmp=tmp_path,
                ups=ups,
                actors=["tests.chaos.shop_actors:ChaosAuth", "tests.chaos.shop_actors:ChaosFiles"],
                edge_routes="edge.api:ROUTES",
                # One client IP sends the whole load: per-IP limits would turn it into 429s.
                edge_args=["--rate-limit-ip", "0", "--rate-limit-subject", "0"],
                up_args=["--max-restarts", "50", "--period", "60", "--backoff-base", "0.2"],
            )
            try:
                await run.start(within=120)
                _, token = await account(run.base_url, f"s3-{unique}@example.com", PASSWORD)
                auth = {"Authorization": f"Bearer {token}"}
                async with httpx.AsyncClient(base_url=run.base_url, timeout=30) as http:
                    await _stage(http, auth, unique, contents, pending)

                    async def complete(client: httpx.AsyncClient, i: int) -> httpx.Response:
                        assert pending, "the staged files ran out; raise STAGED"
                        file_id = pending.popleft()
                        try:
                            response = await client.post(f"/files/{file_id}/complete", headers=auth)
                        except BaseException:
                            pending.append(file_id)
                            raise
                        if 200 <= response.status_code < 300:
                            completed_by[i] = file_id
                        else:
                            pending.append(file_id)  # completed again later, as a client would
                        return response

                    phases = Phases(run, complete, RATE_PER_S, DEADLINE_S)
                    # On a loaded machine the first calls may be slow enough to trip the
                    # (deliberately twitchy) breaker: wait for a clean batch, do not assume one.
                    baseline = await phases.until_healthy("normal")
                    assert baseline is not None, "never healthy before the faults"
                    ready_before = next(iter(completed_by.values()))
                    proxy.latency(1.5)
                    await phases.phase("slowed", 20)
                    proxy.blackhole()
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(_probe_download, run.base_url, ready_before, auth, probe)
                        await phases.phase("cut", 30)
                    proxy.heal()
                    healed_at = time.monotonic()
                    # The breaker half-opens after 2 s; trial calls that succeed close it.
                    recovered_after = await phases.until_healthy("healed")
                    left_pending = len(pending)
                    differing = list(contents)  # until read back
                    if recovered_after is not None:
                        while pending:
                            file_id = pending.popleft()
                            done = await _with_retries(
                                lambda f=file_id: http.post(f"/files/{f}/complete", headers=auth),
                                f"completing {file_id} after healing",
                            )
                            assert done.status_code == 200, done.text
                        # And the whole upload path through the edge (bytes streamed by it).
                        streamed = await _upload_through_the_edge(http, auth, unique)
                        contents[streamed[0]] = streamed[1]
                        differing = [
                            file_id
                            for file_id, body in contents.items()
                            if (
                                await _with_retries(
                                    lambda f=file_id: http.get(f"/files/{f}/content", headers=auth),
                                    f"reading {file_id} back",
                                )
                            ).content
                            != body
                        ]
                changes = breaker_changes(run, breaker)
            finally:
                # Stop the system while its storage path works, so the files node gives its keys
                # back through the proxy.
                proxy.heal()
                await run.close()
    finally:
        for name in ("auth", "files"):
            await drop_actor(postgres_url, f"{prefix}_{name}")

    cut = phases.reports["cut"].results
    unavailable = [r for r in phases.all_results() if r.status == 503]
    cut_503 = [r for r in cut if r.status == 503]
    circuit_open = [
        r for r in cut_503 if isinstance(r.body, dict) and "circuit" in str(r.body.get("message"))
    ]
    acknowledged = set(completed_by.values())
    lost = sorted(f for f in differing if f in acknowledged)
    write_summary(
        "s3_storage_faults",
        {
            "dependency": "s3",
            "breaker": breaker,
            "phases": phases.figures(),
            "cut_503_count": len(cut_503),
            "cut_503_naming_the_open_circuit": len(circuit_open),
            "cut_503_latency_ms": latency_ms(cut_503),
            "cut_unanswered": sum(1 for r in cut if r.status is None),
            "breaker_changes": changes,
            "first_2xx_after_heal_s": first_2xx_after(phases.named("healed"), healed_at),
            "recovered_after_heal_s": round(recovered_after, 3) if recovered_after else None,
            "healed_batches": len([n for n in phases.reports if n.startswith("healed-")]),
            "staged_files": STAGED,
            "files_read_back": len(contents),
            "completed_2xx_during_phases": len(acknowledged),
            "completed_after_healing": left_pending,
            "files_not_reading_back": len(differing),
            "acknowledged_2xx_lost": len(lost),
            "edge_streamed_download_during_cut": probe,
        },
    )
    assert all(r.status is not None for r in cut), f"cut: unanswered: {statuses(cut)}"
    assert cut_503, f"no 503 while storage was cut: {statuses(cut)}"
    assert all(r.retry_after for r in unavailable), "a 503 without Retry-After"
    assert circuit_open, f"no 503 said the circuit was open: {[r.body for r in cut_503[:3]]}"
    assert "open" in changes, f"the breaker {breaker} never opened: {changes}"
    assert recovered_after is not None, "requests did not succeed again after healing"
    assert changes[-1] == "closed", f"the breaker did not close after healing: {changes}"
    assert not lost, f"files completed with a 2xx but not read back intact: {lost[:10]}"
    assert not differing, f"staged files not read back intact: {differing[:10]}"


async def _stage(
    http: httpx.AsyncClient,
    auth: dict[str, str],
    unique: str,
    contents: dict[str, bytes],
    pending: deque[str],
) -> None:
    """Declare ``STAGED`` files through the edge and PUT their bytes to the presigned URLs."""
    limiter = anyio.CapacityLimiter(8)

    async def one(i: int) -> None:
        body = f"file {i} of chaos run {unique}\n".encode() * (1 + i % 7)
        async with limiter:
            declared = await _with_retries(
                lambda: http.post(
                    "/files",
                    json={"name": f"f{i}.txt", "content_type": "text/plain", "size": len(body)},
                    headers=auth,
                ),
                f"declaring file {i}",
            )
            assert declared.status_code == 201, declared.text
            ticket = declared.json()
            put = await _with_retries(
                lambda: http.put(
                    ticket["upload_url"], content=body, headers={"Content-Type": "text/plain"}
                ),
                f"uploading file {i}",
            )
            assert put.status_code == 200, put.text
        file_id = ticket["file"]["file_id"]
        contents[file_id] = body
        pending.append(file_id)

    async with anyio.create_task_group() as tg:
        for i in range(STAGED):
            tg.start_soon(one, i)


async def _upload_through_the_edge(
    http: httpx.AsyncClient, auth: dict[str, str], unique: str
) -> tuple[str, bytes]:
    """Declare a file and PUT its bytes to ``/files/{id}/content`` (the edge streams them to
    storage and completes the upload): (file id, bytes)."""
    body = f"streamed through the edge by chaos run {unique}\n".encode() * 50
    declared = await _with_retries(
        lambda: http.post(
            "/files",
            json={"name": "streamed.txt", "content_type": "text/plain", "size": len(body)},
            headers=auth,
        ),
        "declaring the streamed file",
    )
    assert declared.status_code == 201, declared.text
    file_id = str(declared.json()["file"]["file_id"])
    uploaded = await _with_retries(
        lambda: http.put(
            f"/files/{file_id}/content",
            content=body,
            headers={**auth, "Content-Type": "text/plain"},
        ),
        "uploading through the edge",
    )
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["state"] == "ready"
    return file_id, body


async def _probe_download(
    base_url: str, file_id: str, auth: dict[str, str], out: dict[str, Any]
) -> None:
    """One ``GET /files/{id}/content`` (streamed by the edge from storage) while it is cut."""
    began = anyio.current_time()
    out.update(file_id=file_id, client_timeout_s=DEADLINE_S + 2.0)
    with anyio.move_on_after(DEADLINE_S + 2.0):
        try:
            async with httpx.AsyncClient(base_url=base_url, timeout=DEADLINE_S + 2.0) as client:
                response = await client.get(f"/files/{file_id}/content", headers=auth)
            out.update(status=response.status_code, retry_after=response.headers.get("retry-after"))
        except httpx.HTTPError as exc:
            out["error"] = type(exc).__name__
    out.setdefault("status", None)
    out["latency_s"] = round(anyio.current_time() - began, 3)
