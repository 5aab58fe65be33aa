"""The folder transport: pick-up of complete files, archive/error with .err, crash safety, delivery to in/."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from adapters.folders import FolderParty, FolderTransport, err_text, is_complete_name, safe_filename
from gateway.transport import Outcome, Outgoing, PeerReceipt, SubmitResult

HER = 8094866
OK = SubmitResult(accepted=True, message_id=1, detail="1 receiver(s)")


class FakeInbound:
    """Records what the folder transport hands in; answers from a queue of results (or the default)."""

    def __init__(self, default: SubmitResult = OK):
        self.default = default
        self.script: list[SubmitResult | Exception] = []
        self.calls: list[tuple[bytes, str, int | None]] = []
        self.block: asyncio.Event | None = None
        self.called = asyncio.Event()
        self.in_flight = 0
        self.max_in_flight = 0

    async def from_local(self, data: bytes, source: str, sender_her: int | None = None) -> SubmitResult:
        self.calls.append((data, source, sender_her))
        self.called.set()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            for _ in range(3):
                await asyncio.sleep(0)  # give other pick-ups a chance to run alongside
            if self.block is not None:
                await self.block.wait()
            answer = self.script.pop(0) if self.script else self.default
            if isinstance(answer, Exception):
                raise answer
            return answer
        finally:
            self.in_flight -= 1

    async def from_peer(self, body: bytes, routing: dict, source: str) -> PeerReceipt:
        raise AssertionError("folders are a local front door")


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def drop(party: FolderParty, name: str, data: bytes) -> None:
    """What a well-behaved local system does: write under a temporary name, then rename."""
    tmp = party.out / f"{name}.tmp"
    tmp.write_bytes(data)
    os.rename(tmp, party.out / name)


@pytest.fixture
def party(tmp_path) -> FolderParty:
    p = FolderParty(HER, tmp_path / "hospital")
    p.create()
    return p


@pytest.fixture
async def started():
    running: list[FolderTransport] = []

    async def start(parties, inbound, **kw) -> FolderTransport:
        kw.setdefault("poll_interval", 0.01)
        t = FolderTransport("folder", parties, **kw)
        await t.start(inbound)
        running.append(t)
        return t

    yield start
    for t in running:
        await t.stop()


async def until(condition, what: str) -> None:
    """Wait for the poller; the limit only stops a broken test from hanging, it measures nothing."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"gave up waiting for {what}")


async def transport_for(party: FolderParty, inbound: FakeInbound, **kw) -> FolderTransport:
    """A transport driven by hand with poll_once: started, with its poller stopped."""
    t = FolderTransport("folder", [party], poll_interval=3600, **kw)
    await t.start(inbound)
    await t.stop()
    return t


# --- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, complete",
    [
        ("a.xml", True),
        ("A.XML", True),
        ("a.xml.tmp", False),
        ("a.xml.TMP", False),
        ("a.xml.part", False),
        ("a.xml.partial", False),
        (".a.xml", False),
        ("noext", True),
    ],
)
def test_complete_names(name, complete):
    assert is_complete_name(name) is complete


def test_safe_filename():
    assert safe_filename("dialog_notat-4a4f.xml", "x.xml") == "dialog_notat-4a4f.xml"
    assert safe_filename("../../etc/passwd", "x.xml") == "passwd"
    assert safe_filename("..\\evil.xml", "x.xml") == "evil.xml"
    assert safe_filename(".hidden.xml", "x.xml") == "hidden.xml"
    assert safe_filename("a b/c ø.xml", "x.xml") == "c__.xml"
    assert safe_filename("", "delivery-3.xml") == "delivery-3.xml"
    assert safe_filename("half.xml.tmp", "delivery-3.xml") == "delivery-3.xml"


def test_party_creates_its_folders(tmp_path):
    party = FolderParty(1, tmp_path / "x")
    party.create()
    assert files(party.root) == [".processing", "archive", "error", "in", "out"]


