"""Live reload: atomic swap, a broken file refused while the old registry keeps serving, the file
watcher, and the SIGHUP hook."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from gateway.registry import RegistryError, RegistryHolder, RegistrySource, install_sighup
from gateway.registry.reload import fingerprint

POLL = 0.02


def registry_text(name: str, extra: str = "") -> str:
    """A small valid registry (no endpoints, so no certificates needed) naming party 100 `name`."""
    return f"""
[[party]]
her_id = 100
name = "{name}"
kind = "organisation"
org_no = "191000005"

[[party]]
her_id = 101
name = "Service"
kind = "service"
parent = 100
{extra}"""


BROKEN = """
[[party]]
her_id = 100
name = "Org"
kind = "organisation"
org_no = "191000005"
certificates = { sign = "gone/sign.pem", enc = "gone/enc.pem" }

[[party]]
her_id = 100
name = "Twin"
kind = "organisation"
org_no = "191000005"

[[party]]
her_id = 101
name = "Orphan"
kind = "service"
parent = 999

[[party]]
her_id = 300
name = "Loop"
kind = "organisation"
parent = 300
"""


@pytest.fixture
def reg_file(tmp_path) -> Path:
    path = tmp_path / "registry.toml"
    path.write_text(registry_text("Version 1"), "utf-8")
    return path


@pytest.fixture
def holder(reg_file) -> RegistryHolder:
    return RegistryHolder(RegistrySource(reg_file))


async def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(POLL)


def test_reload_swaps_in_the_new_registry(holder, reg_file):
    old = holder.current
    reg_file.write_text(registry_text("Version 2"), "utf-8")
    assert holder.reload() == []
    assert holder.current.get(100).name == "Version 2"
    assert holder.generation == 2
    # A message that took the old snapshot keeps a complete, unchanged view of it.
    assert old.get(100).name == "Version 1" and old.get(101).parent == 100


def test_broken_file_refused_with_every_problem_while_the_old_one_keeps_serving(holder, reg_file):
    serving = holder.current
    seen = []
    holder.add_listener(seen.append)
    reg_file.write_text(BROKEN, "utf-8")
    problems = holder.reload()
    messages = [f"{p.her_id} {p.field}: {p.message}" for p in problems]
    assert any("duplicate HER-id" in m for m in messages)
    assert any("unknown parent HER-id 999" in m for m in messages)
    assert any("cycle" in m for m in messages)
    assert sum("missing certificate file" in m for m in messages) == 2
    assert holder.current is serving and holder.generation == 1 and seen == []
    assert holder.current.get(100).name == "Version 1"
    assert holder.last_problems == problems
    # The missing certificates are watched too, so creating them would trigger the next reload.
    assert reg_file.parent / "gone/sign.pem" in holder.watched_files

    reg_file.write_text(registry_text("Fixed"), "utf-8")
    assert holder.reload() == []
    assert holder.current.get(100).name == "Fixed" and holder.last_problems == []
    assert [r.get(100).name for r in seen] == ["Fixed"]


def test_a_broken_file_at_start_up_raises(tmp_path):
    path = tmp_path / "registry.toml"
    path.write_text(BROKEN, "utf-8")
    with pytest.raises(RegistryError):
        RegistryHolder(RegistrySource(path))


def test_lookups_never_fail_while_reloading_concurrently(holder, reg_file):
    """Readers take one snapshot per message; swapping under them must never break a lookup."""
    texts = [
        registry_text("A"),
        registry_text("B", "\n[[party]]\nher_id = 102\nname = 'X'\nkind = 'service'\nparent = 100\n"),
    ]
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        while not stop.is_set():
            snapshot = holder.current
            try:
                assert snapshot.level1(101).her_id == 100
                assert [p.her_id for p in snapshot.ancestors(101)] == [100]
                assert len(snapshot.children(100)) == len(snapshot) - 1
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
                return
            time.sleep(0.0005)  # let the reloading thread have the GIL too

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(20):
            reg_file.write_text(texts[i % 2], "utf-8")
            assert holder.reload() == []
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert holder.generation == 21


def test_fingerprint_sees_content_changes_and_missing_files(tmp_path):
    path = tmp_path / "f"
    assert fingerprint([path]) == ((str(path), None),)
    path.write_text("a")
    first = fingerprint([path])
    stat = path.stat()
    path.write_text("b")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime: only the hash differs
    assert fingerprint([path]) != first


async def test_file_watch_picks_up_changes(holder, reg_file):
    task = holder.watch(interval=POLL)
    try:
        await asyncio.sleep(3 * POLL)
        assert holder.generation == 1  # nothing changed, nothing reloaded

        reg_file.write_text(registry_text("Watched"), "utf-8")
        await wait_for(lambda: holder.generation == 2)
        assert holder.current.get(100).name == "Watched"

        serving = holder.current
        reg_file.write_text(BROKEN, "utf-8")
        await wait_for(lambda: holder.last_problems)
        assert holder.current is serving
        await asyncio.sleep(5 * POLL)
        assert holder.generation == 2  # a broken file is not retried until it changes again

        reg_file.write_text(registry_text("Fixed"), "utf-8")
        await wait_for(lambda: holder.generation == 3)
        assert holder.current.get(100).name == "Fixed"
        assert not task.done()
    finally:
        await holder.stop()
    assert task.cancelled()


async def test_file_watch_reloads_when_a_missing_certificate_appears(tmp_path, holder, reg_file):
    # A registry naming certificates that are not there yet is refused; creating them fixes it.
    certs = 'certificates = { sign = "p/sign.pem", enc = "p/enc.pem" }\n'
    text = registry_text("With certs").replace('org_no = "191000005"\n', 'org_no = "191000005"\n' + certs, 1)
    holder.watch(interval=POLL)
    try:
        reg_file.write_text(text, "utf-8")
        await wait_for(lambda: holder.last_problems)
        cert = _self_signed_pem()
        (tmp_path / "p").mkdir()
        (tmp_path / "p/sign.pem").write_bytes(cert)
        (tmp_path / "p/enc.pem").write_bytes(cert)
        await wait_for(lambda: holder.generation == 2)
        assert holder.current.certificates(101).enc.loaded
    finally:
        await holder.stop()


async def test_sighup_reloads(holder, reg_file):
    loop = asyncio.get_running_loop()
    install_sighup(loop, holder)
    try:
        reg_file.write_text(registry_text("After SIGHUP"), "utf-8")
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for(lambda: holder.generation == 2)
        assert holder.current.get(100).name == "After SIGHUP"

        serving = holder.current
        reg_file.write_text(BROKEN, "utf-8")
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for(lambda: holder.last_problems)
        assert holder.current is serving
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        await holder.stop()


def _self_signed_pem() -> bytes:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "reload test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)
