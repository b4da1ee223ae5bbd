"""The commerce API (inventory, orders), as data for :mod:`edge.api`.

Decisions a client should know:

- ``POST /orders`` answers ``202 Accepted`` with the order as soon as it is stored (``PENDING``):
  the reserve -> charge -> confirm saga runs on after the answer, and the client polls
  ``GET /orders/{order_id}`` until ``state`` is ``CONFIRMED`` or ``CANCELLED`` (with a
  ``reason``). A 2xx therefore always means the order exists, exactly once; send an
  ``Idempotency-Key`` to make a retried POST safe. An obvious shortage is refused at once with
  ``409`` (nothing is held or charged); a race for the last units is lost later, as a
  ``CANCELLED`` order.
- The catalogue (``GET /products``, ``GET /products/{id}``) is public; changing it is for admins.
- A customer reads only their own orders (another's is a 404); admins read any order through
  ``GET /admin/orders/{order_id}``, because the edge passes the token's subject to services but
  not its roles.
"""

from __future__ import annotations

from actors.inventory.contracts import CreateProduct, GetProduct, ListProducts, Product, ProductPage
from actors.inventory.contracts import Restock as RestockProduct
from actors.orders.contracts import (
    GetAnyOrder,
    GetOrder,
    ListOrders,
    Order,
    OrderPage,
    PlaceOrder,
)
from edge.routes import Route

__all__ = ["COMMERCE_ROUTES"]

COMMERCE_ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/products",
        service="inventory",
        request_type=CreateProduct,
        reply_type=Product,
        roles=("admin",),
        status_code=201,
        summary="Create a product with a price (cents) and initial stock (admin)",
    ),
    Route(
        "POST",
        "/products/{product_id:str}/restock",
        service="inventory",
        request_type=RestockProduct,
        reply_type=Product,
        roles=("admin",),
        summary="Add units to a product's stock (admin)",
    ),
    Route(
        "GET",
        "/products",
        service="inventory",
        request_type=ListProducts,
        reply_type=ProductPage,
        auth=False,
        key_field="cursor",
        summary="List products, a page at a time (limit, cursor)",
    ),
    Route(
        "GET",
        "/products/{product_id:str}",
        service="inventory",
        request_type=GetProduct,
        reply_type=Product,
        auth=False,
        summary="Read one product and its stock",
    ),
    Route(
        "POST",
        "/orders",
        service="orders",
        request_type=PlaceOrder,
        reply_type=Order,
        subject_field="user_id",
        status_code=202,
        summary="Place an order; answered 202 while it is reserved, charged and confirmed",
    ),
    Route(
        "GET",
        "/orders/{order_id:str}",
        service="orders",
        request_type=GetOrder,
        reply_type=Order,
        subject_field="user_id",
        summary="Read one of my orders and where it stands",
    ),
    Route(
        "GET",
        "/orders",
        service="orders",
        request_type=ListOrders,
        reply_type=OrderPage,
        subject_field="user_id",
        summary="List my orders, newest first (limit, cursor)",
    ),
    Route(
        "GET",
        "/admin/orders/{order_id:str}",
        service="orders",
        request_type=GetAnyOrder,
        reply_type=Order,
        roles=("admin",),
        summary="Read any order (admin)",
    ),
)