# --- picking up -----------------------------------------------------------------------------------


async def test_partial_files_wait_until_renamed(party):
    inbound = FakeInbound()
    t = await transport_for(party, inbound)
    (party.out / "a.xml.tmp").write_bytes(b"<a/>")
    (party.out / "b.xml.part").write_bytes(b"<b/>")
    (party.out / "c.xml.partial").write_bytes(b"<c/>")
    (party.out / ".d.xml").write_bytes(b"<d/>")
    (party.out / "sub").mkdir()
    assert await t.poll_once() == 0
    assert inbound.calls == []
    os.rename(party.out / "a.xml.tmp", party.out / "a.xml")
    assert await t.poll_once() == 1
    assert inbound.calls == [(b"<a/>", f"folder:{HER}", HER)]
    assert files(party.out) == [".d.xml", "b.xml.part", "c.xml.partial", "sub"]


async def test_accepted_files_go_to_the_archive_with_a_timestamp(party):
    inbound = FakeInbound()
    t = await transport_for(party, inbound)
    drop(party, "a.xml", b"<a/>")
    await t.poll_once()
    [archived] = files(party.archive)
    stamp, _, name = archived.partition("_")
    assert name == "a.xml"
    assert len(stamp) == len("20250101T120000.123456Z") and stamp.endswith("Z") and stamp[8] == "T"
    assert (party.archive / archived).read_bytes() == b"<a/>"
    assert files(party.out) == files(party.processing) == files(party.error) == []


async def test_duplicates_go_to_the_archive(party):
    inbound = FakeInbound(SubmitResult(True, 5, "already received as message 5", duplicate=True))
    t = await transport_for(party, inbound)
    drop(party, "a.xml", b"<a/>")
    await t.poll_once()
    assert len(files(party.archive)) == 1
    assert files(party.error) == []


async def test_refused_files_go_to_error_with_a_reason(party):
    problems = [
        {
            "code": "T02",
            "code_text": "Feil i XML-struktur",
            "severity": "error",
            "message": "Element 'MsgInfo': missing child element 'Type'",
            "line": 12,
            "path": "/MsgHead/MsgInfo",
        },
        {
            "code": "E10",
            "code_text": "Ugyldig meldingsidentifikator",
            "message": "MsgId is not a UUID",
            "line": 5,
        },
    ]
    refusal = SubmitResult(False, 9, "T02 Element 'MsgInfo': missing child", problems=problems, status=400)
    inbound = FakeInbound(refusal)
    t = await transport_for(party, inbound)
    drop(party, "bad.xml", b"<bad/>")
    await t.poll_once()
    refused, err = files(party.error)
    assert refused.endswith("_bad.xml") and err == refused + ".err"
    assert (party.error / refused).read_bytes() == b"<bad/>"
    text = (party.error / err).read_text(encoding="utf-8")
    for expected in (
        "bad.xml",
        f"HER-id {HER}",
        "T02 Element 'MsgInfo': missing child",
        "T02 Feil i XML-struktur, line 12",
        "Element 'MsgInfo': missing child element 'Type'",
        "/MsgHead/MsgInfo",
        "E10 Ugyldig meldingsidentifikator, line 5",
        "MsgId is not a UUID",
        "message 9",
    ):
        assert expected in text
    assert files(party.archive) == files(party.processing) == []


def test_err_text_without_problems(party):
    text = err_text("x.xml", party, SubmitResult(False, None, "the file is empty"), "20250101T120000.000000Z")
    assert "Reason:    the file is empty" in text
    assert "Problems: none listed" in text


async def test_too_large_files_are_refused_without_reading(party):
    inbound = FakeInbound()
    t = await transport_for(party, inbound, max_bytes=10)
    drop(party, "big.xml", b"<x>" + b"a" * 100 + b"</x>")
    await t.poll_once()
    assert inbound.calls == []
    assert len(files(party.error)) == 2
    err = next(p for p in party.error.iterdir() if p.suffix == ".err")
    assert "at most 10" in err.read_text(encoding="utf-8")


