"""Typed settings from ``GREENROOM_*`` environment variables or a TOML file.

Every setting is a field of :class:`Settings`; its environment variable is ``GREENROOM_`` plus the
field name in upper case (``kafka_bootstrap`` -> ``GREENROOM_KAFKA_BOOTSTRAP``). A TOML file named
by ``GREENROOM_CONFIG`` supplies defaults that the environment overrides. A value that does not fit
raises :class:`SettingsError` naming the setting, so a bad deployment stops at start-up.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import msgspec

__all__ = ["ENV_PREFIX", "Settings", "SettingsError", "load_settings"]

ENV_PREFIX = "GREENROOM_"


class SettingsError(ValueError):
    """A setting is missing, unknown or has a value of the wrong form; the message names it."""


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """All of Greenroom's settings, with safe development defaults."""

    # --- bus
    broker: Literal["kafka", "memory"] = "kafka"
    kafka_bootstrap: str = ""
    kafka_idempotence: bool = True
    kafka_fetch_max_wait_ms: int = 100
    kafka_connect_timeout_s: float = 10.0
    kafka_session_timeout_ms: int = 10_000
    kafka_heartbeat_interval_ms: int = 1_000
    kafka_max_batch: int = 500
    # How long the producer waits to fill a batch. Longer batches cost the broker fewer
    # requests per record under load, and each record up to this much latency.
    kafka_linger_ms: int = 1
    commit_interval_s: float = 0.5
    partitions: int = 12
    topic_prefix: str = ""

    # --- data (empty: start an embedded server under `greenroom up` / `infra up`)
    postgres_url: str = ""
    redis_url: str = ""
    s3_endpoint: str = ""
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_region: str = "us-east-1"

    # --- processes and edge
    run_dir: str = ".run"
    edge_host: str = "127.0.0.1"
    edge_port: int = 8000
    shutdown_timeout_s: float = 10.0
    request_timeout_s: float = 5.0

    # --- logging
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "console"

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise SettingsError(f"GREENROOM_PARTITIONS must be at least 1, got {self.partitions}")
        if self.kafka_fetch_max_wait_ms < 0:
            raise SettingsError("GREENROOM_KAFKA_FETCH_MAX_WAIT_MS must not be negative")
        if self.kafka_linger_ms < 0:
            raise SettingsError("GREENROOM_KAFKA_LINGER_MS must not be negative")
        if not 0 < self.edge_port < 65536:
            raise SettingsError(f"GREENROOM_EDGE_PORT must be a TCP port, got {self.edge_port}")

    def env(self) -> dict[str, str]:
        """The non-default settings as ``GREENROOM_*`` variables, for child processes."""
        defaults = Settings()
        out: dict[str, str] = {}
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if value != getattr(defaults, name):
                out[ENV_PREFIX + name.upper()] = (
                    str(value).lower() if isinstance(value, bool) else str(value)
                )
        return out

    def topic(self, name: str) -> str:
        """``name`` with this deployment's topic prefix (used to keep test runs apart)."""
        return f"{self.topic_prefix}{name}"


def _setting_name(path: str) -> str:
    # msgspec reports the failing location as "$.field"; turn it into the variable a user sets.
    field = path.removeprefix("$.").split(".")[0].split("[")[0]
    return ENV_PREFIX + field.upper()


def load_settings(
    environ: Mapping[str, str] | None = None, *, config_file: str | Path | None = None
) -> Settings:
    """Read settings from a TOML file (optional) overlaid with ``GREENROOM_*`` variables.

    Raises:
        SettingsError: naming the setting whose value is missing, unknown or malformed.
    """
    env = os.environ if environ is None else environ
    raw: dict[str, object] = {}
    path = config_file or env.get(ENV_PREFIX + "CONFIG")
    if path:
        try:
            raw.update(tomllib.loads(Path(path).read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(
                f"GREENROOM_CONFIG={path}: cannot read settings file: {exc}"
            ) from exc
    fields = set(Settings.__struct_fields__)
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        field = name.removeprefix(ENV_PREFIX).lower()
        if field not in fields:
            raise SettingsError(f"{name} is not a Greenroom setting")
        raw[field] = value
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc)
        where = message.rsplit(" - at `", 1)
        if len(where) == 2:
            setting = _setting_name(where[1].rstrip("`"))
            given = raw.get(setting.removeprefix(ENV_PREFIX).lower())
            raise SettingsError(f"{setting}={given!r}: {where[0]}") from exc
        raise SettingsError(message) from exc
