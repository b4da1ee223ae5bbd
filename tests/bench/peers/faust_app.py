"""faust-streaming's side of the peer benchmark (runs in its own venv, .run/peers/faust-venv).

    FAUST_BOOTSTRAP=127.0.0.1:9092 FAUST_APP_ID=bench-faust-x FAUST_DATADIR=... \
        python faust_app.py worker -l warning --web-host 127.0.0.1 --web-port 8001

One worker process holds both halves, as faust is meant to run: its web server (aiohttp) takes
``POST /lookup`` and calls ``lookup.ask(...)``; the agent consumes the request topic over Kafka
and answers on the app's reply topic, which the same worker consumes to complete the request.

Settings that make it the same workload as the others:

* ``producer_acks=-1`` (acks=all); aiokafka's producer is not idempotent by default, which
  Tansu needs (it refuses InitProducerId);
* fetch wait 5 ms: faust-streaming 0.15.3 hard-codes ``fetch_max_wait_ms=1500`` when it builds
  its consumer (faust/transport/drivers/aiokafka.py, ``_create_worker_consumer``) and has no
  setting for it. Tansu does not wake a waiting fetch when data arrives, so every reply would
  wait up to 1.5 s; :func:`_short_fetch_wait` forces 5 ms, the value every peer uses;
* 12 partitions for the request topic, as Greenroom's ``lookup.commands``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiokafka
import faust
from faust.web import Request, Response, View
from workload import make_table

FETCH_MAX_WAIT_MS = 5
PARTITIONS = 12


def _short_fetch_wait() -> None:
    """Make every aiokafka consumer faust builds use ``FETCH_MAX_WAIT_MS`` (see the docstring)."""
    original = aiokafka.AIOKafkaConsumer.__init__

    def init(self: Any, *topics: Any, **kwargs: Any) -> None:
        kwargs["fetch_max_wait_ms"] = FETCH_MAX_WAIT_MS
        original(self, *topics, **kwargs)

    aiokafka.AIOKafkaConsumer.__init__ = init  # type: ignore[method-assign]  # see docstring


_short_fetch_wait()

app = faust.App(
    os.environ["FAUST_APP_ID"],
    broker=f"kafka://{os.environ['FAUST_BOOTSTRAP']}",
    datadir=os.environ["FAUST_DATADIR"],
    producer_acks=-1,
    topic_partitions=PARTITIONS,
    topic_replication_factor=1,
    value_serializer="json",
    web_enabled=True,
)

requests_topic = app.topic(f"{os.environ['FAUST_APP_ID']}-lookup", partitions=PARTITIONS)
TABLE = make_table()


@app.agent(requests_topic)
async def lookup(stream: Any) -> Any:
    async for request in stream:
        key = request["key"]
        yield {"key": key, "value": TABLE.get(key, "")}


@app.page("/lookup")
class LookupView(View):
    async def post(self, request: Request) -> Response:
        body = await request.json()
        reply = await lookup.ask(value=body, key=body["key"])
        return self.json(reply)


if __name__ == "__main__":
    app.main()