async def test_symlinks_in_out_are_not_followed(party, tmp_path):
    secret = tmp_path / "secret.xml"
    secret.write_bytes(b"<secret/>")
    (party.out / "link.xml").symlink_to(secret)
    inbound = FakeInbound()
    t = await transport_for(party, inbound)
    assert await t.poll_once() == 0
    assert inbound.calls == []


async def test_pipeline_failure_keeps_the_file_and_backs_off(party):
    inbound = FakeInbound()
    inbound.script = [RuntimeError("store away")]
    t = await transport_for(party, inbound, retry_min=3600)
    drop(party, "a.xml", b"<a/>")
    await t.poll_once()
    assert len(files(party.processing)) == 1
    assert files(party.archive) == files(party.error) == files(party.out) == []
    await t.poll_once()  # not due yet
    assert len(inbound.calls) == 1
    t._pending[next(party.processing.iterdir())].next_at = 0  # the back-off has run out
    await t.poll_once()
    assert len(inbound.calls) == 2
    assert len(files(party.archive)) == 1 and files(party.processing) == []


async def test_gateway_side_refusal_5xx_is_retried_not_filed_as_error(party):
    inbound = FakeInbound()
    inbound.script = [SubmitResult(False, None, "store unavailable", status=503)]
    t = await transport_for(party, inbound, retry_min=0)
    drop(party, "a.xml", b"<a/>")
    await t.poll_once()
    assert files(party.error) == [] and len(files(party.processing)) == 1
    await t.poll_once()
    assert len(files(party.archive)) == 1
    assert len(inbound.calls) == 2


async def test_concurrency_is_bounded(party):
    inbound = FakeInbound()
    inbound.block = asyncio.Event()
    t = await transport_for(party, inbound, concurrency=2)
    for i in range(6):
        drop(party, f"m{i}.xml", b"<m/>")
    poll = asyncio.create_task(t.poll_once())
    await until(lambda: inbound.in_flight == 2, "two in the pipeline at once")
    await asyncio.sleep(0.1)  # room for a third to sneak in if the bound were missing
    assert inbound.in_flight == 2
    inbound.block.set()
    assert await poll == 6
    assert inbound.max_in_flight == 2
    assert len(files(party.archive)) == 6


async def test_batch_limits_one_poll(party):
    inbound = FakeInbound()
    t = await transport_for(party, inbound, batch=2)
    for i in range(3):
        drop(party, f"m{i}.xml", b"<m/>")
    assert await t.poll_once() == 2
    assert len(files(party.out)) == 1
    assert await t.poll_once() == 1


async def test_each_party_is_its_own_sender(tmp_path, started):
    a, b = FolderParty(111, tmp_path / "a"), FolderParty(222, tmp_path / "b")
    inbound = FakeInbound()
    await started([a, b], inbound)  # start creates the folders
    drop(a, "x.xml", b"<a/>")
    drop(b, "x.xml", b"<b/>")
    await until(lambda: len(inbound.calls) == 2, "both files")
    assert sorted(inbound.calls) == [(b"<a/>", "folder:111", 111), (b"<b/>", "folder:222", 222)]


# --- crash safety ---------------------------------------------------------------------------------


async def test_a_file_left_in_processing_is_processed_once_at_start(party, started):
    # As if the process died after claiming the file and before filing it.
    (party.processing / "20250101T120000.000000Z_left.xml").write_bytes(b"<left/>")
    drop(party, "new.xml", b"<new/>")
    inbound = FakeInbound()
    t = await started([party], inbound)
    await until(lambda: len(files(party.archive)) == 2, "both files archived")
    await t.poll_once()
    await t.poll_once()
    assert sorted(data for data, _, _ in inbound.calls) == [b"<left/>", b"<new/>"]
    assert "20250101T120000.000000Z_left.xml" in files(party.archive)
    # The left-over comes before anything new.
    assert inbound.calls[0][0] == b"<left/>"


