"""The payments actor's client of the payment provider, behind a resilience policy.

Every call goes through the ``payments.provider`` policy: a per-attempt timeout, bounded retries
with jittered backoff on transient failures (5xx answers, network errors, timeouts; safe because
every call carries an idempotency key the provider dedupes on), and a circuit breaker that opens
when most recent calls failed, so a dead provider costs an order one fast ``CircuitOpenError``
instead of a timeout.

:class:`ProviderCall` also records whether any attempt may have reached the provider without an
answer (a timeout, a connection dropped mid-request): only then is the outcome of a failed charge
unknown, rather than "not charged".
"""

from __future__ import annotations

from typing import Final, Literal, final

import httpx
import msgspec

from runtime.resilience import BreakerConfig, PolicyConfig, ResiliencePolicy, RetryConfig

__all__ = [
    "PROVIDER_POLICY",
    "ProviderAnswer",
    "ProviderCall",
    "ProviderGateway",
    "ProviderRejectedError",
    "ProviderUnavailableError",
]

PROVIDER_POLICY: Final = PolicyConfig(
    timeout_s=2.0,
    retry=RetryConfig(max_attempts=3, backoff_initial_s=0.05, backoff_max_s=0.5),
    breaker=BreakerConfig(
        window="count",
        window_size=20,
        minimum_calls=10,
        failure_rate_threshold=0.5,
        slow_call_s=2.0,
        open_for_s=5.0,
        half_open_calls=2,
    ),
)


class ProviderUnavailableError(Exception):
    """The provider answered with a server error (5xx): it did not process the call."""


class ProviderRejectedError(Exception):
    """The provider refused the call for good (4xx other than a decline), e.g. a voided key."""


class ProviderAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """What the provider says about one charge."""

    charge_id: str
    status: Literal["captured", "declined", "refunded", "voided"]
    amount_cents: int = 0
    reason: str = ""

    def status_for_charge(self) -> Literal["captured", "declined"]:
        """The answer to a charge: anything but a decline means the money was taken."""
        return "declined" if self.status == "declined" else "captured"


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, ProviderUnavailableError | httpx.TransportError | OSError)


def _may_have_arrived(exc: BaseException) -> bool:
    # A refused connection never reached the provider; anything after the request was sent may
    # have been processed with its answer lost.
    if isinstance(exc, httpx.ConnectError):
        return False
    return isinstance(exc, httpx.TransportError | TimeoutError)


@final
class ProviderCall:
    """One logical call (with its retries); ``ambiguous`` after an attempt whose fate is unknown."""

    def __init__(self) -> None:
        self.ambiguous = False


@final
class ProviderGateway:
    """Charges and refunds at the provider at ``base_url``; close with :meth:`aclose`."""

    def __init__(
        self, base_url: str, *, policy: ResiliencePolicy | None = None, name: str = "payments"
    ) -> None:
        self.base_url = base_url
        self.policy = policy or ResiliencePolicy(
            f"{name}.provider", PROVIDER_POLICY, transient=_transient, is_failure=_transient
        )
        # The policy times each attempt; httpx's own timeout is only a backstop.
        self._http = httpx.AsyncClient(base_url=base_url, timeout=10.0)
        self._decoder = msgspec.json.Decoder(ProviderAnswer)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def charge(
        self, key: str, amount_cents: int, reference: str, call: ProviderCall
    ) -> ProviderAnswer:
        """Charge ``amount_cents`` under idempotency key ``key``: ``captured`` or ``declined``.

        Raises:
            CircuitOpenError, CallTimeoutError, DeadlineExceededError: from the policy.
            ProviderUnavailableError, httpx.TransportError: retries ran out.
            ProviderRejectedError: the key was voided, or reused with another amount.
        """
        body = {"idempotency_key": key, "amount_cents": amount_cents, "reference": reference}
        return await self.policy.call(self._post, "/v1/charges", body, call)

    async def refund(self, key: str, call: ProviderCall) -> ProviderAnswer:
        """Refund the charge made under ``key`` (``refunded``), or void ``key`` (``voided``).

        Raises:
            as :meth:`charge`.
        """
        return await self.policy.call(self._post, "/v1/refunds", {"charge_key": key}, call)

    async def _post(self, path: str, body: dict[str, object], call: ProviderCall) -> ProviderAnswer:
        try:
            response = await self._http.post(path, json=body)
        except BaseException as exc:
            # Cancellation by the policy's timeout lands here too: the request may have arrived.
            if _may_have_arrived(exc) or not isinstance(exc, Exception):
                call.ambiguous = True
            raise
        if response.status_code >= 500:
            raise ProviderUnavailableError(f"provider answered {response.status_code}")
        if response.status_code in (200, 201, 402):
            return self._decoder.decode(response.content)
        raise ProviderRejectedError(f"provider refused ({response.status_code}): {response.text}")
