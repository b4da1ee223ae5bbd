"""Encoding message contracts into envelope bodies, with encoders/decoders built once per type.

Contracts are frozen, keyword-only, tagged ``msgspec.Struct`` classes; the tag is the envelope's
``type``. Bodies are JSON so any Kafka tool can read them. A :class:`Codec` is built once per
actor (for its inbox union) or per requester (for a reply type) and reused for every message.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Generic, TypeVar, cast, final

import msgspec

__all__ = ["Codec", "DecodeError", "contract_tag", "contract_types", "encode"]

T = TypeVar("T")

_encoder = msgspec.json.Encoder()


class DecodeError(ValueError):
    """A body does not match the expected contract; ``path`` names the offending field."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


def contract_tag(cls: type[msgspec.Struct]) -> str:
    """The tag (envelope ``type``) of a contract class. Raises TypeError if it is not tagged."""
    tag = cls.__struct_config__.tag
    if not isinstance(tag, str):
        raise TypeError(f"{cls.__qualname__} is not a tagged msgspec.Struct (set tag='svc.Name')")
    return tag


def contract_types(union: Any) -> tuple[type[msgspec.Struct], ...]:
    """The contract classes in ``union`` (a single Struct class or a ``A | B`` union)."""
    members = getattr(union, "__args__", None) or (union,)
    out = []
    for member in members:
        if not (isinstance(member, type) and issubclass(member, msgspec.Struct)):
            raise TypeError(f"{member!r} is not a msgspec.Struct contract")
        contract_tag(member)
        out.append(member)
    return tuple(out)


def encode(message: msgspec.Struct) -> tuple[str, bytes]:
    """``(type, body)`` for a contract instance; the body carries the tag too."""
    tag = contract_tag(type(message))
    return tag, _encoder.encode(message)


def _path(message: str) -> str:
    # msgspec ends validation messages with " - at `$.field`"; keep the path for clear errors.
    marker = " - at `"
    return message.rsplit(marker, 1)[1].rstrip("`") if marker in message else ""


@final
class Codec(Generic[T]):
    """Decodes bodies of the contracts in a union, chosen by envelope type; built once."""

    def __init__(self, union: Any) -> None:
        self.types: dict[str, type[msgspec.Struct]] = {
            contract_tag(cls): cls for cls in contract_types(union)
        }
        # A decoder per concrete type: the envelope already says which one, so decoding skips
        # union dispatch.
        self._decoders: dict[str, msgspec.json.Decoder[Any]] = {
            tag: msgspec.json.Decoder(cls) for tag, cls in self.types.items()
        }

    def __contains__(self, type_tag: object) -> bool:
        return type_tag in self._decoders

    def tags(self) -> Iterable[str]:
        return self._decoders.keys()

    def decode(self, type_tag: str, body: bytes) -> T:
        """The contract instance for ``body``.

        Raises:
            DecodeError: unknown type, malformed JSON, or a field that does not validate; the
                error's ``path`` names the field (``$.quantity``).
        """
        decoder = self._decoders.get(type_tag)
        if decoder is None:
            raise DecodeError(f"unknown message type {type_tag!r}")
        try:
            return cast(T, decoder.decode(body))
        except msgspec.ValidationError as exc:
            raise DecodeError(str(exc), _path(str(exc))) from exc
        except msgspec.DecodeError as exc:
            raise DecodeError(f"malformed body: {exc}") from exc
