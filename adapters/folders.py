"""Folders: the transport for local systems that exchange files.

Each party (a HER-id served by a folder-connected local system) has a folder tree:

    out/          the local system writes here (x.xml.tmp, then renames it to x.xml); the gateway reads
    in/           the gateway writes here (.x.xml.<token>.tmp, then renames); the local system reads
    archive/      files the gateway accepted (or had already), prefixed with the UTC time of pick-up
    error/        files the gateway refused, each with <name>.err saying why
    .processing/  files the gateway has claimed and not yet finished

Claiming is an atomic rename from out/ into .processing/, so a file leaves out/ exactly once. A file
left in .processing/ by a crash is processed again at the next start; the pipeline recognises the
message by sender and MsgId, so doing it twice stores and sends it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import hashlib
import logging
import os
import re
import secrets
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from gateway.transport import Inbound, Outcome, Outgoing, SendResult, SubmitResult
from message_types.codes import ErrorCode
from message_types.problems import Problem, mask_national_ids

log = logging.getLogger("komut.transport.folders")

PARTIAL_SUFFIXES = (".tmp", ".part", ".partial")
MAX_BYTES = 35 * 1024 * 1024
MAX_SUFFIX = 1000
# Claimed names are "<stamp>_<name>", and error/ adds ".err" and a temporary ".<name>.<hex>.tmp":
# kept well under the 255 bytes most file systems allow for a name.
MAX_CLAIMED_NAME = 200


@dataclass(frozen=True)
class FolderParty:
    her_id: int
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def inbox(self) -> Path:
        return self.root / "in"

    @property
    def archive(self) -> Path:
        return self.root / "archive"

    @property
    def error(self) -> Path:
        return self.root / "error"

    @property
    def processing(self) -> Path:
        return self.root / ".processing"

    def create(self) -> None:
        for folder in (self.out, self.inbox, self.archive, self.error, self.processing):
            folder.mkdir(parents=True, exist_ok=True)


@dataclass
class _Pending:
    """A claimed file that the pipeline could not take; it waits in .processing/ for another try."""

    attempts: int = 0
    next_at: float = 0.0
    last_error: str = ""


@dataclass
class _Claim:
    party: FolderParty
    path: Path  # in .processing/
    size: int = 0
    picked_at: str = field(default_factory=lambda: _stamp())


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def is_complete_name(name: str) -> bool:
    """Local systems write under a temporary name and rename when done; only the final name counts."""
    return not name.startswith(".") and not name.lower().endswith(PARTIAL_SUFFIXES)


def safe_filename(name: str, fallback: str) -> str:
    """A plain file name inside the folder: no directories, no hidden files, no odd characters."""
    name = os.path.basename(name.replace("\\", "/"))
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    if not name or name.lower().endswith(PARTIAL_SUFFIXES) or len(name) > 200:
        name = re.sub(r"[^A-Za-z0-9._-]", "_", fallback).lstrip(".")[:200] or "message.xml"
    return name


def processing_name(stamp: str, name: str) -> str:
    """`<stamp>_<name>`, the name shortened (its extension kept) when the whole would be too long."""
    full = f"{stamp}_{name}"
    if len(os.fsencode(full)) <= MAX_CLAIMED_NAME:
        return full
    stem, ext = os.path.splitext(name)
    if len(os.fsencode(ext)) > 16:
        stem, ext = name, ""
    room = MAX_CLAIMED_NAME - len(os.fsencode(f"{stamp}_~{ext}"))
    return f"{stamp}_{os.fsencode(stem)[:room].decode('utf-8', 'ignore')}~{ext}"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a directory; the rename is still atomic there
    finally:
        os.close(fd)


def _free_name(folder: Path, name: str) -> Path:
    """`name` in `folder`, or name-2, name-3 ... when taken: moves never overwrite a file."""
    target = folder / name
    stem, ext = os.path.splitext(name)
    n = 2
    while target.exists() or target.is_symlink():
        target = folder / f"{stem}-{n}{ext}"
        n += 1
    return target


def _write_atomically(folder: Path, name: str, data: bytes) -> Path:
    tmp = folder / f".{name}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        target = folder / name
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(folder)
    return target


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        if path.stat().st_size != len(data):
            return False
        return path.read_bytes() == data
    except FileNotFoundError:
        return False


LEDGER = ".delivered"
# renameat2(2): RENAME_NOREPLACE fails with EEXIST instead of replacing the target; AT_FDCWD: paths as given.
RENAME_NOREPLACE = 1
AT_FDCWD = -100


def _load_renameat2():
    """libc's renameat2, where there is one (Linux with glibc 2.28 or later)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


