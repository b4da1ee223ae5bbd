"""Fixtures for the deploy tests: the compose file, its schema, the rendered Kubernetes base."""

from tests.unit.deploy._deployfiles import compose, compose_schema, k8s_docs

__all__ = ["compose", "compose_schema", "k8s_docs"]
