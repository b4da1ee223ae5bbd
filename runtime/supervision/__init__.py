"""Erlang/OTP supervision as data, on anyio (DESIGN.md, Supervision).

A :class:`Supervisor` runs :class:`ChildSpec` children under one task group and restarts them by
their :class:`Restart` type and :class:`Strategy`, waiting a :class:`Backoff` between restarts and
giving up (:class:`SupervisorGaveUp`) past its :class:`RestartIntensity`. Every decision is a
:class:`Decision`, logged and counted. ``RestartIntensity`` and ``Backoff`` are pure and reused by
the process supervisor of ``greenroom up``.
"""

from runtime.supervision.backoff import Backoff
from runtime.supervision.decisions import NORMAL, Decision, DecisionKind, describe_exit
from runtime.supervision.errors import SupervisorGaveUp
from runtime.supervision.intensity import RestartIntensity, RestartWindow
from runtime.supervision.spec import ChildSpec, ChildStart, Restart
from runtime.supervision.strategies import Strategy
from runtime.supervision.supervisor import Supervisor

__all__ = [
    "NORMAL",
    "Backoff",
    "ChildSpec",
    "ChildStart",
    "Decision",
    "DecisionKind",
    "Restart",
    "RestartIntensity",
    "RestartWindow",
    "Strategy",
    "Supervisor",
    "SupervisorGaveUp",
    "describe_exit",
]