async def test_killed_mid_pipeline_then_restarted(party, started):
    stuck = FakeInbound()
    stuck.block = asyncio.Event()  # never set: the pipeline hangs when the process is killed
    first = await started([party], stuck, stop_grace=0)
    drop(party, "a.xml", b"<a/>")
    await asyncio.wait_for(stuck.called.wait(), 10)
    await first.stop()
    assert files(party.out) == []
    assert len(files(party.processing)) == 1

    inbound = FakeInbound()
    await started([party], inbound)
    await until(lambda: len(files(party.archive)) == 1, "the file archived")
    assert inbound.calls == [(b"<a/>", f"folder:{HER}", HER)]
    assert files(party.processing) == [] and files(party.out) == []


async def test_no_file_is_processed_twice_across_a_restart(party, started):
    inbound = FakeInbound()
    first = await started([party], inbound)
    drop(party, "a.xml", b"<a/>")
    drop(party, "b.xml", b"<b/>")
    await until(lambda: len(files(party.archive)) == 2, "two archived")
    await first.stop()

    again = FakeInbound()
    second = await started([party], again)
    drop(party, "c.xml", b"<c/>")
    await until(lambda: len(files(party.archive)) == 3, "the third archived")
    await second.poll_once()
    assert again.calls == [(b"<c/>", f"folder:{HER}", HER)]


async def test_graceful_stop_lets_the_file_in_hand_finish(party, started):
    inbound = FakeInbound()
    inbound.block = asyncio.Event()
    t = await started([party], inbound, stop_grace=30)
    drop(party, "a.xml", b"<a/>")
    await asyncio.wait_for(inbound.called.wait(), 10)
    stopping = asyncio.create_task(t.stop())
    await asyncio.sleep(0)
    inbound.block.set()
    await stopping
    assert len(files(party.archive)) == 1 and files(party.processing) == []


# --- delivering to the local system ---------------------------------------------------------------


def outgoing(party: FolderParty, body: bytes = b"<msg/>", **kw) -> Outgoing:
    fields = dict(
        delivery_id=3,
        endpoint=str(party.inbox),
        body=body,
        content_type="application/xml",
        sender_her=8143060,
        receiver_her=party.her_id,
        msg_type="DIALOG_NOTAT",
        msg_id="4a4f0a5e-5f7e-4a43-9b0c-3d8c5f0e2b61",
        filename="dialog_notat-4a4f0a5e.xml",
    )
    fields.update(kw)
    return Outgoing(**fields)


async def test_send_writes_a_complete_file(party):
    t = FolderTransport("folder", [party])
    result = await t.send(outgoing(party))
    assert result.outcome == Outcome.DELIVERED
    assert files(party.inbox) == ["dialog_notat-4a4f0a5e.xml"]  # no temporary file left behind
    assert (party.inbox / "dialog_notat-4a4f0a5e.xml").read_bytes() == b"<msg/>"
    assert result.receipt["path"] == str(party.inbox / "dialog_notat-4a4f0a5e.xml")
    assert result.receipt["already_there"] is False


async def test_send_is_idempotent(party):
    t = FolderTransport("folder", [party])
    await t.send(outgoing(party))
    again = await t.send(outgoing(party))
    assert again.outcome == Outcome.DELIVERED
    assert again.receipt["already_there"] is True
    assert files(party.inbox) == ["dialog_notat-4a4f0a5e.xml"]


async def test_send_never_overwrites_a_different_file(party):
    t = FolderTransport("folder", [party])
    await t.send(outgoing(party, b"<first/>"))
    second = await t.send(outgoing(party, b"<second/>"))
    third = await t.send(outgoing(party, b"<second/>"))
    assert second.outcome == third.outcome == Outcome.DELIVERED
    assert files(party.inbox) == ["dialog_notat-4a4f0a5e-2.xml", "dialog_notat-4a4f0a5e.xml"]
    assert (party.inbox / "dialog_notat-4a4f0a5e.xml").read_bytes() == b"<first/>"
    assert (party.inbox / "dialog_notat-4a4f0a5e-2.xml").read_bytes() == b"<second/>"
    assert third.receipt["already_there"] is True