_renameat2 = _load_renameat2()


def _move_into_place(tmp: Path, path: Path) -> None:
    """Rename `tmp` to `path`, never replacing a file at `path` (FileExistsError instead).

    One rename makes the file visible and takes the temporary name away in the same step: that is
    how a retry after a crash can tell whether the local system was handed the file. Where the
    kernel or the file system cannot rename without replacing, a hard link is made and the
    temporary name removed after it; a retry then recognises the link while the file is in place
    or was moved within the file system (by its link count), but not once it has been deleted.
    """
    if _renameat2 is not None:
        if _renameat2(AT_FDCWD, os.fsencode(tmp), AT_FDCWD, os.fsencode(path), RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), str(path))  # EEXIST: FileExistsError
    try:
        os.link(tmp, path)  # a hard link never replaces an existing file either
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "file exists", str(path)) from None
        os.rename(tmp, path)  # file systems without hard links (some shares)
        return
    os.unlink(tmp)


def _ledger_marker(folder: Path, name: str) -> Path:
    # Beside the in-folder, not in it, so local systems never see it.
    return folder.parent / LEDGER / f"{name}.sha256"


def _ledger_entry(folder: Path, name: str, digest: str) -> tuple[str, str | None] | None:
    """What the ledger holds for these bytes under `name`: the file name they were delivered as and,
    when the entry was written just before that, the temporary file they were to be renamed from."""
    try:
        fields = _ledger_marker(folder, name).read_text(encoding="utf-8").split()
    except FileNotFoundError:
        return None
    if len(fields) < 2 or fields[0] != digest:
        return None
    return fields[1], (fields[2] if len(fields) > 2 else None)


def _record(folder: Path, name: str, digest: str, written: str, tmp: str | None = None) -> None:
    """Write the ledger entry for `name`; with `tmp`, durably, before `tmp` is renamed to `written`."""
    marker = _ledger_marker(folder, name)
    marker.parent.mkdir(exist_ok=True)
    temporary = marker.with_name(f".{marker.name}.{secrets.token_hex(4)}.tmp")
    with open(temporary, "x", encoding="utf-8") as f:
        f.write(f"{digest} {written}{f' {tmp}' if tmp else ''}\n")
        if tmp:
            f.flush()
            os.fsync(f.fileno())
    os.replace(temporary, marker)
    if tmp:
        _fsync_dir(marker.parent)


