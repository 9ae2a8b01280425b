"""Inventory source: one conditional, size-capped GET and the JSON body check.

The body is streamed and the read stops as soon as it passes
MAX_RESPONSE_BYTES, so a 600 MB answer costs at most the cap in memory.
Two clients apply the same rules (headers, token, CA bundles, status, size
cap, decoding, error words): `Client` on aiohttp for the daemon, and
`OneShotClient` on the standard library for `once` and `check`, which make
one request per source and exit; aiohttp's client costs more to import (it
also loads the system CA bundle twice) than such a run spends on its work.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import http.client
import socket
import ssl
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urljoin, urlsplit


from sensor_sd import __version__
from sensor_sd.config import Settings
from sensor_sd.sources import Source
from sensor_sd.errors import BodyTooLarge, DecodeError, FetchError, FetchTimeout, InventoryError, StatusError
from sensor_sd.files import TOKEN_FILE_LIMIT, UnreadableFile, read_regular

if TYPE_CHECKING:
    import aiohttp
    from yarl import URL

USER_AGENT = f"sensor-sd/{__version__}"
MAX_IN_FLIGHT = 256  # inventory requests at once, over all sources
MAX_REDIRECTS = 5  # answers in a row that redirect: the last one fails the poll
_READ_CHUNK = 64 * 1024


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


class Client:
    """Fetches inventories over one shared aiohttp connection pool (the daemon's client).

    The rules both clients share live here: request headers and the token, the
    TLS context per CA bundle, the status and Content-Length checks, and the
    capped, decoded read (`_Body`).
    """

    def __init__(self, settings: Settings) -> None:
        self._timeout_seconds = settings.request_timeout
        self._limit = settings.max_response_bytes
        self._token_file: Path | None = settings.inventory_token_file
        self._ca_file: Path | None = settings.inventory_ca_file
        # None: the system's CA bundle (aiohttp's own default context; the one-shot client's built on first use).
        self._ssl: dict[Path | None, ssl.SSLContext | None] = {}
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
        self._ssl = {}
        self._urls.clear()

    def _ssl_for(self, ca_file: Path | None) -> ssl.SSLContext | None:
        """One TLS context per CA bundle, shared by every source that names it; None for the system's."""
        if ca_file is None:
            return None
        ctx = self._ssl.get(ca_file)
        if ctx is None:
            ctx = self._ssl[ca_file] = ssl.create_default_context(cafile=str(ca_file))
        return ctx

    def _source_ssl(self, source: Source) -> ssl.SSLContext | None:
        try:
            return self._ssl_for(source.ca_file or self._ca_file)
        except (ssl.SSLError, OSError) as exc:  # a CA file changed on disk since it was validated
            raise FetchError(f"cannot load CA file {source.ca_file or self._ca_file}: {exc}") from None

    async def __aenter__(self) -> Client:
        import aiohttp  # the daemon's only: `once` and `check` never import it

        ctx = self._ssl_for(self._ca_file)
        connector = aiohttp.TCPConnector(ssl=True if ctx is None else ctx, limit=MAX_IN_FLIGHT, ttl_dns_cache=30)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=self._timeout_seconds),
            headers={"User-Agent": USER_AGENT}, auto_decompress=False)
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
            if any(c < " " or c == "\x7f" for c in token):  # a header must not carry them; never echo the token
                what = "INVENTORY_TOKEN_FILE" if token_file == self._token_file else f"token_file {token_file}"
                raise FetchError(f"cannot send {what}: the token holds a line break or another control character")
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _answered(self, status: int, content_length: int | None) -> bool:
        """False for 304 Not Modified; raises for any other non-2xx status or a declared oversized body."""
        if status == 304:
            return False
        if not 200 <= status < 300:
            raise StatusError(status)
        if content_length is not None and content_length > self._limit:
            raise BodyTooLarge(f"Content-Length {content_length} exceeds MAX_RESPONSE_BYTES {self._limit}")
        return True

    async def fetch(self, source: Source, validators: Validators) -> Response:
        """GET the inventory; raises an InventoryError subclass for every failure."""
        assert self._session is not None, "use `async with Client(...)`"
        async with self._slots:
            return await self._fetch(source, validators)

    async def _fetch(self, source: Source, validators: Validators) -> Response:
        import aiohttp
        from yarl import URL

        assert self._session is not None
        token_file = source.token_file or self._token_file
        ctx = self._source_ssl(source)
        try:
            url = self._urls.get(source.url)
            if url is None:
                url = self._urls[source.url] = URL(source.url)
            async with self._session.get(url, headers=self._headers(validators, token_file),
                                         max_redirects=MAX_REDIRECTS, ssl=True if ctx is None else ctx) as resp:
                if not self._answered(resp.status, resp.content_length):
                    return Response(None, validators)
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
        body = _Body(self._limit, resp.headers.get("Content-Encoding", ""))
        async for chunk in resp.content.iter_any():
            try:
                body.add(chunk)
            except BodyTooLarge:
                resp.close()  # drop the connection instead of draining the rest
                raise
        return body.result()


