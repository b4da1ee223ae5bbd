"""The kustomize base against Kubernetes' JSON schemas (kubernetes-validate) and KEDA's shape."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from tests.unit.deploy._deployfiles import DEPLOY, SCHEMAS, actors, of_kind

# The oldest Kubernetes we support and the newest the schema package knows.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
KEDA_SCHEMA = json.loads((SCHEMAS / "keda-scaledobject-v1alpha1.json").read_text())


def _validate(doc: dict[str, Any], version: str) -> None:
    if doc["apiVersion"].startswith("keda.sh/"):
        # A CRD: kubernetes-validate has only built-in kinds, so use the vendored KEDA schema.
        jsonschema.validate(doc, KEDA_SCHEMA)
        return
    kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_is_valid_for_kubernetes(k8s_docs, version: str) -> None:
    failures = []
    for doc in k8s_docs:
        try:
            _validate(doc, version)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            failures.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc}")
    assert failures == []


@pytest.mark.parametrize(
    ("kind", "mutate"),
    [
        ("Deployment", lambda d: d["spec"]["template"]["spec"]["containers"][0].update(imag="x")),
        ("Deployment", lambda d: d["spec"].update(replicas="two")),
        ("PodDisruptionBudget", lambda d: d["spec"].update(maxUnavalable=1)),
        ("ScaledObject", lambda d: d["spec"].update(maxReplicas=3)),
        ("ScaledObject", lambda d: d["spec"]["triggers"][0]["metadata"].update(lagThreshold=5)),
    ],
)
def test_validation_rejects_a_broken_manifest(k8s_docs, kind, mutate) -> None:
    # The checks above must have teeth: one typo in one object fails.
    doc = copy.deepcopy(next(d for d in k8s_docs if d["kind"] == kind))
    mutate(doc)
    with pytest.raises((kubernetes_validate.ValidationError, jsonschema.ValidationError)):
        _validate(doc, K8S_VERSIONS[-1])


def test_kustomization_lists_every_manifest_file() -> None:
    import yaml

    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    files = {
        str(p.relative_to(DEPLOY / "k8s"))
        for p in (DEPLOY / "k8s").rglob("*.yaml")
        if p.name != "kustomization.yaml"
    }
    assert set(kustomization["resources"]) == files


def test_each_actor_has_deployment_pdb_and_lag_autoscaling(k8s_docs) -> None:
    deployments = of_kind(k8s_docs, "Deployment")
    pdbs = of_kind(k8s_docs, "PodDisruptionBudget")
    scaled = of_kind(k8s_docs, "ScaledObject")
    secrets = of_kind(k8s_docs, "Secret")
    for actor in actors():
        deployment = deployments.get(actor)
        assert deployment is not None, f"no Deployment for actor {actor!r}"
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["args"][:2] == ["run", actor]
        assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
        assert pdbs[actor]["spec"]["selector"] == deployment["spec"]["selector"]
        assert scaled[actor]["spec"]["scaleTargetRef"]["name"] == actor
        assert scaled[actor]["spec"]["triggers"][0]["type"] == "kafka"
        assert pod["volumes"][1]["secret"]["secretName"] in secrets


def test_pods_are_locked_down_and_probed(k8s_docs) -> None:
    for name, deployment in of_kind(k8s_docs, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == 10001, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert probe in container, f"{name}: no {probe}"
            assert container["resources"]["limits"]["memory"], name
            assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), name


def test_edge_is_served_and_scaled_on_cpu(k8s_docs) -> None:
    service = of_kind(k8s_docs, "Service")["edge"]
    deployment = of_kind(k8s_docs, "Deployment")["edge"]
    assert service["spec"]["selector"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    hpa = of_kind(k8s_docs, "HorizontalPodAutoscaler")["edge"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "edge"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
