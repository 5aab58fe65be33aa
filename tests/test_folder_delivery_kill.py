"""A folder delivery killed (SIGKILL) between any two of its file-system steps, then tried again
by the restarted gateway, hands the message to the local system exactly once.

The delivery runs in a forked child that kills itself with SIGKILL just before its n-th change to
the file system (an audit hook sees every open for writing, link, rename, unlink and mkdir), for
every n until a run completes. Meanwhile the local system takes what is in its in-folder, as the
simulated EPJ of the reliability suite does (or takes nothing before the retry), and then the
gateway, restarted, delivers the same message again.
"""

from __future__ import annotations

import os
import signal
import sys
import uuid
from pathlib import Path

import pytest

import adapters.folders as folders
from adapters.folders import _deliver_file

pytestmark = pytest.mark.skipif(
    not hasattr(os, "fork"), reason="needs os.fork and SIGKILL (a POSIX system such as Linux)"
)

NAME = "dialog_notat-4a4f0a5e.xml"
DATA = b"<MsgHead>once</MsgHead>"
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
MUTATING = {"os.link", "os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.symlink", "os.truncate"}


def _changes_fs(root: str, event: str, args: tuple) -> bool:
    if event == "open":
        path, mode, flags = args
        writes = any(c in (mode or "") for c in "wxa+") or bool((flags or 0) & WRITE_FLAGS)
        return writes and isinstance(path, str | bytes | os.PathLike) and os.fsdecode(path).startswith(root)
    return event in MUTATING and any(
        isinstance(a, str | bytes | os.PathLike) and os.fsdecode(a).startswith(root) for a in args
    )


def deliver_killed_before(step: int, folder: Path) -> bool:
    """Deliver in a child that SIGKILLs itself just before its `step`-th file-system change.
    Returns True when it was killed, False when the delivery ran to its end."""
    root = str(folder.parent)
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            seen = 0

            def hook(event: str, args: tuple) -> None:
                nonlocal seen
                if _changes_fs(root, event, args):
                    seen += 1
                    if seen == step:
                        os.kill(os.getpid(), signal.SIGKILL)

            sys.addaudithook(hook)
            renameat2 = folders._renameat2
            if renameat2 is not None:  # a libc call through ctypes: no audit event of its own

                def audited(*args):
                    sys.audit("os.rename", args[1], args[3])
                    return renameat2(*args)

                folders._renameat2 = audited
            _deliver_file(folder, NAME, DATA)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    return False


def take(folder: Path, read: Path) -> None:
    """The local system takes every complete file from its in-folder (like tests/reliability)."""
    for path in sorted(folder.glob("*.xml")):
        os.replace(path, read / f"{uuid.uuid4().hex[:12]}-{path.name}")


@pytest.mark.parametrize("taken_before_retry", [True, False], ids=["taken", "left"])
@pytest.mark.parametrize("no_replace", ["renameat2", "link"])
def test_a_delivery_killed_at_any_step_reaches_the_local_system_once(
    tmp_path, monkeypatch, taken_before_retry, no_replace
):
    """Killed at step i, restarted and killed again at step j of the retry, restarted again: for
    every i and j, one copy reaches the local system."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # for power cuts; a kill leaves the page cache
    if no_replace == "link":  # a system or file system without rename-without-replacing
        monkeypatch.setattr(folders, "_renameat2", None)
    elif folders._renameat2 is None:
        pytest.skip(
            "libc has no renameat2 (needs Linux with glibc 2.28 or later); the hard-link path is tested"
        )
    first, first_completed = 0, False
    while not first_completed:
        first += 1
        second, second_completed = 0, False
        while not second_completed:
            second += 1
            assert first < 50 and second < 50, "the delivery never completed"
            root = tmp_path / f"kill-{first}-{second}"
            folder, read = root / "in", root / "read"
            folder.mkdir(parents=True)
            read.mkdir()
            first_completed = not deliver_killed_before(first, folder)
            if taken_before_retry:
                take(folder, read)
            second_completed = not deliver_killed_before(second, folder)  # the restarted gateway
            if taken_before_retry:
                take(folder, read)
            path, existed = _deliver_file(folder, NAME, DATA)  # and once more, to its end
            take(folder, read)
            copies = [p.read_bytes() for p in read.iterdir()]
            where = f"killed before file-system change {first}, then {second} of the retry"
            assert copies == [DATA], f"{where}: {len(copies)} copies handed over"
            assert path.parent == folder and (existed or not second_completed), where
            # A kill before the ledger names the temporary file leaves that hidden file behind.
            left = [p.name for p in folder.iterdir()]
            assert all(n.startswith(".") and n.endswith(".tmp") for n in left), f"{where}: {left}"
    assert first > 3  # the sweep went through the delivery's steps, not around them