class _Body:
    """The body, decoded per Content-Encoding, joined once at the end (one copy).

    Decoding here rather than in the client library makes a body that
    does not decode as it claims a decode error (not a network one), caps
    the *decoded* size (a gzip bomb stops at MAX_RESPONSE_BYTES) and
    refuses a compressed stream that ends early or has bytes after its end.
    """

    def __init__(self, limit: int, content_encoding: str) -> None:
        self._limit = limit
        self._decoder = _Decoder.for_encoding(content_encoding)
        self._chunks: list[bytes] = []
        self._size = 0

    def add(self, chunk: bytes) -> None:
        """Raises BodyTooLarge once the decoded body passes the cap: the caller drops the connection."""
        if self._decoder is not None:
            chunk = self._decoder.feed(chunk, self._limit + 1 - self._size)
        self._size += len(chunk)
        if self._size > self._limit:
            raise BodyTooLarge(f"body exceeds MAX_RESPONSE_BYTES {self._limit}")
        self._chunks.append(chunk)

    def result(self) -> bytes:
        if self._decoder is not None:
            self._decoder.finish()
        return self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)


class OneShotClient(Client):
    """The same GET on the standard library's http.client, for `once` and `check`.

    One request per source, each in a worker thread (at most MAX_IN_FLIGHT);
    REQUEST_TIMEOUT bounds the whole request: when it passes, the socket is
    shut down under the worker, which then ends. Redirects are followed as
    aiohttp follows them (MAX_REDIRECTS; the token only to the same origin).
    The system CA bundle is read only for an https URL.
    """

    async def __aenter__(self) -> OneShotClient:
        self._pool = ThreadPoolExecutor(MAX_IN_FLIGHT, thread_name_prefix="inventory")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _system_ssl(self) -> ssl.SSLContext:
        ctx = self._ssl.get(None)
        if ctx is None:
            ctx = self._ssl[None] = ssl.create_default_context()
        return ctx

    async def fetch(self, source: Source, validators: Validators) -> Response:
        async with self._slots:  # as many in flight as workers: the timeout starts with the request, not in a queue
            get = _OneGet(self, source, validators)
            work = asyncio.get_running_loop().run_in_executor(self._pool, get.run)
            try:
                return await asyncio.wait_for(work, self._timeout_seconds)
            except asyncio.TimeoutError:
                get.abort()
                raise FetchTimeout("no complete answer within REQUEST_TIMEOUT") from None


