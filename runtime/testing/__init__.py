"""Test helpers shipped with the runtime: things a user's own tests need too (a fault proxy)."""

from runtime.testing.fault_proxy import FaultMode, FaultProxy

__all__ = ["FaultMode", "FaultProxy"]
