"""``{name:id}`` in a route's path: an upstream id, which may hold ``/``.

Starlette decodes ``%2F`` before routing, so an id holding ``/`` reaches the router as more path
segments. Its ``path`` convertor (``.*``) would take them, but stops at a line break (``.`` does
not match one) and takes an empty id; ids come from upstream tools and may hold any character
(``api.schemas.Id``: 1-512 of them). ``IdConvertor`` takes one or more of any character.

Registered with Starlette when this module is imported: import it before declaring a route that
uses ``{name:id}`` (Starlette compiles the path when the route is declared).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path
from starlette.convertors import Convertor, register_url_convertor


class IdConvertor(Convertor[str]):
    """One or more characters of any kind, ``/`` and line breaks included; the value as is."""

    regex = r"[\s\S]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("id", IdConvertor())

#: The path parameter of a ``{name:id}`` segment, as OpenAPI describes it.
IdPath = Annotated[str, Path(description="the upstream id; may hold `/`, sent raw or as `%2F`")]
