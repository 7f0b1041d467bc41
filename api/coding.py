"""HTTP content codings of request bodies (RFC 9110 section 8.4): ``gzip`` (``x-gzip``),
``deflate`` and ``identity``, decoded with a cap on the decoded size, for every ingest route
(``POST /v1/events``, ``/v1/hooks/claude-code``, ``/v1/traces``); and the media type a
``Content-Type`` names (``media_type_of``).
"""

from __future__ import annotations

import zlib

#: How the ingest routes' OpenAPI request bodies say which codings they take.
ACCEPTED_CODINGS = "Content-Encoding: gzip or deflate accepted"


class ContentCodingError(ValueError):
    """A compressed body that cannot be decoded: corrupt, truncated, or followed by trailing
    data (HTTP 400)."""


class UnsupportedContentCodingError(ContentCodingError):
    """A ``Content-Encoding`` other than gzip, deflate or identity (HTTP 415, as RFC 9110
    section 15.5.16 answers an unsupported content coding)."""


class DecodedBodyTooLargeError(ContentCodingError):
    """The body, once decoded, is larger than allowed (HTTP 413)."""


def media_type_of(content_type: str | None) -> str:
    """The media type of a ``Content-Type`` header (RFC 9110 section 8.3.1), its parameters
    (``; charset=utf-8``) and surrounding spaces removed, lowercased (type and subtype are
    case-insensitive): ``"Application/JSON; charset=utf-8"`` -> ``"application/json"``; no
    header -> ``""``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def decode_content(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    """The body with its content coding removed.

    Args:
        body: the request body as received.
        content_encoding: the ``Content-Encoding`` header: None, ``identity``, ``gzip`` (or
            ``x-gzip``; several members one after the other, RFC 1952 section 2.2) or
            ``deflate`` (a zlib stream as RFC 9110 defines it, or the raw deflate some clients
            send); case and surrounding spaces ignored.
        max_bytes: largest decoded body, in bytes; also applies to an uncoded one. Decoding
            stops one byte past it, so a compression bomb never fills memory.

    Raises:
        UnsupportedContentCodingError: another coding (e.g. ``br``, or a list of codings).
        DecodedBodyTooLargeError: the decoded body exceeds ``max_bytes``.
        ContentCodingError: corrupt, truncated or trailing data.
    """
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        if len(body) > max_bytes:
            raise DecodedBodyTooLargeError(f"body is larger than {max_bytes} bytes")
        return body
    if encoding in ("gzip", "x-gzip"):
        return _inflate(body, zlib.MAX_WBITS | 16, max_bytes, encoding)
    if encoding == "deflate":
        # HTTP "deflate" means a zlib stream, but some clients send raw deflate; a zlib
        # stream starts with a CM=8 header whose first two bytes are a multiple of 31.
        is_zlib = len(body) >= 2 and body[0] & 0x0F == 8 and (body[0] << 8 | body[1]) % 31 == 0
        return _inflate(body, zlib.MAX_WBITS if is_zlib else -zlib.MAX_WBITS, max_bytes, encoding)
    raise UnsupportedContentCodingError(
        f"unsupported content encoding {content_encoding!r}; expected gzip, deflate or identity"
    )


def _inflate(data: bytes, wbits: int, max_bytes: int, encoding: str) -> bytes:
    # Output is requested in slices of at most max_bytes + 1, so a zip bomb is stopped after
    # producing one byte too many instead of filling memory.
    output = bytearray()
    decompressor = zlib.decompressobj(wbits)
    pending = data
    while True:
        try:
            output += decompressor.decompress(pending, max_bytes + 1 - len(output))
        except zlib.error as error:
            raise ContentCodingError(f"corrupt {encoding} body: {error}") from error
        if len(output) > max_bytes:
            raise DecodedBodyTooLargeError(f"decompressed body is larger than {max_bytes} bytes")
        if decompressor.eof:
            pending = decompressor.unused_data
            if not pending:
                return bytes(output)
            # gzip allows several members one after the other (RFC 1952 section 2.2).
            if wbits & 16:
                decompressor = zlib.decompressobj(wbits)
                continue
            raise ContentCodingError(f"trailing data after the {encoding} stream")
        pending = decompressor.unconsumed_tail
        if not pending:
            # Output was not capped, so zlib has consumed all input and still wants more.
            raise ContentCodingError(f"truncated {encoding} body")
