"""The bus: one ``Broker`` contract, two implementations.

``MemoryBroker`` (``runtime.bus.memory``) is a product feature for unit tests and single-process
runs; ``KafkaBroker`` (``runtime.bus.kafka``) talks to Kafka or Tansu through aiokafka. Importing
this package does not import aiokafka: use :func:`runtime.bus.factory.broker_from_settings`, or
import the implementation module you want.
"""

from runtime.bus.base import (
    Broker,
    BrokerClosedError,
    BrokerError,
    BrokerNotStartedError,
    BrokerUnavailableError,
    Delivery,
    OffsetTracker,
    Subscription,
    TopicPartition,
)

__all__ = [
    "Broker",
    "BrokerClosedError",
    "BrokerError",
    "BrokerNotStartedError",
    "BrokerUnavailableError",
    "Delivery",
    "OffsetTracker",
    "Subscription",
    "TopicPartition",
]
