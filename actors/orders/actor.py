"""The orders actor: placing orders, and the saga that reserves, charges and confirms them.

How the saga survives a crash at any instant
--------------------------------------------
Each step is a message the service sends to itself, and each handler does at most one step:

1. :class:`PlaceOrder` (a request from the edge) prices the lines with inventory (a read-only
   :class:`~actors.inventory.contracts.QuoteOrder`: an obvious shortage is a 409 right away, with
   nothing held and nothing charged), then, in one transaction, stores the order as ``PENDING``
   and writes two outbox rows: :class:`OrderPlaced` on ``orders.events`` and
   :class:`AdvanceOrder` on ``orders.commands``. It answers ``202`` with the order at once; the
   client polls ``GET /orders/{id}`` for the outcome. Acknowledged means committed: an order the
   client saw a 2xx for exists exactly once, whatever dies afterwards.
2. :class:`AdvanceOrder` locks the order row, makes the one remote request its state calls for,
   records the transition and (unless the state is final) writes the next ``AdvanceOrder`` to
   the outbox -- all in the message's transaction:

   ========== ===================================== ==========================================
   state      request                               outcome
   ========== ===================================== ==========================================
   PENDING    inventory ``ReserveStock``            RESERVED, or CANCELLED (not enough stock)
   RESERVED   payments ``Charge`` (key from order)  CHARGED, or release stock -> CANCELLED
   CHARGED    inventory ``CommitReservation``       CONFIRMED, or refund + release -> CANCELLED
   ========== ===================================== ==========================================

A crash between a remote effect and the local commit leaves the ``AdvanceOrder`` unacknowledged;
it is redelivered and the step runs again. That is safe because every remote command is
idempotent per order id *for every outcome* (inventory keeps a row per order even for a rejection
or a release-before-reserve; payments keeps a row per order and the provider dedupes on the
idempotency key), so the repeat gets the first outcome back instead of acting twice.

A step whose peer does not answer (deadline, unavailable) raises :class:`StepIncompleteError`, so
the runtime retries the message with backoff (``retry_attempts``), then dead-letters it. The
**sweeper** (a supervised child of every orders node) re-sends ``AdvanceOrder`` for orders that
have not moved for :data:`STUCK_AFTER_S`, so no order stays in flight for good even after a dead
letter; duplicates it may cause are absorbed like any redelivery.

Payments unavailable: a charge the provider certainly did not take (circuit open, errors after
retries) is final -- the order is cancelled with reason ``payments unavailable`` and its stock
released; a charge whose outcome is unknown (timeout) is retried with the same key until known.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final

import anyio

from actors.inventory.contracts import (
    CommitReservation,
    Quote,
    QuoteOrder,
    ReleaseReservation,
    ReservationState,
    ReserveStock,
    StockLine,
)
from actors.orders.contracts import (
    MAX_LINES,
    AdvanceOrder,
    GetAnyOrder,
    GetOrder,
    ListOrders,
    Order,
    OrderCancelled,
    OrderConfirmed,
    OrderLine,
    OrderPage,
    OrderPlaced,
    PlaceOrder,
    PricedLine,
)
from actors.orders.states import OrderState, check_transition, is_final
from actors.payments.contracts import Charge, Payment, Refund, charge_key
from adapters.postgres import PostgresActor, transaction
from runtime.codec import encode
from runtime.errors import (
    DeadlineExceededError,
    InvalidError,
    NotFoundError,
    UnavailableError,
)
from runtime.logging import get_logger
from runtime.messages import Envelope
from runtime.resilience import PolicyConfig, RetryConfig
from runtime.supervision import ChildSpec, Restart

if TYPE_CHECKING:
    import asyncpg
    from anyio.abc import TaskStatus

    from adapters.postgres import Connection
    from runtime.actor import Context
    from runtime.node import Node

__all__ = ["STUCK_AFTER_S", "Orders", "StepIncompleteError", "merge_order_lines"]

STEP_TIMEOUT_S: Final = 5.0
STUCK_AFTER_S: Final = 20.0
SWEEP_INTERVAL_S: Final = 5.0
MAX_PAGE: Final = 100

_ORDER: Final = (
    "SELECT order_id, user_id, state, total_cents, reason, created_at, updated_at"
    " FROM orders WHERE order_id = $1"
)
_ORDER_FOR_UPDATE: Final = _ORDER + " FOR UPDATE"
_LINES: Final = (
    "SELECT order_id, product_id, quantity, unit_price_cents FROM order_lines"
    " WHERE order_id = ANY($1::text[]) ORDER BY order_id, product_id"
)
_PAGE: Final = (
    "SELECT order_id, user_id, state, total_cents, reason, created_at, updated_at"
    " FROM orders WHERE user_id = $1 AND ($2 = '' OR order_id < $2)"
    " ORDER BY order_id DESC LIMIT $3"
)
_STUCK: Final = (
    "UPDATE orders SET nudged_at = now() WHERE order_id IN ("
    " SELECT order_id FROM orders WHERE state IN ('PENDING', 'RESERVED', 'CHARGED')"
    " AND updated_at < now() - make_interval(secs => $1)"
    " AND (nudged_at IS NULL OR nudged_at < now() - make_interval(secs => $1))"
    " ORDER BY updated_at LIMIT 200 FOR UPDATE SKIP LOCKED) RETURNING order_id"
)


class StepIncompleteError(RuntimeError):
    """A saga step could not finish now (a peer did not answer, or an outcome is unknown).

    Deliberately not a DomainError: the runtime retries the message with backoff instead of
    treating it as an answer.
    """


def merge_order_lines(lines: Sequence[OrderLine]) -> list[StockLine]:
    """One line per product (quantities added), in product order.

    Raises:
        InvalidError: no lines, too many, an empty product id or a quantity outside 1..10000.
    """
    if not lines:
        raise InvalidError("an order needs at least one line", field="$.lines")
    if len(lines) > MAX_LINES:
        raise InvalidError(f"at most {MAX_LINES} lines per order", field="$.lines")
    totals: dict[str, int] = {}
    for i, line in enumerate(lines):
        if not line.product_id:
            raise InvalidError("product_id must not be empty", field=f"$.lines[{i}].product_id")
        if not 1 <= line.quantity <= 10_000:
            raise InvalidError(
                "quantity must be between 1 and 10000", field=f"$.lines[{i}].quantity"
            )
        totals[line.product_id] = totals.get(line.product_id, 0) + line.quantity
    return [StockLine(product_id=p, quantity=q) for p, q in sorted(totals.items())]


def _ms(value: Any) -> int:
    return int(value.timestamp() * 1000)


def _order(row: asyncpg.Record, lines: Sequence[PricedLine]) -> Order:
    return Order(
        order_id=row["order_id"],
        user_id=row["user_id"],
        state=row["state"],
        lines=tuple(lines),
        total_cents=row["total_cents"],
        reason=row["reason"],
        created_at_ms=_ms(row["created_at"]),
        updated_at_ms=_ms(row["updated_at"]),
    )


class Orders(PostgresActor):
    """Orders and their saga (module docstring). Owns schema ``orders``."""

    name = "orders"
    # Named, not found beside the module: test subclasses live in other packages.
    migrations_package = "actors.orders.migrations"
    inbox = PlaceOrder | GetOrder | GetAnyOrder | ListOrders | AdvanceOrder
    makes_requests = True
    # Each handler holds a pooled connection while it waits on a peer; more concurrent handlers
    # than the pool has connections would only queue for one.
    concurrency = 10
    retry_attempts = 6
    retry_backoff_s = 0.2
    retry_backoff_max_s = 3.0
    # A step's transaction spans a remote request (up to STEP_TIMEOUT_S); never re-run a whole
    # step because it was slow -- the message retry does that, with backoff.
    postgres_policy_config: ClassVar[PolicyConfig] = PolicyConfig(
        timeout_s=STEP_TIMEOUT_S * 3, retry_on_timeout=False, retry=RetryConfig(max_attempts=2)
    )

    def supervised_children(self, node: Node) -> Sequence[ChildSpec]:
        """The outbox relay and the saga sweeper (module docstring)."""
        sweeper = ChildSpec(
            id="saga_sweeper",
            start=lambda *, task_status: self._sweep(node, task_status=task_status),
            restart=Restart.PERMANENT,
            shutdown_s=2.0,
        )
        return (*super().supervised_children(node), sweeper)

    # --- requests from the edge -----------------------------------------------------------------

    async def place(self, msg: PlaceOrder, ctx: Context) -> Order:
        """Accept an order: ``PENDING``, its saga started (answered 202 by the edge).

        Raises:
            InvalidError: bad lines, or a product that does not exist.
            ConflictError: a product has fewer units available right now than asked for.
            DeadlineExceededError, UnavailableError: inventory could not price the order.
        """
        lines = merge_order_lines(msg.lines)
        try:
            quote: Quote = await ctx.request(
                "inventory", QuoteOrder(lines=tuple(lines)), reply_type=Quote
            )
        except NotFoundError as exc:
            raise InvalidError(exc.message, field="$.lines") from exc
        order_id = ctx.envelope.id  # unique per request, and the same if this handler is re-run
        priced = tuple(
            PricedLine(
                product_id=q.product_id, quantity=q.quantity, unit_price_cents=q.unit_price_cents
            )
            for q in quote.lines
        )
        conn = transaction(ctx).conn
        row = await conn.fetchrow(
            "INSERT INTO orders (order_id, user_id, state, total_cents) VALUES ($1, $2, $3, $4)"
            " RETURNING order_id, user_id, state, total_cents, reason, created_at, updated_at",
            order_id,
            msg.user_id,
            "PENDING",
            quote.total_cents,
        )
        assert row is not None
        await self._write_lines(conn, order_id, priced)
        await self._record(conn, order_id, None, "PENDING")
        await ctx.emit(
            OrderPlaced(
                order_id=order_id, user_id=msg.user_id, lines=priced, total_cents=quote.total_cents
            ),
            key=order_id,
        )
        await ctx.publish("orders.commands", AdvanceOrder(order_id=order_id), key=order_id)
        return _order(row, priced)

    async def get_order(self, msg: GetOrder, ctx: Context) -> Order:
        """The order, if it is ``user_id``'s. Raises NotFoundError otherwise (another user's
        order is not even admitted to exist)."""
        order = await self._load(transaction(ctx).conn, msg.order_id)
        if order is None or order.user_id != msg.user_id:
            raise NotFoundError(f"no order {msg.order_id!r}", field="$.order_id")
        return order

    async def get_any(self, msg: GetAnyOrder, ctx: Context) -> Order:
        """Any order (the edge allows this to admins only). Raises NotFoundError."""
        order = await self._load(transaction(ctx).conn, msg.order_id)
        if order is None:
            raise NotFoundError(f"no order {msg.order_id!r}", field="$.order_id")
        return order

    async def list_orders(self, msg: ListOrders, ctx: Context) -> OrderPage:
        """``user_id``'s orders, newest first. Raises InvalidError for a limit outside 1..100."""
        if not 1 <= msg.limit <= MAX_PAGE:
            raise InvalidError(f"limit must be between 1 and {MAX_PAGE}", field="$.limit")
        conn = transaction(ctx).conn
        rows = await conn.fetch(_PAGE, msg.user_id, msg.cursor, msg.limit + 1)
        page = rows[: msg.limit]
        lines = await self._lines(conn, [r["order_id"] for r in page])
        items = tuple(_order(r, lines.get(r["order_id"], ())) for r in page)
        more = len(rows) > msg.limit
        return OrderPage(items=items, next_cursor=items[-1].order_id if more else "")

    # --- the saga -------------------------------------------------------------------------------

    async def advance(self, msg: AdvanceOrder, ctx: Context) -> None:
        """Take the order one step along the saga (module docstring); a final or unknown order
        is left alone.

        Raises:
            StepIncompleteError: a peer did not answer, or a payment's outcome is not yet known;
                nothing was recorded, the message is retried.
        """
        conn = transaction(ctx).conn
        row = await conn.fetchrow(_ORDER_FOR_UPDATE, msg.order_id)
        if row is None:
            ctx.log.warning("orders.advance_unknown_order", order_id=msg.order_id)
            return
        state: OrderState = row["state"]
        if is_final(state):
            return
        try:
            if state == "PENDING":
                await self._reserve(conn, row, ctx)
            elif state == "RESERVED":
                await self._charge(conn, row, ctx)
            else:
                await self._confirm(conn, row, ctx)
        except (DeadlineExceededError, UnavailableError) as exc:
            raise StepIncompleteError(
                f"order {msg.order_id} at {state}: {type(exc).__name__}: {exc.message}"
            ) from exc

    async def _reserve(self, conn: Connection, row: asyncpg.Record, ctx: Context) -> None:
        order_id = row["order_id"]
        lines = (await self._lines(conn, [order_id])).get(order_id, ())
        held: ReservationState = await self._ask(
            ctx,
            "inventory",
            ReserveStock(
                order_id=order_id,
                lines=tuple(StockLine(product_id=x.product_id, quantity=x.quantity) for x in lines),
            ),
            ReservationState,
            order_id,
        )
        if held.status != "reserved":
            await self._cancel(conn, row, ctx, held.reason or f"stock {held.status}")
            return
        if held.total_cents != row["total_cents"]:
            # The price changed between the quote and the reservation: the reserved one holds.
            await conn.execute(
                "UPDATE orders SET total_cents = $2 WHERE order_id = $1",
                order_id,
                held.total_cents,
            )
            await conn.execute("DELETE FROM order_lines WHERE order_id = $1", order_id)
            await self._write_lines(
                conn,
                order_id,
                [
                    PricedLine(
                        product_id=x.product_id,
                        quantity=x.quantity,
                        unit_price_cents=x.unit_price_cents,
                    )
                    for x in held.lines
                ],
            )
        await self._move(conn, ctx, row, "RESERVED")

    async def _charge(self, conn: Connection, row: asyncpg.Record, ctx: Context) -> None:
        order_id = row["order_id"]
        payment: Payment = await self._ask(
            ctx,
            "payments",
            Charge(
                order_id=order_id,
                user_id=row["user_id"],
                amount_cents=row["total_cents"],
                idempotency_key=charge_key(order_id),
            ),
            Payment,
            order_id,
        )
        if payment.status == "captured":
            await self._move(conn, ctx, row, "CHARGED")
            return
        if payment.status == "pending":
            raise StepIncompleteError(f"order {order_id}: payment outcome not known yet")
        await self._release(ctx, order_id)
        reason = "payment declined" if payment.status == "declined" else "payments unavailable"
        await self._cancel(conn, row, ctx, reason)

    async def _confirm(self, conn: Connection, row: asyncpg.Record, ctx: Context) -> None:
        order_id = row["order_id"]
        held: ReservationState = await self._ask(
            ctx, "inventory", CommitReservation(order_id=order_id), ReservationState, order_id
        )
        if held.status == "committed":
            await self._move(conn, ctx, row, "CONFIRMED")
            await ctx.emit(
                OrderConfirmed(
                    order_id=order_id, user_id=row["user_id"], total_cents=row["total_cents"]
                ),
                key=order_id,
            )
            return
        # The stock is no longer held (should not happen: nothing releases a charged order's
        # reservation); give the money back rather than confirm what cannot be delivered.
        refund: Payment = await self._ask(
            ctx, "payments", Refund(order_id=order_id, reason="stock lost"), Payment, order_id
        )
        if refund.status not in ("refunded", "voided"):
            raise StepIncompleteError(f"order {order_id}: refund is {refund.status}")
        await self._release(ctx, order_id)
        await self._cancel(conn, row, ctx, f"stock {held.status}; payment refunded")

    async def _release(self, ctx: Context, order_id: str) -> None:
        await self._ask(
            ctx, "inventory", ReleaseReservation(order_id=order_id), ReservationState, order_id
        )

    @staticmethod
    async def _ask(ctx: Context, service: str, message: Any, reply_type: Any, key: str) -> Any:
        return await ctx.request(
            service, message, reply_type=reply_type, key=key, timeout_s=STEP_TIMEOUT_S
        )

    async def _move(
        self, conn: Connection, ctx: Context, row: asyncpg.Record, target: OrderState
    ) -> None:
        """Record ``target`` and, unless it is final, send the next step through the outbox."""
        order_id = row["order_id"]
        check_transition(row["state"], target)
        await conn.execute(
            "UPDATE orders SET state = $2, updated_at = now(), nudged_at = NULL"
            " WHERE order_id = $1",
            order_id,
            target,
        )
        await self._record(conn, order_id, row["state"], target)
        if not is_final(target):
            await ctx.publish("orders.commands", AdvanceOrder(order_id=order_id), key=order_id)

    async def _cancel(
        self, conn: Connection, row: asyncpg.Record, ctx: Context, reason: str
    ) -> None:
        order_id = row["order_id"]
        check_transition(row["state"], "CANCELLED")
        await conn.execute(
            "UPDATE orders SET state = 'CANCELLED', reason = $2, updated_at = now()"
            " WHERE order_id = $1",
            order_id,
            reason,
        )
        await self._record(conn, order_id, row["state"], "CANCELLED", reason)
        await ctx.emit(
            OrderCancelled(order_id=order_id, user_id=row["user_id"], reason=reason), key=order_id
        )

    # --- storage helpers ------------------------------------------------------------------------

    @staticmethod
    async def _record(
        conn: Connection, order_id: str, source: str | None, target: str, reason: str = ""
    ) -> None:
        await conn.execute(
            "INSERT INTO order_transitions (order_id, from_state, to_state, reason)"
            " VALUES ($1, $2, $3, $4)",
            order_id,
            source,
            target,
            reason,
        )

    @staticmethod
    async def _write_lines(conn: Connection, order_id: str, lines: Sequence[PricedLine]) -> None:
        await conn.executemany(
            "INSERT INTO order_lines (order_id, product_id, quantity, unit_price_cents)"
            " VALUES ($1, $2, $3, $4)",
            [(order_id, x.product_id, x.quantity, x.unit_price_cents) for x in lines],
        )

    @staticmethod
    async def _lines(conn: Connection, order_ids: list[str]) -> dict[str, tuple[PricedLine, ...]]:
        out: dict[str, list[PricedLine]] = {}
        for r in await conn.fetch(_LINES, order_ids):
            out.setdefault(r["order_id"], []).append(
                PricedLine(
                    product_id=r["product_id"],
                    quantity=r["quantity"],
                    unit_price_cents=r["unit_price_cents"],
                )
            )
        return {k: tuple(v) for k, v in out.items()}

    async def _load(self, conn: Connection, order_id: str) -> Order | None:
        row = await conn.fetchrow(_ORDER, order_id)
        if row is None:
            return None
        return _order(row, (await self._lines(conn, [order_id])).get(order_id, ()))

    # --- the sweeper ----------------------------------------------------------------------------

    async def _sweep(self, node: Node, *, task_status: TaskStatus[None]) -> None:
        """Every :data:`SWEEP_INTERVAL_S`, re-send ``AdvanceOrder`` for orders stuck in flight.

        Published straight to the bus (not the outbox): a lost nudge is simply sent again at
        the next sweep, and a duplicate is harmless.
        """
        topic = node.settings.topic("orders.commands")
        task_status.started()
        while True:
            await anyio.sleep(SWEEP_INTERVAL_S)
            rows = await self.database.fetch(_STUCK, STUCK_AFTER_S)
            for r in rows:
                type_tag, body = encode(AdvanceOrder(order_id=r["order_id"]))
                await node.broker.publish(topic, Envelope.new(type_tag, body, key=r["order_id"]))
            if rows:
                get_logger("actors.orders").info("orders.swept", nudged=len(rows))
