"""The inventory actor: products, stock, and reservations held for orders.

Never oversells, by construction rather than by care: every stock change is one conditional
``UPDATE products SET available = available - $n ... WHERE available >= $n``. Postgres takes the
row lock and re-checks the condition after waiting for it, so two concurrent reservations of the
last unit cannot both succeed; the table's ``CHECK (available >= 0)`` backs that up. Lines of one
order are locked in product-id order, so two multi-line orders cannot deadlock each other.

Reservations are idempotent per order id (see :mod:`actors.inventory.contracts`), and the inbox
(:class:`~adapters.postgres.PostgresActor`) makes a redelivered command replay its stored reply.

The product listing is cached in Redis (cache-aside, :class:`~adapters.redis.Cache`). Pages are
keyed under a generation number that every committed stock or product change bumps *after* the
commit (:meth:`Inventory.handler_for`), so a reader can only cache a page under a generation whose
data it saw; stale generations age out with the TTL. Without Redis the listing is read from
Postgres every time, and so it is while Redis is slow or unreachable: the cache's policy gives up
on it quickly and its breaker then skips it (:attr:`Inventory.redis_policy_config`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Final

import msgspec

from actors.inventory.contracts import (
    MAX_QUANTITY,
    CommitReservation,
    CreateProduct,
    GetProduct,
    ListProducts,
    Product,
    ProductPage,
    Quote,
    QuoteLine,
    QuoteOrder,
    ReleaseReservation,
    ReservationLine,
    ReservationState,
    ReservationStatus,
    ReserveStock,
    Restock,
    StockLine,
)
from adapters.postgres import PostgresActor, transaction
from runtime.codec import contract_tag
from runtime.errors import ConflictError, InvalidError, NotFoundError
from runtime.messages import new_id
from runtime.resilience import PolicyConfig

if TYPE_CHECKING:
    import asyncpg

    from adapters.postgres import Connection
    from adapters.redis import ActorRedis, Cache
    from runtime.actor import Context, NodeContext

__all__ = ["Inventory", "merge_lines", "order_total"]

MAX_PAGE: Final = 100
LISTING_TTL_S: Final = 30.0
_GENERATION_KEY: Final = "catalog:generation"
# Statements as whole literals: nothing is ever formatted into SQL.
_CREATE: Final = (
    "INSERT INTO products (product_id, name, description, price_cents, available)"
    " VALUES ($1, $2, $3, $4, $5)"
    " RETURNING product_id, name, description, price_cents, available, reserved, sold"
)
_RESTOCK: Final = (
    "UPDATE products SET available = available + $2, updated_at = now() WHERE product_id = $1"
    " RETURNING product_id, name, description, price_cents, available, reserved, sold"
)
_SELECT_ONE: Final = (
    "SELECT product_id, name, description, price_cents, available, reserved, sold"
    " FROM products WHERE product_id = $1"
)
_SELECT_PAGE: Final = (
    "SELECT product_id, name, description, price_cents, available, reserved, sold"
    " FROM products WHERE product_id > $1 ORDER BY product_id LIMIT $2"
)
_HOLD: Final = (
    "UPDATE products SET available = available - $2, reserved = reserved + $2,"
    " updated_at = now() WHERE product_id = $1 AND available >= $2 RETURNING price_cents"
)
_SELL: Final = (
    "UPDATE products SET reserved = reserved - $2, sold = sold + $2, updated_at = now()"
    " WHERE product_id = $1"
)
_UNHOLD: Final = (
    "UPDATE products SET reserved = reserved - $2, available = available + $2,"
    " updated_at = now() WHERE product_id = $1"
)
_RESERVATION: Final = "SELECT status, reason, total_cents FROM reservations WHERE order_id = $1"
_RESERVATION_FOR_UPDATE: Final = _RESERVATION + " FOR UPDATE"

InventoryCommand = (
    CreateProduct
    | Restock
    | GetProduct
    | ListProducts
    | QuoteOrder
    | ReserveStock
    | CommitReservation
    | ReleaseReservation
)

# Commands that change what the listing shows; the cache generation moves after each commits.
_CHANGES_LISTING: Final = frozenset(
    contract_tag(c)
    for c in (CreateProduct, Restock, ReserveStock, CommitReservation, ReleaseReservation)
)


def merge_lines(lines: Iterable[StockLine]) -> list[StockLine]:
    """``lines`` with one line per product (quantities added), in product-id order: the order
    rows are locked in, so concurrent multi-line orders never deadlock.

    Raises:
        InvalidError: no lines, a quantity below 1 or above the limit, or an empty product id.
    """
    totals: dict[str, int] = {}
    for i, line in enumerate(lines):
        if not line.product_id:
            raise InvalidError("product_id must not be empty", field=f"$.lines[{i}].product_id")
        if not 1 <= line.quantity <= MAX_QUANTITY:
            raise InvalidError(
                f"quantity must be between 1 and {MAX_QUANTITY}", field=f"$.lines[{i}].quantity"
            )
        totals[line.product_id] = totals.get(line.product_id, 0) + line.quantity
    if not totals:
        raise InvalidError("an order needs at least one line", field="$.lines")
    if any(q > MAX_QUANTITY for q in totals.values()):
        raise InvalidError(f"at most {MAX_QUANTITY} units of one product", field="$.lines")
    return [StockLine(product_id=p, quantity=q) for p, q in sorted(totals.items())]


def _product(row: asyncpg.Record) -> Product:
    return Product(
        product_id=row["product_id"],
        name=row["name"],
        description=row["description"],
        price_cents=row["price_cents"],
        available=row["available"],
        reserved=row["reserved"],
        sold=row["sold"],
    )


class Inventory(PostgresActor):
    """Products, stock and reservations (module docstring). Owns schema ``inventory`` and the
    Redis key space ``inventory:``."""

    name = "inventory"
    # Named, not found beside the module: test subclasses live in other packages.
    migrations_package = "actors.inventory.migrations"
    inbox = InventoryCommand
    concurrency = 16
    # A handler is short (a few statements); retrying a whole unit on a transient error is safe
    # because the inbox makes it idempotent.
    postgres_policy_config: ClassVar[PolicyConfig] = PolicyConfig(timeout_s=10.0)

    # The listing cache's Redis policy; None: :data:`adapters.redis.CACHE_POLICY` (short timeout,
    # no retry on timeout, a breaker that skips Redis while it fails), so a slow or unreachable
    # Redis costs a listing half a second at most, and nothing once the breaker is open.
    redis_policy_config: ClassVar[PolicyConfig | None] = None

    redis: ActorRedis | None = None
    listing: Cache[ProductPage] | None = None

    async def on_start(self, ctx: NodeContext) -> None:
        """Postgres as every PostgresActor, then the listing cache if Redis is configured.

        Raises:
            as :meth:`PostgresActor.on_start`; redis.RedisError if the ACL user cannot be made.
        """
        await super().on_start(ctx)
        if not ctx.settings.redis_url:
            ctx.log.warning("inventory.no_cache", note="GREENROOM_REDIS_URL unset: no cache")
            return
        from adapters.redis import (
            CACHE_POLICY,
            ActorRedis,
            Cache,
            actor_redis_credentials,
            redis_policy,
        )

        try:
            credentials = await actor_redis_credentials(
                ctx.settings.redis_url, self.data_name or self.name
            )
        except BaseException:
            await super().on_stop(ctx)
            raise
        policy = redis_policy(credentials.prefix[:-1], self.redis_policy_config or CACHE_POLICY)
        self.redis = ActorRedis.connect(credentials, policy=policy)
        self.listing = Cache(self.redis, ProductPage, ttl_s=LISTING_TTL_S, namespace="products")
        ctx.resources["redis"] = self.redis

    async def on_stop(self, ctx: NodeContext) -> None:
        """Close Redis, then Postgres."""
        if self.redis is not None:
            await self.redis.aclose()
        await super().on_stop(ctx)

    def handler_for(self, type_tag: str) -> Callable[[Any, Context], Awaitable[Any]]:
        """The exactly-once handler; for commands that change the listing, followed (after the
        commit) by a move to a new cache generation."""
        inner = super().handler_for(type_tag)
        if type_tag not in _CHANGES_LISTING:
            return inner

        async def then_invalidate(message: Any, ctx: Context) -> Any:
            result = await inner(message, ctx)
            await self._invalidate_listing(ctx)
            return result

        return then_invalidate

    async def _invalidate_listing(self, ctx: Context) -> None:
        if self.redis is None:
            return
        try:
            await self.redis.incr(_GENERATION_KEY)
        except Exception as exc:  # the change is committed; a stale page lives one TTL at most
            ctx.log.warning("inventory.cache_invalidation_failed", error=repr(exc))

    # --- products -------------------------------------------------------------------------------

    async def create_product(self, msg: CreateProduct, ctx: Context) -> Product:
        """Add a product. Raises InvalidError for an empty name, negative price or stock."""
        if not msg.name.strip() or len(msg.name) > 200:
            raise InvalidError("name must be 1-200 characters", field="$.name")
        if msg.price_cents < 0:
            raise InvalidError("price_cents must not be negative", field="$.price_cents")
        if not 0 <= msg.stock <= 1_000_000:
            raise InvalidError("stock must be between 0 and 1000000", field="$.stock")
        row = await transaction(ctx).conn.fetchrow(
            _CREATE,
            new_id(),
            msg.name.strip(),
            msg.description,
            msg.price_cents,
            msg.stock,
        )
        assert row is not None
        return _product(row)

    async def restock(self, msg: Restock, ctx: Context) -> Product:
        """Add units to a product's available stock.

        Raises:
            InvalidError: quantity below 1 or above the limit.
            NotFoundError: no such product.
        """
        if not 1 <= msg.quantity <= 1_000_000:
            raise InvalidError("quantity must be between 1 and 1000000", field="$.quantity")
        row = await transaction(ctx).conn.fetchrow(
            _RESTOCK,
            msg.product_id,
            msg.quantity,
        )
        if row is None:
            raise NotFoundError(f"no product {msg.product_id!r}", field="$.product_id")
        return _product(row)

    async def get_product(self, msg: GetProduct, ctx: Context) -> Product:
        """One product. Raises NotFoundError if there is none with that id."""
        row = await transaction(ctx).conn.fetchrow(_SELECT_ONE, msg.product_id)
        if row is None:
            raise NotFoundError(f"no product {msg.product_id!r}", field="$.product_id")
        return _product(row)

    async def list_products(self, msg: ListProducts, ctx: Context) -> ProductPage:
        """A page of products in id order, from the cache when it has it.

        Raises:
            InvalidError: ``limit`` outside 1..100.
        """
        if not 1 <= msg.limit <= MAX_PAGE:
            raise InvalidError(f"limit must be between 1 and {MAX_PAGE}", field="$.limit")
        conn = transaction(ctx).conn

        async def load() -> ProductPage:
            return await self._load_page(conn, msg.limit, msg.cursor)

        if self.listing is None or self.redis is None:
            return await load()
        try:
            generation = int(await self.redis.get(_GENERATION_KEY) or 0)
        except Exception as exc:  # the cache is an optimisation; Postgres still answers
            ctx.log.warning("inventory.cache_unavailable", error=repr(exc))
            return await load()
        return await self.listing.get_or_load(f"{generation}:{msg.limit}:{msg.cursor}", load)

    @staticmethod
    async def _load_page(conn: Connection, limit: int, cursor: str) -> ProductPage:
        rows = await conn.fetch(
            _SELECT_PAGE,
            cursor,
            limit + 1,
        )
        items = tuple(_product(r) for r in rows[:limit])
        more = len(rows) > limit
        return ProductPage(items=items, next_cursor=items[-1].product_id if more else "")

    # --- reservations ---------------------------------------------------------------------------

    async def quote(self, msg: QuoteOrder, ctx: Context) -> Quote:
        """Price the lines and check availability now, reserving nothing.

        Raises:
            InvalidError: bad lines (see :func:`merge_lines`).
            NotFoundError: a product does not exist.
            ConflictError: a product has fewer units available than asked for.
        """
        lines = merge_lines(msg.lines)
        rows = await transaction(ctx).conn.fetch(
            "SELECT product_id, price_cents, available FROM products"
            " WHERE product_id = ANY($1::text[])",
            [line.product_id for line in lines],
        )
        found = {r["product_id"]: r for r in rows}
        priced = []
        for line in lines:
            row = found.get(line.product_id)
            if row is None:
                raise NotFoundError(f"no product {line.product_id!r}", field="$.lines")
            if row["available"] < line.quantity:
                raise ConflictError(
                    f"not enough stock of {line.product_id}: {row['available']} available,"
                    f" {line.quantity} asked"
                )
            priced.append(
                QuoteLine(
                    product_id=line.product_id,
                    quantity=line.quantity,
                    unit_price_cents=row["price_cents"],
                )
            )
        return Quote(lines=tuple(priced), total_cents=order_total(priced))

    async def reserve(self, msg: ReserveStock, ctx: Context) -> ReservationState:
        """Hold every line for the order, or none of them.

        Returns the order's reservation: ``reserved`` with the lines and prices, or ``rejected``
        with a reason (not enough stock, unknown product) -- stored, so asking again gives the
        same answer. An order already settled answers with its state and changes nothing.

        Raises:
            InvalidError: bad lines (see :func:`merge_lines`) or an empty order id.
        """
        if not msg.order_id:
            raise InvalidError("order_id must not be empty", field="$.order_id")
        lines = merge_lines(msg.lines)
        conn = transaction(ctx).conn
        existing = await self._state(conn, msg.order_id)
        if existing is not None:
            return existing
        # A savepoint: a shortfall on line 3 undoes lines 1-2 but keeps the transaction, so the
        # rejection itself can be stored.
        savepoint = conn.transaction()
        await savepoint.start()
        reserved: list[ReservationLine] = []
        for line in lines:
            price = await conn.fetchval(_HOLD, line.product_id, line.quantity)
            if price is None:
                await savepoint.rollback()
                reason = await self._shortfall(conn, line)
                await conn.execute(
                    "INSERT INTO reservations (order_id, status, reason)"
                    " VALUES ($1, 'rejected', $2)",
                    msg.order_id,
                    reason,
                )
                return ReservationState(order_id=msg.order_id, status="rejected", reason=reason)
            reserved.append(
                ReservationLine(
                    product_id=line.product_id, quantity=line.quantity, unit_price_cents=price
                )
            )
        await savepoint.commit()
        total = order_total(reserved)
        await conn.execute(
            "INSERT INTO reservations (order_id, status, total_cents) VALUES ($1, 'reserved', $2)",
            msg.order_id,
            total,
        )
        await conn.executemany(
            "INSERT INTO reservation_lines (order_id, product_id, quantity, unit_price_cents)"
            " VALUES ($1, $2, $3, $4)",
            [(msg.order_id, r.product_id, r.quantity, r.unit_price_cents) for r in reserved],
        )
        return ReservationState(
            order_id=msg.order_id, status="reserved", lines=tuple(reserved), total_cents=total
        )

    async def commit(self, msg: CommitReservation, ctx: Context) -> ReservationState:
        """Turn the order's held units into sold ones.

        Returns ``committed`` (also when it already was), or the state that prevents it
        (``released``, ``rejected``); an order never reserved is answered ``rejected`` and left
        alone.
        """
        conn = transaction(ctx).conn
        state = await self._state(conn, msg.order_id, lock=True)
        if state is None:
            return ReservationState(order_id=msg.order_id, status="rejected", reason="not reserved")
        if state.status != "reserved":
            return state
        await self._move(conn, state, _SELL)
        await self._set_status(conn, msg.order_id, "committed")
        return msgspec_replace(state, status="committed")

    async def release(self, msg: ReleaseReservation, ctx: Context) -> ReservationState:
        """Give the order's held units back to available stock.

        Returns ``released`` (also when it already was, or when nothing was ever reserved: then a
        tombstone is stored so a late reservation for the order is refused), ``rejected`` as it
        was, or ``committed`` unchanged: sold units are not released.
        """
        conn = transaction(ctx).conn
        state = await self._state(conn, msg.order_id, lock=True)
        if state is None:
            await conn.execute(
                "INSERT INTO reservations (order_id, status, reason) VALUES ($1, 'released', $2)",
                msg.order_id,
                "released before it was reserved",
            )
            return ReservationState(order_id=msg.order_id, status="released")
        if state.status != "reserved":
            return state
        await self._move(conn, state, _UNHOLD)
        await self._set_status(conn, msg.order_id, "released")
        return msgspec_replace(state, status="released")

    # --- helpers --------------------------------------------------------------------------------

    @staticmethod
    async def _state(
        conn: Connection, order_id: str, *, lock: bool = False
    ) -> ReservationState | None:
        row = await conn.fetchrow(
            _RESERVATION_FOR_UPDATE if lock else _RESERVATION,
            order_id,
        )
        if row is None:
            return None
        lines = await conn.fetch(
            "SELECT product_id, quantity, unit_price_cents FROM reservation_lines"
            " WHERE order_id = $1 ORDER BY product_id",
            order_id,
        )
        return ReservationState(
            order_id=order_id,
            status=row["status"],
            reason=row["reason"],
            total_cents=row["total_cents"],
            lines=tuple(
                ReservationLine(
                    product_id=r["product_id"],
                    quantity=r["quantity"],
                    unit_price_cents=r["unit_price_cents"],
                )
                for r in lines
            ),
        )

    @staticmethod
    async def _move(conn: Connection, state: ReservationState, statement: str) -> None:
        for line in state.lines:  # product-id order, as they were reserved
            await conn.execute(statement, line.product_id, line.quantity)

    @staticmethod
    async def _set_status(conn: Connection, order_id: str, status: str) -> None:
        await conn.execute(
            "UPDATE reservations SET status = $2, updated_at = now() WHERE order_id = $1",
            order_id,
            status,
        )

    @staticmethod
    async def _shortfall(conn: Connection, line: StockLine) -> str:
        available = await conn.fetchval(
            "SELECT available FROM products WHERE product_id = $1", line.product_id
        )
        if available is None:
            return f"unknown product {line.product_id}"
        return (
            f"not enough stock of {line.product_id}: {available} available, {line.quantity} asked"
        )


def order_total(lines: Iterable[QuoteLine | ReservationLine]) -> int:
    """The total of ``lines`` in cents (integer arithmetic only)."""
    return sum(line.quantity * line.unit_price_cents for line in lines)


def msgspec_replace(state: ReservationState, *, status: ReservationStatus) -> ReservationState:
    """``state`` with another status."""
    return msgspec.structs.replace(state, status=status)
