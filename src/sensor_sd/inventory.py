"""Inventory source: one conditional, size-capped GET and the JSON body check.

The body is streamed and the read stops as soon as it passes
MAX_RESPONSE_BYTES, so a 600 MB answer costs at most the cap in memory.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import zlib
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
from yarl import URL

from sensor_sd import __version__
from sensor_sd.config import Settings, Source
from sensor_sd.errors import BodyTooLarge, DecodeError, FetchError, FetchTimeout, InventoryError, StatusError
from sensor_sd.files import TOKEN_FILE_LIMIT, UnreadableFile, read_regular

USER_AGENT = f"sensor-sd/{__version__}"
MAX_IN_FLIGHT = 256  # inventory requests at once, over all sources


@dataclass(frozen=True, slots=True)
class Validators:
    """HTTP cache validators sent back as If-None-Match / If-Modified-Since."""

    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True, slots=True)
class Response:
    """A fetched body (None when the inventory answered 304 Not Modified)."""

    body: bytes | None
    validators: Validators


def parse_body(body: bytes) -> list[object]:
    """The body must be UTF-8 JSON whose top level is an array; entries are checked later."""
    try:
        data = orjson.loads(body)  # rejects invalid UTF-8 and invalid JSON as a whole
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"invalid JSON: {exc}") from None
    if not isinstance(data, list):
        raise DecodeError(f"JSON is a {type(data).__name__}, not a list")
    return data


class Client:
    """Fetches inventories over one shared connection pool."""

    def __init__(self, settings: Settings) -> None:
        self._timeout = aiohttp.ClientTimeout(total=settings.request_timeout)
        self._limit = settings.max_response_bytes
        self._token_file: Path | None = settings.inventory_token_file
        self._ca_file: Path | None = settings.inventory_ca_file
        self._ssl: dict[Path | None, ssl.SSLContext | bool] = {None: True}
        if settings.inventory_ca_file:
            self._ssl_for(settings.inventory_ca_file)
        # Requests in flight are bounded (file descriptors, memory), and a request waits for its slot
        # *before* its REQUEST_TIMEOUT starts: hanging stores may hold slots, but a healthy store only
        # waits when more than MAX_IN_FLIGHT stores hang at once, and never fails for it. The pool
        # has exactly as many connections as slots, so no request queues inside the pool, where the
        # wait would count against its timeout (tests/scale/test_many_stores.py).
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._session: aiohttp.ClientSession | None = None
        # Each source's URL parsed once, not on every poll (a tenth of a 304 poll's CPU).
        self._urls: dict[str, URL] = {}

    def forget_cached(self) -> None:
        """After a reload of the sources: re-read CA bundles on next use (a CA file may have been renewed)
        and forget the parsed URLs of sources that may be gone."""
        self._ssl = {None: True}
        self._urls.clear()

    def _ssl_for(self, ca_file: Path | None) -> ssl.SSLContext | bool:
        """One TLS context per CA bundle, shared by every source that names it."""
        ctx = self._ssl.get(ca_file)
        if ctx is None:
            ctx = self._ssl[ca_file] = ssl.create_default_context(cafile=str(ca_file))
        return ctx

    async def __aenter__(self) -> Client:
        connector = aiohttp.TCPConnector(ssl=self._ssl_for(self._ca_file), limit=MAX_IN_FLIGHT, ttl_dns_cache=30)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, headers={"User-Agent": USER_AGENT}, auto_decompress=False
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    def _headers(self, validators: Validators, token_file: Path | None) -> dict[str, str]:
        headers = {"Accept": "application/json", "Accept-Encoding": "gzip, deflate"}
        if validators.etag:
            headers["If-None-Match"] = validators.etag
        if validators.last_modified:
            headers["If-Modified-Since"] = validators.last_modified
        if token_file is not None:
            # Re-read on every request so a rotated token is picked up, as Prometheus does; bounded and
            # non-blocking, so a token swapped for a FIFO or /dev/zero fails the poll instead of the loop.
            try:
                token = read_regular(token_file, TOKEN_FILE_LIMIT).decode().strip()
            except (UnreadableFile, UnicodeDecodeError) as exc:
                what = "INVENTORY_TOKEN_FILE" if token_file == self._token_file else f"token_file {token_file}"
                raise FetchError(f"cannot read {what}: {exc}") from None
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def fetch(self, source: Source, validators: Validators) -> Response:
        """GET the inventory; raises an InventoryError subclass for every failure."""
        assert self._session is not None, "use `async with Client(...)`"
        async with self._slots:
            return await self._fetch(source, validators)

    async def _fetch(self, source: Source, validators: Validators) -> Response:
        assert self._session is not None
        token_file = source.token_file or self._token_file
        try:
            ssl_ctx = self._ssl_for(source.ca_file or self._ca_file)
        except (ssl.SSLError, OSError) as exc:  # a CA file changed on disk since it was validated
            raise FetchError(f"cannot load CA file {source.ca_file}: {exc}") from None
        try:
            url = self._urls.get(source.url)
            if url is None:
                url = self._urls[source.url] = URL(source.url)
            async with self._session.get(url, headers=self._headers(validators, token_file), max_redirects=5,
                                         ssl=ssl_ctx) as resp:
                if resp.status == 304:
                    return Response(None, validators)
                if not 200 <= resp.status < 300:
                    raise StatusError(resp.status)
                declared = resp.content_length
                if declared is not None and declared > self._limit:
                    raise BodyTooLarge(f"Content-Length {declared} exceeds MAX_RESPONSE_BYTES {self._limit}")
                body = await self._read_capped(resp)
                return Response(body, Validators(resp.headers.get("ETag"), resp.headers.get("Last-Modified")))
        except InventoryError:
            raise
        except asyncio.TimeoutError:
            raise FetchTimeout("no complete answer within REQUEST_TIMEOUT") from None
        except aiohttp.TooManyRedirects:
            raise FetchError("too many redirects") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise FetchError(_describe(exc)) from None

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes:
        """The body, decoded per Content-Encoding, joined once at the end (one copy).

        Decoding here rather than in the client library makes a body that
        does not decode as it claims a decode error (not a network one), caps
        the *decoded* size (a gzip bomb stops at MAX_RESPONSE_BYTES) and
        refuses a compressed stream that ends early or has bytes after its end.
        """
        decoder = _Decoder.for_encoding(resp.headers.get("Content-Encoding", ""))
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_any():
            if decoder is not None:
                chunk = decoder.feed(chunk, self._limit + 1 - size)
            size += len(chunk)
            if size > self._limit:
                resp.close()  # drop the connection instead of draining the rest
                raise BodyTooLarge(f"body exceeds MAX_RESPONSE_BYTES {self._limit}")
            chunks.append(chunk)
        if decoder is not None:
            decoder.finish()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _Decoder:
    """One gzip or deflate stream, decoded chunk by chunk with a bound on what one chunk may expand to."""

    def __init__(self, encoding: str) -> None:
        self._encoding = encoding
        self._zlib: zlib._Decompress | None = None

    @classmethod
    def for_encoding(cls, header: str) -> _Decoder | None:
        encoding = header.strip().lower()
        if encoding in ("", "identity"):
            return None
        if encoding not in ("gzip", "x-gzip", "deflate"):
            raise DecodeError(f"unsupported Content-Encoding: {header.strip()[:40]!r} (gzip and deflate are)")
        return cls(encoding)

    def _error(self, what: str) -> DecodeError:
        return DecodeError(f"body does not decode as Content-Encoding {self._encoding}: {what}")

    def feed(self, data: bytes, limit: int) -> bytes:
        """Decoded bytes of `data`, at most `limit` (> 0) of them plus one: enough to tell the cap was passed."""
        if self._zlib is None:
            # deflate is meant to be zlib-wrapped, but raw deflate is common; gzip has its own header.
            wbits = 31 if self._encoding != "deflate" else 15 if _zlib_header(data) else -15
            self._zlib = zlib.decompressobj(wbits)
        if self._zlib.eof:
            if data:
                raise self._error("bytes after the end of the compressed stream")
            return b""
        try:
            out = self._zlib.decompress(data, limit)
        except zlib.error as exc:
            raise self._error(str(exc)) from None
        if self._zlib.unconsumed_tail:  # more than `limit` decoded bytes in this chunk: past the cap
            return out + b"\0"
        if self._zlib.unused_data:
            raise self._error("bytes after the end of the compressed stream")
        return out

    def finish(self) -> None:
        if self._zlib is None:  # an empty body: nothing was compressed
            raise self._error("empty body")
        if not self._zlib.eof:
            raise self._error("the compressed stream ends early")


def _zlib_header(data: bytes) -> bool:
    return len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0


_ERRNO_WORDS = {errno.ECONNREFUSED: "connection refused", errno.ETIMEDOUT: "connection timed out",
                errno.EHOSTUNREACH: "host unreachable", errno.ENETUNREACH: "network unreachable",
                errno.ECONNRESET: "connection reset"}


def _describe(exc: BaseException) -> str:
    """Plain words for a failed request (what and where), without the client library's jargon.

    The line reaches logs, the status page and the terminal summary of `once`/`check`:
    always one line, however many lines (or echoed body bytes) the library's text holds.
    """
    return " ".join(_plain_words(exc).split())[:300]


def _plain_words(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        host = f"[{exc.host}]" if ":" in exc.host else exc.host
        where = f"{host}:{exc.port}"
        os_error = exc.os_error
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            reason = getattr(exc.certificate_error, "verify_message", None) or exc.certificate_error
            return f"TLS certificate not accepted: {where} ({reason})"[:300]
        if isinstance(exc, aiohttp.ClientSSLError):
            return f"TLS handshake failed: {where} ({getattr(os_error, 'reason', None) or os_error})"[:300]
        if isinstance(os_error, socket.gaierror):
            return f"cannot resolve host name: {exc.host} ({os_error.strerror})"[:300]
        words = _ERRNO_WORDS.get(os_error.errno or 0)
        return (f"{words}: {where}" if words else f"cannot connect: {where} ({os_error.strerror or os_error})")[:300]
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the inventory closed the connection without answering"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return f"the answer broke off: {exc}"[:300]
    if isinstance(exc, aiohttp.ClientResponseError):
        first_line = str(exc.message).strip().split("\n", 1)[0]  # the parser's later lines echo the body
        return f"malformed HTTP answer: {first_line}"[:300]
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:300]
    text = str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}"[:300]
