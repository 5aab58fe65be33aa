"""Hostile inputs get a clear T01-class error quickly, and the process keeps working.

Each case runs through the real CLI in a subprocess with a hang guard; the per-case time is
printed (speed is reported, never asserted).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from message_types.codes import ErrorCode

VALID_HEAD = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<MsgHead xmlns="http://www.kith.no/xmlstds/msghead/2006-05-24"><MsgInfo/></MsgHead>'
)


def _cases(tmp_path):
    laughs = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        + b"".join(
            f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'.encode()
            for i in range(1, 10)
        )
        + b"]><lolz>&lol9;</lolz>"
    )
    return {
        "xxe-file": b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>',
        "xxe-network": b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "http://127.0.0.1:9/x">]><r>&x;</r>',
        "xxe-parameter": b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY % p SYSTEM "http://127.0.0.1:9/p.dtd"> %p;]><r/>',
        "billion-laughs": laughs,
        "deep-100k": b"<a>" * 100_000 + b"</a>" * 100_000,
        "huge-50mb": b"<a>" + b"x" * (50 * 1024 * 1024) + b"</a>",
        "wrong-encoding": '<?xml version="1.0" encoding="UTF-16"?><a>blåbær</a>'.encode(),
        "empty": b"",
        "whitespace": b"   \n\t  ",
        "binary-garbage": bytes(range(256)) * 64,
        "truncated": VALID_HEAD[:-20],
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    files = {}
    for name, data in _cases(folder).items():
        path = folder / f"{name}.xml"
        path.write_bytes(data)
        files[name] = path
    out = {}
    for name, path in files.items():
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "validate", "--json", str(path)],
            capture_output=True,
            timeout=60,  # a hang guard, not a speed assertion
        )
        out[name] = (proc, time.perf_counter() - started)
    print("\nhostile input timings (whole CLI process, including interpreter start):")
    for name, (_, seconds) in out.items():
        print(f"  {name:<16} {seconds * 1000:7.0f} ms")
    return out


@pytest.mark.parametrize(
    "case",
    [
        "xxe-file",
        "xxe-network",
        "xxe-parameter",
        "billion-laughs",
        "deep-100k",
        "huge-50mb",
        "wrong-encoding",
        "empty",
        "whitespace",
        "binary-garbage",
        "truncated",
    ],
)
def test_hostile_input_is_refused_with_t01(results, case):
    proc, _ = results[case]
    assert proc.returncode == 1, proc.stderr.decode()
    report = json.loads(proc.stdout)
    assert report["valid"] is False
    codes = {p["code"] for p in report["problems"]}
    assert codes == {"T01"}, report
    message = report["problems"][0]["message"]
    assert len(message) > 10
    assert b"root:" not in proc.stdout  # /etc/passwd must never leak into output


def test_process_keeps_working_after_hostile_inputs(validator, tmp_path):
    """In one process: every hostile input is refused, then a normal document still validates."""
    for data in _cases(tmp_path).values():
        result = validator.validate(data)
        assert [p.code for p in result.problems] == [ErrorCode.T01]
    after = validator.validate(VALID_HEAD)
    # The stub MsgHead is schema-invalid, which proves the full pipeline ran after the attacks.
    assert after.codes == ["T02"]


def test_entity_is_never_expanded(validator):
    result = validator.validate(
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>'
    )
    assert "DOCTYPE" in result.problems[0].message