class _OneGet:
    """One GET (and its redirects) in a worker thread; `abort` shuts its socket down from another thread."""

    def __init__(self, client: OneShotClient, source: Source, validators: Validators) -> None:
        self._client = client
        self._source = source
        self._validators = validators
        self._conn: http.client.HTTPConnection | None = None
        self._aborted = False
        self._deadline = time.monotonic() + client._timeout_seconds

    def abort(self) -> None:
        self._aborted = True
        sock = self._conn.sock if self._conn is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def run(self) -> Response:
        client, source = self._client, self._source
        token_file = source.token_file or client._token_file
        headers = {"User-Agent": USER_AGENT, **client._headers(self._validators, token_file)}
        url = source.url
        user = urlsplit(url)
        if user.username is not None:  # user:password in the URL: basic auth, as aiohttp sends it
            credentials = f"{unquote(user.username)}:{unquote(user.password or '')}".encode("latin-1")
            headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
        try:
            for _ in range(MAX_REDIRECTS):  # as aiohttp counts: the fifth redirect in a row fails
                parts = urlsplit(url)
                conn = self._connect(parts.scheme, parts.hostname or "", parts.port)
                try:
                    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                    conn.request("GET", target, headers=headers)
                    resp = conn.getresponse()
                    location = resp.getheader("Location")
                    if resp.status in (301, 302, 303, 307, 308) and location is not None:
                        new = urljoin(url, location.strip())
                        if urlsplit(new).scheme not in ("http", "https"):
                            raise FetchError(f"redirect to a URL that is not http(s): {new[:200]}")
                        if _origin(new) != _origin(url):
                            headers.pop("Authorization", None)
                        url = new
                        continue
                    if not client._answered(resp.status, _content_length(resp)):
                        return Response(None, self._validators)
                    body = self._read(conn, resp)
                    return Response(body, Validators(resp.getheader("ETag"), resp.getheader("Last-Modified")))
                finally:
                    conn.close()
            raise FetchError("too many redirects")
        except InventoryError:
            raise
        except (http.client.HTTPException, OSError, ValueError) as exc:
            if self._aborted or isinstance(exc, TimeoutError):
                raise FetchTimeout("no complete answer within REQUEST_TIMEOUT") from None
            raise FetchError(_one_line(_stdlib_words(exc))) from None

    def _connect(self, scheme: str, host: str, port: int | None) -> http.client.HTTPConnection:
        # The socket's own timeout, per operation, ends at the request's deadline: a worker left behind by
        # `abort` before its socket existed (connecting) is not kept past it.
        timeout = max(0.001, self._deadline - time.monotonic())
        if scheme == "https":
            ctx = self._client._source_ssl(self._source) or self._client._system_ssl()
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        self._conn = conn
        if self._aborted:
            raise FetchTimeout("no complete answer within REQUEST_TIMEOUT")
        try:
            conn.connect()
        except OSError as exc:
            if self._aborted:
                raise FetchTimeout("no complete answer within REQUEST_TIMEOUT") from None
            raise FetchError(_one_line(_connect_words(host, conn.port, exc))) from None
        return conn

    def _read(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> bytes:
        body = _Body(self._client._limit, resp.getheader("Content-Encoding", ""))
        while chunk := resp.read1(_READ_CHUNK):
            body.add(chunk)  # BodyTooLarge: the caller closes the connection unread
        if resp.length:  # http.client returns b"" when a declared body breaks off
            raise FetchError(f"the answer broke off: {resp.length} of {_content_length(resp)} declared bytes missing")
        if resp.length == 0 and conn.sock is not None and resp.fp is not None:
            # Bytes already there past the declared length: the answer lies about its length (as aiohttp's parser
            # reports it). Looked at without waiting: the socket is made non-blocking for the peek.
            conn.sock.setblocking(False)
            try:
                extra = resp.fp.peek(1)
            except (BlockingIOError, ssl.SSLWantReadError):  # nothing there: TLS says so by an exception
                extra = b""
            if extra:
                raise FetchError(_malformed("data after the declared Content-Length"))
        return body.result()


def _content_length(resp: http.client.HTTPResponse) -> int | None:
    value = resp.getheader("Content-Length")
    return int(value) if value is not None and value.strip().isdigit() else None


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


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
    return _one_line(_plain_words(exc))


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


def _connect_words(host: str, port: int | None, error: BaseException, *, cert: bool = False, tls: bool = False) -> str:
    """A connection that did not come about, in the same words for both clients."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if cert or isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted: {where} ({getattr(error, 'verify_message', None) or error})"
    if tls or isinstance(error, ssl.SSLError):
        return f"TLS handshake failed: {where} ({getattr(error, 'reason', None) or error})"
    if isinstance(error, socket.gaierror):
        return f"cannot resolve host name: {host} ({error.strerror})"
    errno_ = error.errno if isinstance(error, OSError) else None
    words = _ERRNO_WORDS.get(errno_ or 0)
    strerror = error.strerror if isinstance(error, OSError) else None
    return f"{words}: {where}" if words else f"cannot connect: {where} ({strerror or error})"


def _plain_words(exc: BaseException) -> str:
    import aiohttp

    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return _connect_words(exc.host, exc.port, exc.certificate_error, cert=True)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _connect_words(exc.host, exc.port, exc.os_error, tls=isinstance(exc, aiohttp.ClientSSLError))
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return _CLOSED
    if isinstance(exc, aiohttp.ClientPayloadError):
        return f"the answer broke off: {exc}"[:300]
    if isinstance(exc, aiohttp.ClientResponseError):
        return _malformed(str(exc.message))
    return _other_words(exc)


_CLOSED = "the inventory closed the connection without answering"


def _malformed(text: str) -> str:
    first_line = text.strip().split("\n", 1)[0]  # a parser's later lines echo the body
    return f"malformed HTTP answer: {first_line}"[:300]


def _other_words(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:300]
    text = str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}"[:300]


def _stdlib_words(exc: BaseException) -> str:
    """The one-shot client's failures, in the words `_plain_words` gives aiohttp's."""
    if isinstance(exc, http.client.RemoteDisconnected):
        return _CLOSED
    if isinstance(exc, http.client.IncompleteRead):
        return f"the answer broke off: {len(exc.partial)} bytes read, {exc.expected} more expected"
    if isinstance(exc, http.client.HTTPException):
        return _malformed(str(exc) or exc.__class__.__name__)
    return _other_words(exc)
