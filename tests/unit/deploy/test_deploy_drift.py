"""Drift between the deployment files and the code: actors, settings, CLI arguments, topics."""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from runtime.config import ENV_PREFIX, Settings, load_settings
from tests.unit.deploy._deployfiles import DEPLOY, ROOT, actors, of_kind

# Read from the live Settings, so a field another change adds is known here at once.
SETTINGS_VARS = {ENV_PREFIX + name.upper() for name in Settings.__struct_fields__}
ALLOWED_VARS = SETTINGS_VARS | {ENV_PREFIX + "CONFIG"}
GREENROOM_VAR = re.compile(r"\bGREENROOM_[A-Z0-9_]+\b")


def _compose_vars(compose: dict[str, Any]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        keys = env.keys() if isinstance(env, dict) else (e.split("=", 1)[0] for e in env)
        found[name] = {k for k in keys if k.startswith(ENV_PREFIX)}
    return found


def _k8s_vars(docs: list[dict[str, Any]]) -> set[str]:
    found: set[str] = set()
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            found |= {k for k in doc["data"] if k.startswith(ENV_PREFIX)}
        spec = doc.get("spec", {})
        pod = spec.get("template", {}).get("spec", {}) if isinstance(spec, dict) else {}
        for container in pod.get("containers", []):
            found |= {
                e["name"] for e in container.get("env", []) if e["name"].startswith(ENV_PREFIX)
            }
    return found


def _dockerfile_vars() -> set[str]:
    text = (DEPLOY / "Dockerfile").read_text()
    env_blocks = re.findall(r"^ENV ((?:.*\\\n)*.*)$", text, flags=re.MULTILINE)
    return {m for block in env_blocks for m in GREENROOM_VAR.findall(block)}


def test_every_greenroom_variable_is_a_setting(compose, k8s_docs) -> None:
    used = {
        "docker-compose.yml": set().union(*_compose_vars(compose).values()),
        "deploy/k8s": _k8s_vars(k8s_docs),
        "deploy/Dockerfile": _dockerfile_vars(),
    }
    unknown = {where: sorted(names - ALLOWED_VARS) for where, names in used.items()}
    assert unknown == {where: [] for where in used}, (
        "not fields of runtime.config.Settings; the node would refuse to start"
    )
    assert all(used.values()), "the scan found nothing: it is broken, not passing"


def test_every_value_decodes_as_its_setting(compose, k8s_docs) -> None:
    # Names are not enough: "yes" for a bool or "8k" for a port would stop a node at start-up.
    configmap = of_kind(k8s_docs, "ConfigMap")["greenroom-settings"]["data"]
    environments = {"k8s ConfigMap": dict(configmap)}
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        environments[f"compose {name}"] = {str(k): str(v) for k, v in env.items()}
    for where, env in environments.items():
        settings_env = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
        settings_env.pop(ENV_PREFIX + "CONFIG", None)  # a mounted secret, checked below
        load_settings(settings_env)  # raises SettingsError naming the setting
        assert where


def test_secret_files_hold_only_settings(tmp_path: Path, k8s_docs) -> None:
    generated = subprocess.run(
        [sys.executable, str(DEPLOY / "scripts" / "gen_secrets.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert generated.returncode == 0, generated.stderr
    for service in (*actors(), "edge"):
        config = tmp_path / f"{service}.toml"
        settings = load_settings({}, config_file=config)
        assert settings.redis_url.startswith(f"redis://{service}:"), service
        if service != "edge":
            assert settings.postgres_url.startswith(f"postgresql://{service}:"), service
            assert settings.s3_access_key == service
    for name, secret in of_kind(k8s_docs, "Secret").items():
        if "greenroom.toml" in secret.get("stringData", {}):
            fields = tomllib.loads(secret["stringData"]["greenroom.toml"])
            assert set(fields) <= set(Settings.__struct_fields__), name


def _command_parser(module: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    importlib.import_module(module).add_arguments(parser)
    return parser


def test_the_cli_accepts_the_commands_the_containers_run(compose, k8s_docs) -> None:
    run = _command_parser("runtime.cli.run")
    commands = [s["command"] for n, s in compose["services"].items() if n in actors()]
    commands += [
        d["spec"]["template"]["spec"]["containers"][0]["args"]
        for n, d in of_kind(k8s_docs, "Deployment").items()
        if n in actors()
    ]
    for command in commands:
        assert command[0] == "run"
        args = run.parse_args(command[1:])
        assert args.health_file is not None, f"{command}: probes need --health-file"
    edge_module = "runtime.cli.edge"
    if importlib.util.find_spec(edge_module) is not None:
        _command_parser(edge_module).parse_args(compose["services"]["edge"]["command"][1:])


def test_autoscaling_watches_the_group_and_topic_each_actor_uses(k8s_docs) -> None:
    from runtime.registry import ActorNotFoundError, resolve_actor

    configmap = of_kind(k8s_docs, "ConfigMap")["greenroom-settings"]["data"]
    settings = load_settings({k: v for k, v in configmap.items() if k != "GREENROOM_CONFIG"})
    for actor, scaled in of_kind(k8s_docs, "ScaledObject").items():
        trigger = scaled["spec"]["triggers"][0]["metadata"]
        try:
            cls = resolve_actor(actor)
        except ActorNotFoundError:
            # Not written yet: the Actor defaults (group = name, topic = <name>.commands).
            group, topic = settings.topic(actor), settings.topic(f"{actor}.commands")
        else:
            group, topic = cls.consumer_group(settings), cls.commands_topic(settings)
        assert trigger["consumerGroup"] == group
        assert trigger["topic"] == topic
        assert trigger["bootstrapServers"] == settings.kafka_bootstrap
        # A replica beyond the partition count would hold no partition.
        assert scaled["spec"]["maxReplicaCount"] <= settings.partitions


def test_init_covers_every_actor(compose) -> None:
    sys.path.insert(0, str(DEPLOY / "scripts"))
    try:
        init_infra = importlib.import_module("init_infra")
    finally:
        sys.path.remove(str(DEPLOY / "scripts"))
    assert set(actors()) <= set(init_infra.SERVICES)
    assert set(actors()) <= set(
        compose["services"]["init-buckets"]["environment"]["SERVICES"].split()
    )
    init_secrets = {
        s["target"] for s in compose["services"]["init"]["secrets"] if isinstance(s, dict)
    }
    assert {f"{a}.toml" for a in (*actors(), "edge")} <= init_secrets


def test_the_image_copies_what_exists_and_ignores_the_rest() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    ignore = [
        line.strip()
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*", "allow-list: nothing reaches the build unless named"
    for source in re.findall(r"^COPY (?!--from)(?:--\S+ )*(\S+(?: \S+)*) \S+$", dockerfile, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), f"Dockerfile copies {path}, which does not exist"
            assert f"!{path}" in ignore, f"{path} is filtered out by Dockerfile.dockerignore"


def test_the_image_is_slim_multistage_non_root_and_secret_free() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\S+))?", text, re.M)
    assert len(stages) >= 2, "multi-stage"
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M)
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user, "no USER: the image would run as root"
    assert user[-1].split(":")[0] not in ("0", "root")
    assert re.search(r"^HEALTHCHECK .*\n?.*greenroom-healthcheck", text, re.M)
    for line in re.findall(r"^(?:ENV|ARG) .*$", text, re.M):
        assert not re.search(r"(?i)(password|secret|token|_key)\s*=", line), line


@pytest.mark.parametrize("service", ["kafka", "postgres", "redis", "minio"])
def test_infrastructure_has_data_volumes(compose, service: str) -> None:
    assert compose["services"][service]["volumes"], service
