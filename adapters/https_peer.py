"""Gateway to gateway over HTTPS.

Sending: one POST per delivery of the protected (CMS) payload to the peer's inbound URL. The routing
headers carry only HER-ids, the message type, the MsgId and our delivery number, never patient data;
the peer answers with a JSON transport receipt. Receiving: `peer_routes` adds the same endpoint to an
aiohttp application that the composition root owns and serves (with `server_ssl_context`).
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import re
import ssl
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from yarl import URL

from gateway.store import StoreUnavailable
from gateway.transport import Inbound, Outcome, Outgoing, PeerReceipt, SendResult

log = logging.getLogger("komut.transport.https")

PEER_PATH = "/peer/v1/messages"
MAX_BYTES = 35 * 1024 * 1024
MAX_RESPONSE = 64 * 1024  # a receipt is small; a peer that answers with more is not speaking our protocol
MAX_HEADER = 200
MAX_RETRY_AFTER = 24 * 3600.0  # a confused peer must not park a message beyond any sensible expiry

# Routing key (what `Inbound.from_peer` sees) -> HTTP header.
ROUTING_HEADERS = {
    "from_her": "X-Komut-From-Her",
    "to_her": "X-Komut-To-Her",
    "msg_type": "X-Komut-Msg-Type",
    "msg_id": "X-Komut-Msg-Id",
    "delivery": "X-Komut-Delivery",
}
CMS_MEDIA_TYPES = {"application/pkcs7-mime", "application/x-pkcs7-mime"}

# The peer looked at the message and will never take it as it is.
PERMANENT_STATUSES = {400, 403, 404, 405, 409, 410, 413, 415, 422}
# Worth another try: the peer or something in between is busy, down or not yet configured for us.
TRANSIENT_STATUSES = {401, 407, 408, 421, 423, 425, 429}
RECEIPT_STATUSES = {200, 201, 202}

_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def _clean(value: object, limit: int = MAX_HEADER) -> str:
    """Header-safe and log-safe: printable ASCII only, bounded."""
    return _UNPRINTABLE.sub("?", str(value)).strip()[:limit]


# --- TLS ------------------------------------------------------------------------------------------


def server_ssl_context(
    cert: str | Path,
    key: str | Path,
    *,
    client_ca: str | Path | None = None,
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    """TLS 1.2+ for the inbound endpoint. With `client_ca`, clients may (or, required, must) present a
    certificate from it: mutual TLS, and the certificate's CN names the peer in the message log."""
    if require_client_cert and client_ca is None:
        raise ValueError("require_client_cert needs client_ca, the CA that issues the peers' certificates")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    if client_ca is not None:
        ctx.load_verify_locations(cafile=str(client_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def client_ssl_context(
    ca: str | Path | None,
    *,
    cert: str | Path | None = None,
    key: str | Path | None = None,
) -> ssl.SSLContext:
    """TLS 1.2+ for sending: peers' servers are verified against `ca` (host name included); with
    `cert`, this gateway presents its own certificate for mutual TLS."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca is not None else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key is not None else None)
    return ctx


# --- sending --------------------------------------------------------------------------------------


def routing_headers(item: Outgoing) -> dict[str, str]:
    values = {
        "from_her": item.sender_her,
        "to_her": item.receiver_her,
        "msg_type": item.msg_type,
        "msg_id": item.msg_id,
        "delivery": item.delivery_id,
    }
    return {
        ROUTING_HEADERS[key]: _clean(value)
        for key, value in values.items()
        if value is not None and _clean(value)
    }


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as delay-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None or when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


async def _read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in resp.content.iter_chunked(16 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


def _peer_reason(raw: bytes) -> tuple[dict, str]:
    """The peer's receipt (when it sent JSON) and its reason in one line."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict):
        receipt = {k: data.get(k) for k in ("accepted", "duplicate", "reference", "detail") if k in data}
        return receipt, _clean(data.get("detail") or "", 500)
    text = raw.decode("utf-8", "replace")
    text = re.sub(r"<[^>]*>", " ", text)  # error pages from proxies are often HTML
    return {}, _clean(" ".join(text.split()), 300)


def response_result(status: int, headers, raw: bytes, where: str) -> SendResult:
    """Map the peer's HTTP answer to an outcome the dispatcher acts on."""
    receipt, reason = _peer_reason(raw)
    receipt = {**receipt, "http_status": status} if receipt else {}
    retry_after = retry_after_seconds(headers.get("Retry-After"))
    if status in RECEIPT_STATUSES:
        if receipt.get("accepted") is True:
            duplicate = bool(receipt.get("duplicate"))
            ref = _clean(receipt.get("reference") or "", 100)
            detail = "the peer already had it" if duplicate else "the peer has it"
            detail += f" (reference {ref})" if ref else ""
            detail += f": {reason}" if reason else ""
            return SendResult(Outcome.DELIVERED, detail, receipt=receipt)
        # Without a receipt saying so, nobody has promised to keep the message: send it again later
        # (the peer recognises a message it already has).
        why = "a receipt that does not accept it" if receipt else "no transport receipt"
        return SendResult(
            Outcome.TRANSIENT,
            f"{where} answered HTTP {status} with {why}" + (f": {reason}" if reason else ""),
            receipt=receipt,
            retry_after=retry_after,
        )
    refused = f"{where} refused it (HTTP {status})" + (f": {reason}" if reason else "")
    if status in PERMANENT_STATUSES or (400 <= status < 500 and status not in TRANSIENT_STATUSES):
        return SendResult(Outcome.PERMANENT, refused, receipt=receipt)
    if 300 <= status < 400:
        location = _clean(headers.get("Location") or "", 300)
        detail = f"{where} redirects (HTTP {status}) to {location or '?'}; redirects are not followed, check the endpoint"
        return SendResult(Outcome.TRANSIENT, detail, retry_after=retry_after)
    return SendResult(
        Outcome.TRANSIENT,
        f"{where} cannot take it now (HTTP {status})" + (f": {reason}" if reason else ""),
        receipt=receipt,
        retry_after=retry_after,
    )


def _ssl_reason(exc: BaseException) -> str:
    inner = getattr(exc, "os_error", None) or getattr(exc, "certificate_error", None) or exc
    text = getattr(inner, "verify_message", None) or getattr(inner, "reason", None) or str(inner)
    return _clean(text, 300)


class HttpsPeerTransport:
    """Delivers to other gateways' inbound endpoints over HTTPS, one pooled session per transport."""

    def __init__(
        self,
        name: str = "https",
        *,
        ssl_context: ssl.SSLContext | None,
        connect_timeout: float = 5,
        total_timeout: float = 30,
        max_connections_per_host: int = 8,
    ):
        self.name = name
        self.ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        self.total_timeout = total_timeout
        self.max_connections_per_host = max_connections_per_host
        self._session: aiohttp.ClientSession | None = None

    async def start(self, inbound: Inbound) -> None:
        # Receiving is `peer_routes` on the gateway's own web application; here only the client side.
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(
            limit_per_host=self.max_connections_per_host,
            ssl=self.ssl_context if self.ssl_context is not None else True,
        )
        timeout = aiohttp.ClientTimeout(total=self.total_timeout, sock_connect=self.connect_timeout)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            headers={"User-Agent": "komut", "Accept": "application/json"},
            auto_decompress=False,
        )

    async def stop(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def send(self, item: Outgoing) -> SendResult:
        session = self._session
        if session is None:
            return SendResult(Outcome.TRANSIENT, f"the {self.name} transport is not started")
        try:
            url = URL(item.endpoint)
        except (ValueError, TypeError):
            url = None
        if url is None or url.scheme not in ("https", "http") or not url.host:
            return SendResult(Outcome.PERMANENT, f"not an http(s) URL: {_clean(item.endpoint, 300)!r}")
        where = f"{url.scheme}://{url.host}:{url.port}"
        headers = {"Content-Type": item.content_type, **routing_headers(item)}
        try:
            async with session.post(url, data=item.body, headers=headers, allow_redirects=False) as resp:
                raw = await _read_limited(resp, MAX_RESPONSE)
                return response_result(resp.status, resp.headers, raw, where)
        except aiohttp.ClientConnectorCertificateError as exc:
            return SendResult(
                Outcome.TRANSIENT, f"TLS: the certificate of {where} is not trusted: {_ssl_reason(exc)}"
            )
        except (aiohttp.ClientSSLError, ssl.SSLError) as exc:
            return SendResult(Outcome.TRANSIENT, f"TLS handshake with {where} failed: {_ssl_reason(exc)}")
        except aiohttp.ClientConnectorError as exc:
            return SendResult(
                Outcome.TRANSIENT, f"cannot connect to {where}: {_clean(exc.strerror or exc, 300)}"
            )
        except TimeoutError:
            return SendResult(
                Outcome.TRANSIENT,
                f"timeout: {where} did not answer within {self.total_timeout:g} s "
                f"(connect limit {self.connect_timeout:g} s)",
            )
        except aiohttp.InvalidURL:
            return SendResult(Outcome.PERMANENT, f"not a usable URL: {_clean(item.endpoint, 300)!r}")
        except (aiohttp.ClientError, OSError) as exc:
            if isinstance(exc.__cause__, ssl.SSLError) or "SSL" in type(exc).__name__:
                return SendResult(Outcome.TRANSIENT, f"TLS with {where} failed: {_ssl_reason(exc)}")
            reason = "closed without answering" if isinstance(exc, aiohttp.ServerDisconnectedError) else None
            detail = f"{where} dropped the connection: {reason or _clean(exc, 300)}"
            if url.scheme == "https":
                # Under TLS 1.3 a server that refuses our client certificate just drops the connection
                # once the handshake looks done; the error says no more than that.
                detail += "; if the peer requires mutual TLS, check that it trusts our client certificate"
            return SendResult(Outcome.TRANSIENT, detail)


# --- receiving ------------------------------------------------------------------------------------


def _receipt_response(receipt: PeerReceipt) -> web.Response:
    headers = {}
    if receipt.retry_after is not None:
        headers["Retry-After"] = str(max(0, math.ceil(receipt.retry_after)))
    body = {
        "accepted": receipt.accepted,
        "duplicate": receipt.duplicate,
        "reference": receipt.message_ref,
        "detail": receipt.detail,
    }
    return web.json_response(body, status=receipt.status, headers=headers)


def _refusal(status: int, detail: str, retry_after: float | None = None) -> web.Response:
    return _receipt_response(PeerReceipt(False, status, detail, retry_after=retry_after))


def peer_name(request: web.Request) -> str:
    """The client certificate's CN under mutual TLS (the handshake verified it), else the address."""
    transport = request.transport
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if cert:
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName" and value:
                    return _clean(value, 100)
    return _clean(request.remote or "unknown", 100)


def peer_routes(
    app: web.Application,
    inbound: Inbound,
    *,
    path: str = PEER_PATH,
    max_bytes: int = MAX_BYTES,
) -> None:
    """Add the endpoint where other gateways POST messages to `app`."""

    async def receive(request: web.Request) -> web.Response:
        if request.content_type not in CMS_MEDIA_TYPES:
            return _refusal(415, "expected Content-Type application/pkcs7-mime (a CMS message)")
        if request.content_length is not None and request.content_length > max_bytes:
            return _refusal(413, f"the message is larger than {max_bytes} bytes")
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > max_bytes:
                return _refusal(413, f"the message is larger than {max_bytes} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        if not body:
            return _refusal(400, "empty body")
        routing = {}
        for key, header in ROUTING_HEADERS.items():
            value = request.headers.get(header)
            if value is not None and _clean(value):
                routing[key] = _clean(value)
        source = f"https:{peer_name(request)}"
        try:
            receipt = await inbound.from_peer(body, routing, source=source)
        except StoreUnavailable as exc:
            log.error("receiving from %s: %s", source, exc)
            return _refusal(
                503, "the gateway cannot store messages right now; send it again later", exc.retry_after
            )
        except Exception:
            log.exception(
                "receiving from %s failed (msg %s, delivery %s)",
                source,
                routing.get("msg_id", "?"),
                routing.get("delivery", "?"),
            )
            return _refusal(503, "the gateway could not take the message now; send it again later", 60)
        return _receipt_response(receipt)

    app.router.add_post(path, receive)
