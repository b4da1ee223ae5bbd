"""Settings from GREENROOM_* variables over an optional TOML file; errors name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.config import Settings, SettingsError, load_settings


def test_defaults_without_environment() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert settings.broker == "kafka"


def test_environment_values_are_decoded_to_their_types() -> None:
    settings = load_settings(
        {
            "GREENROOM_BROKER": "memory",
            "GREENROOM_EDGE_PORT": "8081",
            "GREENROOM_KAFKA_IDEMPOTENCE": "false",
            "GREENROOM_COMMIT_INTERVAL_S": "0.25",
            "PATH": "/usr/bin",  # not ours: ignored
        }
    )
    assert settings.broker == "memory"
    assert settings.edge_port == 8081
    assert settings.kafka_idempotence is False
    assert settings.commit_interval_s == 0.25


def test_bad_value_names_the_setting() -> None:
    with pytest.raises(SettingsError, match="GREENROOM_EDGE_PORT"):
        load_settings({"GREENROOM_EDGE_PORT": "abc"})


def test_out_of_range_value_names_the_setting() -> None:
    with pytest.raises(SettingsError, match="GREENROOM_EDGE_PORT"):
        load_settings({"GREENROOM_EDGE_PORT": "70000"})
    with pytest.raises(SettingsError, match="GREENROOM_PARTITIONS"):
        load_settings({"GREENROOM_PARTITIONS": "0"})
    with pytest.raises(SettingsError, match="GREENROOM_KAFKA_LINGER_MS"):
        load_settings({"GREENROOM_KAFKA_LINGER_MS": "-1"})


def test_kafka_broker_takes_its_producer_linger_from_settings() -> None:
    from runtime.bus.kafka import KafkaBroker

    settings = load_settings(
        {"GREENROOM_KAFKA_BOOTSTRAP": "127.0.0.1:9", "GREENROOM_KAFKA_LINGER_MS": "7"}
    )
    assert KafkaBroker.from_settings(settings).linger_ms == 7


def test_bad_choice_names_the_setting() -> None:
    with pytest.raises(SettingsError, match="GREENROOM_BROKER"):
        load_settings({"GREENROOM_BROKER": "rabbit"})


def test_unknown_greenroom_variable_is_rejected() -> None:
    with pytest.raises(SettingsError, match="GREENROOM_KAFKA_BOOTSTRAPP"):
        load_settings({"GREENROOM_KAFKA_BOOTSTRAPP": "x:9092"})


def test_toml_file_is_overlaid_by_environment(tmp_path: Path) -> None:
    path = tmp_path / "greenroom.toml"
    path.write_text('kafka_bootstrap = "file:9092"\npartitions = 3\nedge_port = 9000\n')
    settings = load_settings({"GREENROOM_CONFIG": str(path), "GREENROOM_EDGE_PORT": "9100"})
    assert settings.kafka_bootstrap == "file:9092"
    assert settings.partitions == 3
    assert settings.edge_port == 9100
    assert load_settings({}, config_file=path).edge_port == 9000


def test_bad_toml_names_the_config_setting(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("partitions = = 3")
    with pytest.raises(SettingsError, match="GREENROOM_CONFIG"):
        load_settings({"GREENROOM_CONFIG": str(path)})
    with pytest.raises(SettingsError, match="GREENROOM_CONFIG"):
        load_settings({"GREENROOM_CONFIG": str(tmp_path / "missing.toml")})


def test_env_round_trips_non_defaults() -> None:
    settings = Settings(broker="memory", kafka_idempotence=False, edge_port=8123)
    assert settings.env() == {
        "GREENROOM_BROKER": "memory",
        "GREENROOM_KAFKA_IDEMPOTENCE": "false",
        "GREENROOM_EDGE_PORT": "8123",
    }
    assert load_settings(settings.env()) == settings
