"""Choose a broker from settings, importing the Kafka client only when it is chosen."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.bus.base import Broker

if TYPE_CHECKING:
    from runtime.config import Settings

__all__ = ["broker_from_settings"]


def broker_from_settings(settings: Settings) -> Broker:
    """A new, not yet started broker for ``settings.broker`` (``"kafka"`` or ``"memory"``).

    Raises:
        BrokerError: ``kafka`` was chosen without ``kafka_bootstrap``.
    """
    if settings.broker == "memory":
        from runtime.bus.memory import MemoryBroker

        return MemoryBroker(
            commit_interval_s=settings.commit_interval_s, max_batch=settings.kafka_max_batch
        )
    from runtime.bus.kafka import KafkaBroker

    return KafkaBroker.from_settings(settings)
