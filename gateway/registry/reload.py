"""Keeping the running registry current: atomic swap, reload on SIGHUP, reload on file change.

Why no message is dropped: a `Registry` is immutable, and `RegistryHolder.current` is a single
attribute read. Code handling a message takes the snapshot once and uses it to the end, so a
reload never changes anything under it; the next message simply sees the new snapshot. A file
that fails to load is logged with every problem and the old snapshot keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from gateway.registry.model import Registry
from gateway.registry.problems import Problem, RegistryError

log = logging.getLogger("komut.registry")

#: How often the file watcher polls, in seconds.
DEFAULT_POLL_INTERVAL = 2.0

Listener = Callable[[Registry], None]
#: Per file: (mtime_ns, size, sha256) or None when the file does not exist.
Fingerprint = tuple[tuple[str, tuple[int, int, str] | None], ...]


class Source(Protocol):
    """Anything that loads a registry: `RegistrySource`, or a stub in tests."""

    def load(self) -> Registry: ...

    def describe(self) -> str: ...


class RegistryHolder:
    """Holds the current registry snapshot and replaces it when a reload succeeds."""

    def __init__(self, source: Source, registry: Registry | None = None) -> None:
        """Loads the source now unless a registry is given; a broken file raises `RegistryError`
        here, since at start-up there is no previous registry to keep serving."""
        self.source = source
        self._registry = registry if registry is not None else source.load()
        self._files: tuple[Path, ...] = self._registry.files
        # The state of the files the current registry (or the last failed attempt) was read from;
        # the watcher reloads when the files no longer match it.
        self._fingerprint = fingerprint(self._files)
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._tasks: set[asyncio.Task] = set()
        #: Incremented on every successful swap; handy in logs and tests.
        self.generation = 1
        #: Problems of the last failed reload, cleared by a successful one.
        self.last_problems: list[Problem] = []

    @property
    def current(self) -> Registry:
        return self._registry

    @property
    def watched_files(self) -> tuple[Path, ...]:
        """Files of the last load attempt, including ones that failed or were missing, so that
        fixing any of them triggers the next reload."""
        return self._files

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(new_registry)` after each successful swap (e.g. to rebuild a cache)."""
        self._listeners.append(listener)

    def replace(self, registry: Registry) -> None:
        self._registry = registry
        self.generation += 1
        self.last_problems = []
        for listener in self._listeners:
            try:
                listener(registry)
            except Exception:
                log.exception("registry listener %r failed", listener)

    def reload(self) -> list[Problem]:
        """Load the source again. Returns [] after swapping in the new registry, or the problems
        that made the reload fail, in which case the current registry stays as it was."""
        with self._lock:
            # Taken before reading: a change made while loading then still differs next poll,
            # which costs at most one extra reload instead of a missed one.
            before = fingerprint(self._files)
            try:
                registry = self.source.load()
            except RegistryError as exc:
                self._note_files(exc.files or self._files, before)
                self.last_problems = exc.problems
                log.error("%s; still serving generation %d", exc, self.generation)
                return exc.problems
            self._note_files(registry.files, before)
            self.replace(registry)
            log.info(
                "registry reloaded from %s: %d parties (generation %d)",
                self.source.describe(),
                len(registry),
                self.generation,
            )
            return []

    def _note_files(self, files: tuple[Path, ...], before: Fingerprint) -> None:
        self._fingerprint = before if files == self._files else fingerprint(files)
        self._files = files

    def files_changed(self) -> bool:
        """Whether the watched files differ from what the last load attempt read."""
        return fingerprint(self._files) != self._fingerprint

    async def reload_async(self) -> list[Problem]:
        """`reload()` in a worker thread: reading files and certificates must not stall the loop."""
        return await asyncio.to_thread(self.reload)

    # -- triggers ------------------------------------------------------------------------------

    def install_sighup(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Reload when the process receives SIGHUP (the conventional "re-read your config")."""
        loop = loop or asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup, loop)

    def _on_sighup(self, loop: asyncio.AbstractEventLoop) -> None:
        log.info("SIGHUP: reloading registry from %s", self.source.describe())
        task = loop.create_task(self.reload_async())
        # Keep a reference until done: the loop only holds tasks weakly.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def watch(self, interval: float = DEFAULT_POLL_INTERVAL) -> asyncio.Task:
        """Start a task that reloads when the registry file or a certificate it names changes.

        Polling (mtime, size and content hash) rather than inotify keeps it portable and also
        catches editors that replace the file by rename, and same-second rewrites.
        """
        task = asyncio.get_running_loop().create_task(self._watch(interval), name="registry-watch")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if await asyncio.to_thread(self.files_changed):
                log.info("registry files changed; reloading")
                await self.reload_async()

    async def stop(self) -> None:
        """Cancel the watcher and any reload still running (for orderly shutdown and tests)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


def install_sighup(loop: asyncio.AbstractEventLoop, holder: RegistryHolder) -> None:
    """Function form of `RegistryHolder.install_sighup`."""
    holder.install_sighup(loop)


def fingerprint(files: Iterable[Path]) -> Fingerprint:
    """(mtime, size, content hash) of each file; None for a file that is missing."""
    out = []
    for path in files:
        try:
            stat = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            out.append((str(path), None))
            continue
        out.append((str(path), (stat.st_mtime_ns, stat.st_size, digest)))
    return tuple(out)
