"""Hostile input through the folder interface, on real gateways: every case is a file the hospital
EPJ (HER-id 9100000) writes into its out/ folder, all at once.

Each refused file must end in error/ with a .err naming the AppRec error codes, and the EPJ gets
an AppRec whenever the envelope was readable. Hostile file names, symbolic links, FIFOs and
directories never make the gateway read or write outside the party's folders; duplicates are
stored once; no fødselsnummer reaches a log or a .err file; the gateway keeps serving.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import SAMPLES
from e2e import DRAMMEN_CAST, wait_for
from hostile_cases import PATIENT_IDS, Case, document_cases
from hostile_net import (
    apprecs_in,
    codes_of,
    passwd_copies,
    patient_data_leaks,
    rows_by_msg_id,
    settle,
    start_net,
)

from gateway.demo.systems import Cast, recast, write_file
from gateway.registry import load_default_registry
from message_types.read import read_message
from message_types.xmlparse import parse_xml

HOSPITAL, MUNICIPALITY = 9100000, 9203000
TEMPLATE = (SAMPLES / "valid/plo/01-log-innlagt.xml").read_bytes()
REGISTRY = load_default_registry()
HUGE = 36 * 1024 * 1024  # over the 35 MB the gateway takes


def fresh(cast: dict | None = None) -> bytes:
    return recast(TEMPLATE, REGISTRY, Cast(cast or DRAMMEN_CAST), {})[0]


def msg_id(data: bytes) -> str:
    return read_message(parse_xml(data)).msg_id


DOCUMENTS = document_cases(fresh)


def _sender_not_in_registry() -> bytes:
    data = fresh()
    for her in ("9100000", "9100200", "9100201"):
        data = data.replace(f"<Id>{her}</Id>".encode(), b"<Id>9999998</Id>")
    return data


# The MsgHead names a party that is not this EPJ's: X99, and no AppRec to the named party.
SPOOFS = [
    Case(
        "sender-of-another-organisation",
        "spoof",
        fresh({**DRAMMEN_CAST, "somatikk": 9201001}),
        frozenset({"X99"}),
        True,
    ),
    Case("sender-not-in-registry", "spoof", _sender_not_in_registry(), frozenset({"X99"}), True),
]


@dataclass(frozen=True)
class HostileName:
    name: str
    refused: bool  # picked up and refused (the content is garbage); otherwise left alone in out/


# Names a local system could write (by bug or on purpose). The content of each is unique garbage.
HOSTILE_NAMES = [
    HostileName("a\nFORGED-LOG-LINE komut CRITICAL all is lost.xml", True),
    HostileName(f"{PATIENT_IDS[0]}-epikrise.xml", True),
    HostileName("søknad æøå 🚑 \u202etxt.exe.xml", True),
    HostileName("-rf --no-preserve-root.xml", True),
    HostileName("evil\\..\\..\\..\\etc\\cron.d\\evil.xml", True),
    HostileName("evil..%2F..%2F..%2Fin%2Fevil.xml", True),
    HostileName("..\\..\\..\\..\\etc\\cron.d\\evil.xml", False),  # hidden: starts with a dot
    HostileName("..%2F..%2F..%2Fin%2Fevil.xml", False),
    HostileName("n" * 240 + ".xml", True),  # with the claim's time stamp, over the 255-byte limit
    HostileName(" .xml", True),
    HostileName("$(touch komut-pwned).xml", True),
    HostileName("..hidden-dotdot.xml", False),  # hidden files are a local system's own business
    HostileName("half-written.xml.tmp", False),
    HostileName("half-written.xml.part", False),
]
LINKS = {"passwd.xml": "/etc/passwd", "their-inbox.xml": "../../9203000/in", "loop.xml": "loop.xml"}


@dataclass
class Run:
    net: object
    errors: dict[str, tuple[Path, str]]  # sha256 of the refused bytes -> (file in error/, .err text)
    apprecs: dict[str, list[tuple[str, list[str]]]]
    rows: dict[str, list[dict]]
    out_left: set[str]
    duplicates: dict[str, list[bytes]]

    def refused(self, data: bytes) -> tuple[Path, str]:
        found = self.errors.get(hashlib.sha256(data).hexdigest())
        assert found is not None, "the file is not in error/"
        return found

    def err_codes(self, data: bytes) -> set[str]:
        _, text = self.refused(data)
        return set(re.findall(r"^\s+\d+\. ([A-Z]\d\d)\b", text, re.M))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _refused_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """error/ by the sha256 of each refused file: (the file, its .err text, or "" if it has none)."""
    out = {}
    for path in folder.iterdir():
        if not path.name.endswith(".err"):
            err = Path(f"{path}.err")
            out[_sha(path.read_bytes())] = (path, err.read_text(encoding="utf-8") if err.exists() else "")
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory, demo_pki):
    net = start_net(tmp_path_factory.mktemp("hostile-folder") / "net", demo_pki, "hospital", "municipal")
    try:
        yield _run(net)
    finally:
        net.stop_all()


def _run(net) -> Run:
    epj = net.system(HOSPITAL)
    out = net.folder(HOSPITAL, "out")
    party = out.parent
    expected_done = 0
    for i, case in enumerate([*DOCUMENTS, *SPOOFS]):
        epj.send(case.data, f"{i:03d}-{case.name}.xml")
        expected_done += 1
    for i, hostile in enumerate(HOSTILE_NAMES):
        write_file(out, hostile.name, f"not a message, file {i}".encode())
        expected_done += hostile.refused
    for link, target in LINKS.items():
        os.symlink(target, out / link)
    (out / "folder.xml").mkdir()
    os.mkfifo(out / "pipe.xml")  # opening it for reading would block the poller for good
    epj.send(b"<a>" + b"x" * HUGE + b"</a>", "huge.xml")
    expected_done += 1
    # Duplicates: the same message in several files, and a refused one twice.
    twice, changed, concurrent = fresh(), fresh(), fresh()
    refused = fresh().replace(b"<MsgId>", b"<MsgId>dup-", 1)  # E10
    changed_again = changed.replace(b"Lerkeveien 7B", b"Lerkeveien 9", 1)
    assert changed_again != changed
    duplicates = {
        "same-file-twice": [twice, twice],
        "same-msgid-other-content": [changed, changed_again],
        "refused-twice": [refused, refused],
        "five-at-once": [concurrent] * 5,
    }
    for name, copies in duplicates.items():
        for n, data in enumerate(copies):
            epj.send(data, f"dup-{name}-{n}.xml")
            expected_done += 1

    def done():
        finished = [p for p in (party / "archive").iterdir()] + [
            p for p in (party / "error").iterdir() if not p.name.endswith(".err")
        ]
        return len(finished) >= expected_done and not any((party / ".processing").iterdir())

    settle(done, timeout=90)
    addressable = [c.msg_id for c in DOCUMENTS if c.addressable] + [msg_id(refused)]
    in_folder = net.folder(HOSPITAL, "in")
    settle(lambda: all(m in apprecs_in(in_folder) for m in addressable), timeout=60)
    wanted = [
        msg_id(duplicates[name][0]).encode() for name in ("same-file-twice", "same-msgid-other-content")
    ]
    wanted.append(msg_id(concurrent).encode())

    def delivered():
        there = [p.read_bytes() for p in net.folder(MUNICIPALITY, "in").glob("*.xml")]
        return all(any(w in data for data in there) for w in wanted)

    settle(delivered, timeout=30)
    return Run(
        net=net,
        errors=_refused_files(party / "error"),
        apprecs=apprecs_in(in_folder),
        rows=rows_by_msg_id(net.log("hospital")),
        out_left={p.name for p in out.iterdir()},
        duplicates=duplicates,
    )


@pytest.mark.parametrize("case", DOCUMENTS, ids=lambda c: c.name)
def test_document_is_refused_with_its_code(run, case):
    path, text = run.refused(case.data)
    assert path.read_bytes() == case.data, "error/ keeps the file exactly as written"
    assert run.err_codes(case.data) == set(case.codes), text
    if case.addressable:
        rows = run.rows[case.msg_id]
        assert len(rows) == 1 and rows[0]["state"] == "rejected", rows
        assert codes_of(rows[0]) == set(case.codes)
        assert run.apprecs[case.msg_id] == [("2", sorted(case.codes))], "one AppRec Avvist naming the codes"


@pytest.mark.parametrize("case", SPOOFS, ids=lambda c: c.name)
def test_a_sender_the_epj_may_not_send_for_is_refused_without_apprec_to_it(run, case):
    assert run.err_codes(case.data) == {"X99"}
    [row] = run.rows[case.msg_id]
    assert row["state"] == "rejected" and codes_of(row) == {"X99"}
    assert case.msg_id not in run.apprecs
    assert not [e for e in row["events"] if e["kind"].startswith("AppRec")], (
        "the party named as sender sent nothing and must not get an AppRec"
    )
    municipal = run.net.log("municipal", "--msg-id", case.msg_id)
    assert not municipal, "nothing about it reached the other gateway"


@pytest.mark.parametrize(
    "hostile", HOSTILE_NAMES, ids=lambda h: h.name.encode("unicode_escape").decode()[:40]
)
def test_hostile_file_names_stay_inside_the_party_folder(run, hostile):
    data = f"not a message, file {HOSTILE_NAMES.index(hostile)}".encode()
    if not hostile.refused:
        assert hostile.name in run.out_left, "a name a local system uses while writing is left alone"
        return
    path, text = run.refused(data)
    assert path.parent.name == "error" and path.parent.parent == run.net.folder(HOSPITAL, "out").parent
    assert run.err_codes(data) == {"T01"}, text
    assert not [line for line in text.splitlines() if line.startswith("FORGED")], "the name broke a line"


def test_links_fifos_and_folders_in_out_are_never_read(run):
    assert run.out_left == {h.name for h in HOSTILE_NAMES if not h.refused} | set(LINKS) | {
        "folder.xml",
        "pipe.xml",
    }
    assert (run.net.folder(HOSPITAL, "out") / "passwd.xml").is_symlink(), "the link itself is untouched"
    assert not passwd_copies(run.net), "nothing of /etc/passwd was copied anywhere (XXE, links)"


def test_nothing_is_written_outside_the_party_folders(run):
    systems = run.net.directory / "systems"
    allowed = {"out", "in", "archive", "error", ".processing", ".delivered"}
    for party in systems.iterdir():
        assert {p.name for p in party.iterdir()} <= allowed, party
    # The claim's time stamp plus the 244-character name would not fit in a file name: shortened.
    assert any(
        len(p.name) <= 210 and "nnnnnnnn" in p.name for p in (systems / str(HOSPITAL) / "error").iterdir()
    )
    leftovers = [
        p
        for p in run.net.directory.rglob("*")
        if ("komut-pwned" in p.name or "evil" in p.name or "traversal" in p.name)
        and p.parent.name not in ("error", "out")
    ]
    assert not leftovers
    assert not Path("/tmp/komut-hostile-traversal").exists()


def test_a_file_over_the_size_limit_is_refused_with_t01_and_not_stored(run):
    errors = run.net.folder(HOSPITAL, "out").parent / "error"
    [huge] = [p for p in errors.iterdir() if p.name.endswith("_huge.xml")]
    text = Path(f"{huge}.err").read_text()
    assert "T01" in text and "37,748," in text, text
    assert "Reference:" not in text, "a file the gateway would not read is not stored either"


def test_duplicates_are_stored_and_delivered_once(run):
    delivered = [p.read_bytes() for p in run.net.folder(MUNICIPALITY, "in").glob("*.xml")]
    for name, copies in run.duplicates.items():
        mid = msg_id(copies[0])
        rows = run.rows[mid]
        assert len(rows) == 1, (name, rows)
        if name == "refused-twice":
            assert rows[0]["state"] == "rejected"
            errors = [
                p
                for p in (run.net.folder(HOSPITAL, "out").parent / "error").iterdir()
                if f"dup-{name}" in p.name
            ]
            assert len(errors) == 4, errors  # both files and their .err
            assert len(run.apprecs[mid]) == 1, "one AppRec, however often the refused message comes"
            continue
        assert len(rows[0]["deliveries"]) == 1
        archived = [
            p
            for p in (run.net.folder(HOSPITAL, "out").parent / "archive").iterdir()
            if f"dup-{name}" in p.name
        ]
        assert len(archived) == len(copies), "a duplicate is not an error: every copy is archived"
        assert sum(mid.encode() in d for d in delivered) == 1, f"{name}: delivered more than once"


def test_no_patient_data_in_logs_or_err_files(run):
    assert not patient_data_leaks(run.net)
    log = (run.net.directory / "hospital.log").read_text(errors="replace")
    assert not [line for line in log.splitlines() if line.startswith("FORGED")], (
        "a file name forged a log line"
    )


def test_the_gateway_keeps_serving(run):
    net = run.net
    assert net.procs["hospital"].poll() is None and net.healthy("hospital")
    data = fresh()
    net.system(HOSPITAL).send(data, "after-the-storm.xml")
    mid = msg_id(data).encode()
    wait_for(
        lambda: any(mid in p.read_bytes() for p in net.folder(MUNICIPALITY, "in").glob("*.xml")),
        timeout=60,
        what="a normal message delivered after the hostile batch",
    )