def _deliver_file(folder: Path, name: str, data: bytes) -> tuple[Path, bool]:
    """Write `data` as `name` (or name-2, ...) in `folder`. Returns the path and whether it was there already.

    A delivery interrupted after the file became visible (the gateway killed before it recorded the
    receipt) is tried again later, and by then the local system may have taken the file away. The
    ledger remembers what was delivered, so the retry says "already delivered" instead of handing the
    same message over twice. Its entry is written, and synced, before the file becomes visible: it
    names the temporary file and the name that file is to get, and one rename then makes the file
    visible and takes the temporary file away. So whichever step a kill interrupts, a retry that
    finds the entry knows: the temporary file gone means handed over; still there means not yet,
    and the retry finishes the job with it. (Written after the file became visible, the entry would
    leave a window in which a kill hands the same file over twice.)
    """
    if not folder.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such folder", str(folder))
    digest = hashlib.sha256(data).hexdigest()
    tmp: Path | None = None
    entry = _ledger_entry(folder, name, digest)
    if entry is not None:
        written, pending = entry
        if pending is None:
            return folder / written, True
        leftover = folder / pending
        try:
            links = os.lstat(leftover).st_nlink
        except FileNotFoundError:
            return folder / written, True  # renamed into place: handed over
        if links > 1:
            # Linked into place (no rename without replacing here); killed before the unlink.
            leftover.unlink()
            return folder / written, True
        if _same_bytes(leftover, data):
            tmp = leftover  # written and synced before the entry named it: finish with it
        # Otherwise it is not ours after all: left alone (removing it while the entry names it
        # would make the entry say "handed over"), it stops mattering with the next entry.
    named = tmp is not None  # the ledger names the temporary file: it stays until it is renamed
    stem, ext = os.path.splitext(name)
    try:
        for n in range(1, MAX_SUFFIX + 1):
            candidate = name if n == 1 else f"{stem}-{n}{ext}"
            path = folder / candidate
            if _same_bytes(path, data):
                _record(folder, name, digest, candidate)
                named = False
                return path, True
            if os.path.lexists(path):
                continue
            if tmp is None:
                tmp = folder / f".{candidate}.{secrets.token_hex(4)}.tmp"
                with open(tmp, "xb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                _fsync_dir(folder)  # on disk before the ledger names it
            _record(folder, name, digest, candidate, tmp.name)
            named = True
            try:
                _move_into_place(tmp, path)
            except FileExistsError:
                # A file with this name appeared meanwhile: it keeps its bytes, ours take the next name.
                if _same_bytes(path, data):
                    _record(folder, name, digest, candidate)
                    named = False
                    return path, True
                continue
            tmp = None
            _fsync_dir(folder)
            return path, False
    finally:
        if tmp is not None and not named:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    raise OSError(errno.EEXIST, f"{MAX_SUFFIX} files named like {name} already there", str(folder))


def shown_name(name: str) -> str:
    """A file name as logs and .err files show it: local systems choose file names, and some put a
    line break in one (a forged log line) or the patient's fødselsnummer."""
    return mask_national_ids(re.sub(r"[\x00-\x1f\x7f]", "?", name))[:300]


def err_text(name: str, party: FolderParty, result: SubmitResult, picked_at: str) -> str:
    """The .err file: why the gateway refused the file, in words the person at the local system can use."""
    lines = [
        "komut refused this file; it was not sent to anyone.",
        "",
        f"File:      {shown_name(name)}",
        f"Picked up: {picked_at} (UTC) from {party.out}",
        f"Sender:    HER-id {party.her_id}",
        f"Reason:    {result.detail or 'refused'}",
    ]
    if result.duplicate:
        lines.append("           The same message (sender and MsgId) was refused before.")
    if result.message_id is not None:
        lines.append(f"Reference: message {result.message_id} in the gateway")
    problems = result.problems or []
    lines += ["", f"Problems ({len(problems)}):" if problems else "Problems: none listed"]
    for i, p in enumerate(problems, 1):
        code = p.get("code") or "?"
        text = p.get("code_text") or ""
        where = f", line {p['line']}" if p.get("line") else ""
        lines.append(f"  {i}. {code}{' ' + text if text else ''}{where}")
        if p.get("message"):
            lines.append(f"     {p['message']}")
        if p.get("path"):
            lines.append(f"     at {p['path']}")
    lines += [
        "",
        "Correct the message in the local system and send it again (a new file in out/).",
        "A message with the same MsgId is recognised as the refused one: give the corrected one a new MsgId.",
        "",
    ]
    return "\n".join(lines)


class FolderTransport:
    """Reads complete files from each party's out/ into the pipeline; writes deliveries into in/."""

    def __init__(
        self,
        name: str = "folder",
        parties: list[FolderParty] | None = None,
        poll_interval: float = 0.2,
        *,
        concurrency: int = 4,
        batch: int = 64,
        max_bytes: int = MAX_BYTES,
        retry_min: float = 1.0,
        retry_max: float = 300.0,
        stop_grace: float = 5.0,
        claim_grace: float = 0.0,
    ):
        self.name = name
        self.parties = list(parties or [])
        self.poll_interval = poll_interval
        self.concurrency = max(1, concurrency)
        self.batch = max(1, batch)
        self.max_bytes = max_bytes
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.stop_grace = stop_grace
        # Several gateway nodes may share this folder tree (one shared store, several `komut serve`):
        # a file in .processing/ can then be another node's work in hand. It is taken over only once
        # its claim is this many seconds old (its node died); 0 when this node is the only one.
        self.claim_grace = claim_grace
        self._by_her = {p.her_id: p for p in self.parties}
        self._inbound: Inbound | None = None
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()
        self._pending: dict[Path, _Pending] = {}
        self._ready: set[int] = set()
        self._warned: dict[int, str] = {}
        self._unclaimable: set[tuple[int, str]] = set()

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self, inbound: Inbound) -> None:
        if self._task is not None and not self._task.done():
            raise RuntimeError(f"the {self.name} transport is already started")
        self._inbound = inbound
        self._stopping = asyncio.Event()
        # Files left in .processing/ by an earlier run are due at once: they come first in the first poll.
        self._pending.clear()
        for party in self.parties:
            await self._ensure(party)
        self._task = asyncio.create_task(self._run(), name=f"{self.name}-poller")

    async def stop(self) -> None:
        self._stopping.set()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            # Let the file in hand reach archive/ or error/; whatever is cut short stays in .processing/.
            await asyncio.wait_for(asyncio.shield(task), self.stop_grace)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        except asyncio.CancelledError:
            task.cancel()
            raise

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.poll_once()
            except Exception:
                log.exception("folder poll failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.poll_interval)

    async def _ensure(self, party: FolderParty) -> bool:
        if party.her_id in self._ready:
            return True
        try:
            await asyncio.to_thread(party.create)
        except OSError as exc:
            reason = f"{exc.strerror or exc} ({exc.filename or party.root})"
            if self._warned.get(party.her_id) != reason:
                log.error("folders for HER-id %s unusable: %s", party.her_id, reason)
                self._warned[party.her_id] = reason
            return False
        self._ready.add(party.her_id)
        self._warned.pop(party.her_id, None)
        return True

    # --- receiving ---------------------------------------------------------------------------------

    async def poll_once(self) -> int:
        """One pass: files due in .processing/ (left by a crash or waiting for another try) first,
        then newly completed files in out/. Returns how many files it handled."""
        if self._inbound is None:
            raise RuntimeError("FolderTransport.poll_once before start()")
        handled = 0
        for scan in (self._due, self._claim):
            if handled >= self.batch:
                break
            parties = [party for party in self.parties if await self._ensure(party)]
            # One trip to a worker thread for every party's folder: a gateway with dozens of folder
            # systems would otherwise pay a thread hand-off per folder on every poll, busy or not.
            claims = await asyncio.to_thread(self._scan_all, scan, parties, self.batch - handled)
            await self._process_all(claims)
            handled += len(claims)
        return handled

    @staticmethod
    def _scan_all(scan, parties: list[FolderParty], room: int) -> list[_Claim]:
        claims: list[_Claim] = []
        for party in parties:
            if len(claims) >= room:
                break
            try:
                claims += scan(party, room - len(claims))
            except OSError as exc:
                log.error("cannot read the folders of HER-id %s: %s", party.her_id, exc)
        return claims

    async def _process_all(self, claims: list[_Claim]) -> None:
        limit = asyncio.Semaphore(self.concurrency)

        async def one(claim: _Claim) -> None:
            async with limit:
                await self._process(claim)

        await asyncio.gather(*(one(c) for c in claims))

    def _due(self, party: FolderParty, room: int) -> list[_Claim]:
        now, wall = time.monotonic(), time.time()
        present = {p for p in party.processing.iterdir() if not p.name.startswith(".") and p.is_file()}
        for gone in [p for p in self._pending if p.parent == party.processing and p not in present]:
            del self._pending[gone]  # taken away by hand
        claims = []
        for path in sorted(present, key=lambda p: p.name):
            pending = self._pending.get(path)
            if pending is None and self.claim_grace > 0 and _claimed_at(path.name) > wall - self.claim_grace:
                continue  # perhaps another node's, in its hands right now
            if pending is None or pending.next_at <= now:
                claims.append(_Claim(party, path, picked_at=_picked_at(path.name)))
        return claims[:room]

    def _claim(self, party: FolderParty, room: int) -> list[_Claim]:
        candidates = []
        with os.scandir(party.out) as entries:
            for entry in entries:
                # Symbolic links could point anywhere on this host; only plain files are messages.
                if is_complete_name(entry.name) and entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(FileNotFoundError):
                        candidates.append((entry.stat(follow_symlinks=False).st_mtime, entry.name))
        claims: list[_Claim] = []
        for _, name in sorted(candidates):
            if len(claims) >= room:
                break
            stamp = _stamp()
            target = _free_name(party.processing, processing_name(stamp, name))
            try:
                # The claim: after this rename the file is ours and out/ will never offer it again.
                os.rename(party.out / name, target)
            except FileNotFoundError:
                continue  # gone meanwhile (the local system took it back, or another poller has it)
            except OSError as exc:
                # One file that cannot be moved must not hold up the others behind it.
                if (party.her_id, name) not in self._unclaimable:
                    self._unclaimable.add((party.her_id, name))
                    log.error(
                        "HER-id %s: cannot take %s from out/: %s",
                        party.her_id,
                        shown_name(name),
                        exc.strerror,
                    )
                continue
            claims.append(_Claim(party, target, picked_at=stamp))
        return claims

    async def _process(self, claim: _Claim) -> None:
        party, path = claim.party, claim.path
        try:
            size = (await asyncio.to_thread(path.stat)).st_size
            data = await asyncio.to_thread(path.read_bytes) if size <= self.max_bytes else None
        except FileNotFoundError:
            self._pending.pop(path, None)
            return
        except OSError as exc:
            self._retry_later(claim, f"cannot read: {exc}")
            return
        if data is None:
            detail = f"the file is {size:,} bytes; the gateway takes at most {self.max_bytes:,}"
            result = SubmitResult(
                accepted=False,
                message_id=None,
                detail=detail,
                problems=[Problem(ErrorCode.T01, detail).to_dict()],
            )
        else:
            try:
                result = await self._inbound.from_local(
                    data, source=f"folder:{party.her_id}", sender_her=party.her_id
                )
            except Exception as exc:
                log.exception(
                    "pipeline failed on %s from HER-id %s; it stays for another try",
                    shown_name(path.name),
                    party.her_id,
                )
                self._retry_later(claim, type(exc).__name__)
                return
            if not result.accepted and result.status >= 500:
                # The gateway could not decide (store away, overloaded): not the sender's fault, try later.
                self._retry_later(claim, result.detail or f"status {result.status}")
                return
        try:
            await self._finish(claim, result)
        except OSError as exc:
            self._retry_later(claim, f"cannot move: {exc}")

    async def _finish(self, claim: _Claim, result: SubmitResult) -> None:
        await asyncio.to_thread(self._move, claim, result)
        self._pending.pop(claim.path, None)
        original = shown_name(_original_name(claim.path.name))
        if result.accepted:
            log.info(
                "HER-id %s: %s %s (message %s)",
                claim.party.her_id,
                original,
                "already received" if result.duplicate else "accepted",
                result.message_id,
            )
        else:
            log.warning("HER-id %s: %s refused: %s", claim.party.her_id, original, result.detail)

    def _move(self, claim: _Claim, result: SubmitResult) -> None:
        party, path = claim.party, claim.path
        if result.accepted:
            os.rename(path, _free_name(party.archive, path.name))
            return
        target = _free_name(party.error, path.name)
        # The reason first: a crash between the two leaves the file in .processing/ to be redone,
        # never a refused file without its reason.
        text = err_text(_original_name(path.name), party, result, claim.picked_at)
        _write_atomically(party.error, f"{target.name}.err", text.encode("utf-8"))
        os.rename(path, target)

    def _retry_later(self, claim: _Claim, reason: str) -> None:
        pending = self._pending.setdefault(claim.path, _Pending())
        pending.attempts += 1
        delay = min(self.retry_max, self.retry_min * 2 ** (pending.attempts - 1))
        pending.next_at = time.monotonic() + delay
        pending.last_error = reason
        log.warning(
            "HER-id %s: %s not taken (%s); attempt %d, next in %.0f s",
            claim.party.her_id,
            shown_name(claim.path.name),
            reason,
            pending.attempts,
            delay,
        )

    # --- delivering to the local system ------------------------------------------------------------

    async def send(self, item: Outgoing) -> SendResult:
        if item.endpoint:
            folder = Path(item.endpoint)
        elif item.receiver_her in self._by_her:
            folder = self._by_her[item.receiver_her].inbox
        else:
            return SendResult(Outcome.PERMANENT, f"no in-folder configured for HER-id {item.receiver_her}")
        name = safe_filename(item.filename or f"{item.msg_id}.xml", f"delivery-{item.delivery_id}.xml")
        try:
            path, existed = await asyncio.to_thread(_deliver_file, folder, name, item.body)
        except FileNotFoundError:
            return SendResult(
                Outcome.TRANSIENT, f"the in-folder {folder} does not exist (is the share mounted?)"
            )
        except NotADirectoryError:
            return SendResult(Outcome.TRANSIENT, f"the in-folder {folder} is not a folder")
        except PermissionError as exc:
            return SendResult(Outcome.TRANSIENT, f"no permission to write in {folder}: {exc.strerror}")
        except OSError as exc:
            return SendResult(Outcome.TRANSIENT, f"cannot write in {folder}: {exc.strerror or exc}")
        receipt = {
            "path": str(path),
            "bytes": len(item.body),
            "sha256": hashlib.sha256(item.body).hexdigest(),
            "already_there": existed,
        }
        detail = f"{'already in' if existed else 'written to'} {path}"
        return SendResult(Outcome.DELIVERED, detail, receipt=receipt)


def _claimed_at(claimed_name: str) -> float:
    """When the file was claimed (epoch seconds), from its name; 0 when the name does not say."""
    try:
        return (
            datetime.strptime(_picked_at(claimed_name), "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC).timestamp()
        )
    except ValueError:
        return 0.0


def _picked_at(claimed_name: str) -> str:
    stamp, sep, _ = claimed_name.partition("_")
    return stamp if sep and re.fullmatch(r"\d{8}T\d{6}\.\d{6}Z", stamp) else "unknown"


def _original_name(claimed_name: str) -> str:
    stamp, sep, rest = claimed_name.partition("_")
    return rest if sep and re.fullmatch(r"\d{8}T\d{6}\.\d{6}Z", stamp) else claimed_name
