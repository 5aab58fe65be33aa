"""CRLs from http distribution points, fetched in the background and cached until nextUpdate.

Implements the core's ``CrlSource``. The core asks synchronously and must never wait on the network,
so ``crls()`` answers from the cache only; a missing or expired CRL is fetched in the background
and, meanwhile, the core sees "unknown", which by default means keep the message and retry later.
Call ``prefetch()`` (for example with the distribution points of the registry's certificates) at
start-up so the first message does not have to wait for a retry.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import aiohttp
from cryptography import x509

from gateway.protection.revocation import crl_urls, load_crls

log = logging.getLogger("komut.crl")

MAX_BYTES = 64 * 1024 * 1024  # national CAs' CRLs run to tens of MB; anything beyond is not a CRL
DEFAULT_LIFETIME = dt.timedelta(hours=1)  # for a CRL without nextUpdate


class CrlFetchError(Exception):
    """A distribution point did not give us a CRL."""


@dataclass(frozen=True)
class _Cached:
    crl: x509.CertificateRevocationList
    expires: dt.datetime
    fetched: dt.datetime


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class HttpCrlSource:
    def __init__(
        self,
        *,
        timeout: float = 15.0,
        retry_after: float = 60.0,
        max_bytes: int = MAX_BYTES,
        clock: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        self.timeout = timeout
        self.retry_after = retry_after  # seconds before a failed URL is tried again
        self.max_bytes = max_bytes
        self._clock = clock
        self._cache: dict[str, _Cached] = {}
        self._failed_until: dict[str, float] = {}
        self._inflight: set[str] = set()
        self._tasks: list[asyncio.Future | concurrent.futures.Future] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self.fetches = 0  # completed HTTP requests, for operators' counters and tests

    # -- CrlSource ------------------------------------------------------------------------------

    def crls(self, issuer: x509.Certificate, urls: Sequence[str]) -> Sequence[x509.CertificateRevocationList]:
        now = self._clock()
        found = []
        for url in urls:
            cached = self._cache.get(url)
            if cached is not None and now < cached.expires:
                found.append(cached.crl)
            else:
                self._schedule(url)
        return found

    # -- fetching ---------------------------------------------------------------------------------

    async def fetch(self, url: str) -> x509.CertificateRevocationList:
        """Fetch one CRL now and cache it until its nextUpdate. Raises CrlFetchError."""
        self._loop = asyncio.get_running_loop()
        try:
            timeout = aiohttp.ClientTimeout(total=self.timeout)
            async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
                if response.status != 200:
                    self._failed(url)
                    raise CrlFetchError(f"{url}: HTTP {response.status}")
                data = await response.content.read(self.max_bytes + 1)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self._failed(url)
            raise CrlFetchError(f"{url}: {exc.__class__.__name__}: {exc}") from None
        finally:
            self.fetches += 1
        if len(data) > self.max_bytes:
            self._failed(url)
            raise CrlFetchError(f"{url}: more than {self.max_bytes} bytes")
        try:
            crl = load_crls(data)[0]
        except (ValueError, IndexError) as exc:
            self._failed(url)
            raise CrlFetchError(f"{url}: not a CRL ({exc})") from None
        now = self._clock()
        next_update = crl.next_update_utc
        if next_update is None:
            expires = now + DEFAULT_LIFETIME
        elif next_update <= now:
            # A stale CRL is still cached briefly, so a CA that is late does not get hammered; the
            # core sees it is out of date and answers "unknown".
            expires = now + dt.timedelta(seconds=self.retry_after)
            log.warning("CRL %s is out of date (nextUpdate %s)", url, next_update.isoformat())
        else:
            expires = next_update
        self._cache[url] = _Cached(crl, expires, now)
        self._failed_until.pop(url, None)
        log.info("CRL %s from %s cached until %s", url, crl.issuer.rfc4514_string(), expires.isoformat())
        return crl

    async def prefetch(self, sources: Iterable[str | x509.Certificate]) -> dict[str, str | None]:
        """Fetch the CRLs for these URLs or certificates' distribution points; URL -> error or None."""
        urls: list[str] = []
        for source in sources:
            for url in [source] if isinstance(source, str) else crl_urls(source):
                if url not in urls:
                    urls.append(url)
        results = await asyncio.gather(*(self.fetch(url) for url in urls), return_exceptions=True)
        return {
            url: (str(r) if isinstance(r, BaseException) else None)
            for url, r in zip(urls, results, strict=True)
        }

    async def refresh(self, margin: dt.timedelta = dt.timedelta(minutes=10)) -> None:
        """Re-fetch cached CRLs that expire within ``margin`` (call periodically)."""
        soon = self._clock() + margin
        due = [url for url, cached in self._cache.items() if cached.expires <= soon]
        await asyncio.gather(*(self.fetch(url) for url in due), return_exceptions=True)

    async def wait_fetches(self) -> None:
        """Wait for the background fetches started so far (they never raise)."""
        pending, self._tasks = self._tasks, []
        await asyncio.gather(
            *(asyncio.wrap_future(t) if isinstance(t, concurrent.futures.Future) else t for t in pending)
        )

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Tell the source which event loop runs background fetches (needed when ``crls()`` is
        called from worker threads before any fetch ran on the loop)."""
        self._loop = loop or asyncio.get_running_loop()

    def _failed(self, url: str) -> None:
        self._failed_until[url] = time.monotonic() + self.retry_after

    def _schedule(self, url: str) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        loop = running or self._loop
        if loop is None or loop.is_closed():
            return  # nobody to fetch with: the status stays unknown
        with self._lock:
            if url in self._inflight or time.monotonic() < self._failed_until.get(url, 0.0):
                return
            self._inflight.add(url)  # before scheduling: the fetch may finish before we return
            self._tasks = [t for t in self._tasks if not t.done()]
        if running is loop:
            self._tasks.append(loop.create_task(self._background(url)))
        else:
            self._tasks.append(asyncio.run_coroutine_threadsafe(self._background(url), loop))

    async def _background(self, url: str) -> None:
        try:
            await self.fetch(url)
        except CrlFetchError as exc:
            log.warning("CRL fetch failed, revocation status unknown until it works: %s", exc)
        finally:
            with self._lock:
                self._inflight.discard(url)