async def test_send_does_not_clobber_a_file_that_appears_while_writing(party, monkeypatch):
    import adapters.folders as folders

    target = party.inbox / "dialog_notat-4a4f0a5e.xml"
    real_fsync = os.fsync

    def racing_fsync(fd):
        # Someone else creates the same name between our check and our rename.
        if not target.exists():
            target.write_bytes(b"<theirs/>")
        real_fsync(fd)

    monkeypatch.setattr(folders.os, "fsync", racing_fsync)
    result = await FolderTransport("folder", [party]).send(outgoing(party, b"<ours/>"))
    assert result.outcome == Outcome.DELIVERED
    assert target.read_bytes() == b"<theirs/>"
    assert (party.inbox / "dialog_notat-4a4f0a5e-2.xml").read_bytes() == b"<ours/>"


async def test_send_default_and_hostile_names(party):
    t = FolderTransport("folder", [party])
    await t.send(outgoing(party, filename=""))
    await t.send(outgoing(party, b"<other/>", filename="../../escape.xml"))
    assert files(party.inbox) == ["4a4f0a5e-5f7e-4a43-9b0c-3d8c5f0e2b61.xml", "escape.xml"]
    assert not (party.root / "escape.xml").exists()


async def test_send_without_endpoint_uses_the_party(party):
    t = FolderTransport("folder", [party])
    result = await t.send(outgoing(party, endpoint=""))
    assert result.outcome == Outcome.DELIVERED
    assert len(files(party.inbox)) == 1
    unknown = await t.send(outgoing(party, endpoint="", receiver_her=1))
    assert unknown.outcome == Outcome.PERMANENT


async def test_send_to_a_missing_folder_is_transient_and_creates_nothing(party, tmp_path):
    t = FolderTransport("folder", [party])
    missing = tmp_path / "unmounted" / "in"
    result = await t.send(outgoing(party, endpoint=str(missing)))
    assert result.outcome == Outcome.TRANSIENT
    assert str(missing) in result.detail and "does not exist" in result.detail
    assert not missing.exists()


async def test_send_to_something_that_is_not_a_folder_is_transient(party, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    result = await FolderTransport("folder", [party]).send(outgoing(party, endpoint=str(blocker)))
    assert result.outcome == Outcome.TRANSIENT


@pytest.mark.skipif(
    os.geteuid() == 0,
    reason="folder permissions do not bind root: run the suite as an unprivileged user to exercise a read-only in-folder",
)
async def test_send_to_an_unwritable_folder_is_transient(party):
    party.inbox.chmod(0o500)
    try:
        result = await FolderTransport("folder", [party]).send(outgoing(party))
    finally:
        party.inbox.chmod(0o700)
    assert result.outcome == Outcome.TRANSIENT
    assert "permission" in result.detail


async def test_a_retry_after_the_local_system_took_the_file_does_not_deliver_it_again(party):
    """The gateway died after the file became visible and before it recorded the receipt; the
    local system has taken the file meanwhile. The retry must not hand it over a second time."""
    t = FolderTransport("folder", [party])
    first = await t.send(outgoing(party, b"<once/>"))
    (party.inbox / Path(first.receipt["path"]).name).unlink()  # the local system consumed it
    again = await t.send(outgoing(party, b"<once/>"))
    assert again.outcome == Outcome.DELIVERED and again.receipt["already_there"] is True
    assert files(party.inbox) == []
    # Different bytes under the same name are a different delivery and do arrive.
    other = await t.send(outgoing(party, b"<other/>"))
    assert other.receipt["already_there"] is False and len(files(party.inbox)) == 1
