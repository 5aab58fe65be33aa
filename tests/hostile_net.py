"""What the hostile-input suites share: a demo network per test module, and the checks every
batch of hostile input ends with (the gateways still serve, nothing is stored twice, no patient
data in plain-text logs)."""

from __future__ import annotations

import collections
import os
import time
from pathlib import Path

from e2e import Net
from hostile_cases import PASSWD_MARKER, PATIENT_IDS

from message_types.problems import InvalidMessage
from message_types.read import read_message
from message_types.xmlparse import parse_xml


def start_net(directory: Path, demo_pki: Path, *gateways: str, prepare=None, **kwargs) -> Net:
    """A demo network with `gateways` started; `prepare(net)` runs first (configuration, CRLs).

    Ports are picked free but only taken when a gateway binds them, and other test processes on the
    host pick ports too: a gateway that fails to start gets a fresh network on other ports, twice."""
    for attempt in range(3):
        net = Net(
            directory.with_name(f"{directory.name}-{attempt}") if attempt else directory, demo_pki, **kwargs
        )
        if prepare is not None:
            prepare(net)
        try:
            for name in gateways:
                net.start(name)
        except AssertionError:
            net.stop_all()
            if attempt == 2:
                raise
            continue
        return net
    raise AssertionError("unreachable")


def settle(predicate, timeout: float, interval: float = 0.2):
    """Wait until `predicate()` is true, but never fail: after `timeout` the batch's tests judge
    each case on what did arrive, so one missing answer fails one case, not the whole module."""
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(interval)


def apprecs_in(folder: Path) -> dict[str, list[tuple[str, list[str]]]]:
    """AppRecs in a local system's in/ folder: original MsgId -> [(status, error codes)]."""
    found: dict[str, list[tuple[str, list[str]]]] = collections.defaultdict(list)
    for path in folder.glob("*.xml"):
        try:
            message = read_message(parse_xml(path.read_bytes()))
        except InvalidMessage:
            continue
        if message.apprec is not None:
            info = message.apprec
            found[info.original_msg_id].append((str(info.status), [e.code for e in info.errors]))
    return found


def plain_text_files(net: Net) -> list[Path]:
    """The gateways' log files and every .err file the folder transport wrote."""
    logs = [net.directory / f"{name}.log" for name in net.info["gateways"]]
    return [p for p in logs if p.exists()] + sorted((net.directory / "systems").rglob("*.err"))


def patient_data_leaks(net: Net) -> list[str]:
    leaks = []
    for path in plain_text_files(net):
        text = path.read_bytes()
        for value in PATIENT_IDS:
            if value.encode() in text:
                leaks.append(f"{value} in {path.relative_to(net.directory)}")
    return leaks


def passwd_copies(net: Net) -> list[Path]:
    """Files under the network's directory holding /etc/passwd: what a working XXE would leave."""
    out = []
    for root, _, files in os.walk(net.directory):
        for name in files:
            path = Path(root) / name
            if path.is_symlink() or not path.is_file():
                continue
            if PASSWD_MARKER in path.read_bytes():
                out.append(path)
    return out


def rows_by_msg_id(rows: list[dict], direction: str | None = None) -> dict[str, list[dict]]:
    """Delivery-log rows of business messages (not AppRecs) by MsgId."""
    out: dict[str, list[dict]] = collections.defaultdict(list)
    for row in rows:
        if row["msg_id"] and row["type"] != "APPREC" and (direction is None or row["direction"] == direction):
            out[row["msg_id"]].append(row)
    return out


def codes_of(row: dict) -> set[str]:
    return {p["code"] for p in row["problems"]}
