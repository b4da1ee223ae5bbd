"""S2: a kill injected between the database commit and the acknowledgement.

``greenroom up`` supervises two Ledger nodes (tests/chaos/actors.py) on Tansu and Postgres. For a
few chosen messages the node ``os._exit``s right after the inbox transaction committed and before
the delivery is acknowledged: the worst instant for exactly-once. ``up`` restarts the node, the
group rebalances, the message is redelivered (to the restarted node or the other replica), the
inbox finds its row and acknowledges it without acting again.

Checks: every published message has exactly one effect row (no loss, no duplicate effect); every
message whose node died after its commit was seen again and deduplicated by the inbox.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import pytest

from runtime.bus.factory import broker_from_settings
from runtime.codec import encode
from runtime.config import load_settings
from runtime.infra.tansu import TansuServer
from runtime.messages import Envelope
from tests.chaos._harness import UpProcess, base_env, start_up, write_summary
from tests.chaos.actors import Credit, Ledger

pytestmark = [pytest.mark.chaos, pytest.mark.kafka, pytest.mark.postgres, pytest.mark.timeout(240)]

PARTITIONS = 4
MESSAGES = 240
DIE_EVERY = 80  # seq 80, 160 and 240 kill their node after the commit
RATE_PER_S = 40


def _duplicates_seen(logs: str) -> set[str]:
    """Message ids the inbox acknowledged as already handled (from the nodes' JSON logs)."""
    seen = set()
    for line in logs.splitlines():
        if '"inbox.duplicate"' not in line:
            continue
        try:
            seen.add(json.loads(line)["message_id"])
        except (ValueError, KeyError):
            continue
    return seen


async def test_s2_kill_between_commit_and_ack_is_deduplicated(
    tansu: TansuServer, postgres_url: str, unique: str, tmp_path: Path, ups: list[UpProcess]
) -> None:
    import asyncpg

    from adapters.postgres import drop_actor

    data_name = f"chaos_s2_{unique}"
    die_dir = tmp_path / "deaths"
    die_dir.mkdir()
    env = base_env(
        tansu.bootstrap,
        unique,
        tmp_path / "run",
        GREENROOM_PARTITIONS=str(PARTITIONS),
        GREENROOM_POSTGRES_URL=postgres_url,
        CHAOS_DATA_NAME=data_name,
        CHAOS_DIE_EVERY=str(DIE_EVERY),
        CHAOS_DIE_DIR=str(die_dir),
    )
    settings = load_settings(env)
    topic = Ledger.commands_topic(settings)
    admin = await asyncpg.connect(postgres_url)
    published: dict[str, int] = {}
    try:
        up = start_up(
            ups,
            [
                "--actors",
                "tests.chaos.actors:Ledger",
                "--scale",
                "ledger=2",
                "--no-edge",
                "--max-restarts",
                "20",
                "--period",
                "60",
                "--backoff-base",
                "0.2",
                "--backoff-cap",
                "1",
            ],
            env,
            tmp_path,
        )
        await up.wait_running(2, within=120)
        started = time.monotonic()
        broker = broker_from_settings(settings)
        async with broker:
            await broker.ensure_topics({topic: PARTITIONS})
            for seq in range(1, MESSAGES + 1):
                account = f"acc-{seq % 12}"
                type_tag, body = encode(Credit(account=account, amount=seq, seq=seq))
                envelope = Envelope.new(type_tag, body, key=account)
                with anyio.fail_after(30):
                    await broker.publish(topic, envelope)
                published[envelope.id] = seq
                await anyio.sleep(1 / RATE_PER_S)

        counts_sql = f'SELECT message_id, count(*) FROM "{data_name}".effects GROUP BY message_id'

        async def effects() -> dict[str, int]:
            return {row[0]: row[1] for row in await admin.fetch(counts_sql)}

        deaths = {int(p.name.removeprefix("died-")): p.read_text() for p in die_dir.iterdir()}
        died_ids = set(deaths.values())
        with anyio.move_on_after(150):
            # Every message has its effect, and every death's message was redelivered and met
            # the inbox (it may arrive after the effects are all there).
            while not (
                set(published) <= set(await effects())
                and died_ids <= _duplicates_seen(up.slot_logs())
                and len(deaths) == MESSAGES // DIE_EVERY
            ):
                await anyio.sleep(0.25)
                deaths = {
                    int(p.name.removeprefix("died-")): p.read_text() for p in die_dir.iterdir()
                }
                died_ids = set(deaths.values())
        finished = time.monotonic() - started
        done = await effects()
        deduplicated = _duplicates_seen(up.slot_logs())
        lost = sorted(seq for mid, seq in published.items() if mid not in done)
        duplicated = sorted(published.get(mid, -1) for mid, n in done.items() if n > 1)
        state = up.state()
        restarts = {
            f"{p.actor}-{p.replica}": p.restarts for p in (state.processes if state else [])
        }
        balance_sql = f'SELECT coalesce(sum(balance), 0) FROM "{data_name}".balances'
        balance_total = int(await admin.fetchval(balance_sql))
        write_summary(
            "s2_kill_after_commit",
            {
                "published": len(published),
                "kills_after_commit": len(deaths),
                "killed_at_seq": sorted(deaths),
                "node_restarts": restarts,
                "effects": sum(done.values()),
                "lost": len(lost),
                "duplicated_effects": len(duplicated),
                "killed_messages_redelivered_and_deduplicated": len(died_ids & deduplicated),
                "redeliveries_deduplicated_total": len(deduplicated),
                "balance_total": balance_total,
                "balance_expected": sum(published.values()),
                "all_done_after_s": round(finished, 3),
            },
        )
        assert len(deaths) == MESSAGES // DIE_EVERY, f"deaths: {sorted(deaths)}"
        assert sum(restarts.values()) >= len(deaths)  # up restarted every node that died
        assert not lost, f"{len(lost)} messages never handled (seqs {lost[:20]})"
        assert not duplicated, f"effects done twice for seqs {duplicated[:20]}"
        assert died_ids <= deduplicated, (
            "a message committed before its node died was not seen again"
        )
        assert balance_total == sum(published.values())
        assert await up.stop() == 0, up.output()
    finally:
        await admin.close()
        await drop_actor(postgres_url, data_name)
