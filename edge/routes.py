"""HTTP routes declared as data against the actors' message contracts.

A :class:`Route` says which HTTP method and path map to which service and contracts::

    Route("POST", "/orders/{order_id:str}/items", service="orders",
          request_type=AddItem, reply_type=Order, subject_field="user_id", roles=("customer",))

The request contract is built from the JSON body (for POST/PUT/PATCH) or the query string (other
methods), then overlaid with the path parameters that name contract fields and, if
``subject_field`` is set, the authenticated token's subject; overlaid values always win, so a
client cannot act for another user by putting ``user_id`` in its body. The partition key is the
contract field ``key_field`` (default: the first path parameter, else ``subject_field``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import msgspec

from runtime.codec import contract_tag

__all__ = ["BODY_METHODS", "Method", "Route"]

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})

_PATH_PARAM = re.compile(r"{(\w+)(?::\w+)?}")


@dataclass(frozen=True, slots=True)
class Route:
    """One HTTP endpoint answered by one service over the bus.

    ``auth`` requires a valid bearer token; ``roles`` (if any) requires the token to carry at
    least one of them (else 403). ``timeout_s`` overrides the edge's request timeout.
    ``status_code`` is the success status (201 for creations).
    """

    method: Method
    path: str
    service: str
    request_type: type[msgspec.Struct]
    reply_type: type[msgspec.Struct]
    auth: bool = True
    roles: tuple[str, ...] = ()
    subject_field: str | None = None
    key_field: str | None = None
    timeout_s: float | None = None
    status_code: int = 200
    summary: str = ""
    path_params: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        contract_tag(self.request_type)  # raises TypeError for an untagged contract
        contract_tag(self.reply_type)
        fields = set(self.request_type.__struct_fields__)
        params = tuple(_PATH_PARAM.findall(self.path))
        object.__setattr__(self, "path_params", params)
        if self.subject_field is not None and self.subject_field not in fields:
            raise ValueError(f"{self.path}: subject_field {self.subject_field!r} not in contract")
        if self.subject_field is not None and not self.auth:
            raise ValueError(f"{self.path}: subject_field needs auth=True")
        for name in params:
            if name not in fields:
                raise ValueError(f"{self.path}: path parameter {name!r} is not a contract field")
        if self.key_field is not None and self.key_field not in fields:
            raise ValueError(f"{self.path}: key_field {self.key_field!r} not in contract")

    @property
    def has_body(self) -> bool:
        """True when the contract comes from a JSON body."""
        return self.method in BODY_METHODS

    @property
    def server_fields(self) -> tuple[str, ...]:
        """Contract fields the edge fills in (path parameters, subject); never from the client."""
        subject = (self.subject_field,) if self.subject_field else ()
        return (*self.path_params, *subject)

    @property
    def openapi_path(self) -> str:
        """The path as OpenAPI writes it (``{order_id}``, without the Litestar type)."""
        return _PATH_PARAM.sub(r"{\1}", self.path)

    @property
    def operation_id(self) -> str:
        """A stable, unique OpenAPI operation id: ``<service>.<RequestContract>.<method>``."""
        return f"{self.service}.{self.request_type.__name__}.{self.method.lower()}"

    def partition_key(self, message: Any) -> str:
        """The bus partition key for ``message`` (see the module docstring)."""
        name = self.key_field or (self.path_params[0] if self.path_params else self.subject_field)
        return "" if name is None else str(getattr(message, name))
