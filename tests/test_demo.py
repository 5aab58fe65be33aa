"""`komut demo` (what `make run` starts): the demo network comes up, traffic flows to app-ok, and
Ctrl-C stops everything cleanly."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys

from e2e import REPO, free_base_port, wait_for

from gateway.ui.demo import UI_PORT_OFFSET


def _log(config: str, *options: str) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "log", "--config", config, "--json", *options],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_demo_runs_plays_traffic_and_stops_on_ctrl_c(tmp_path, demo_pki):
    directory = tmp_path / "demo"
    directory.mkdir()
    shutil.copytree(demo_pki / "pki", directory / "pki")  # the PKI would otherwise take seconds
    port = free_base_port(offsets=(0, 1, UI_PORT_OFFSET, UI_PORT_OFFSET + 1))  # gateways and their UIs
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "demo",
            "--dir",
            str(directory),
            "--base-port",
            str(port),
            "--pace",
            "0.2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    try:
        info_file = directory / "demo.json"
        wait_for(info_file.exists, timeout=60, what="demo.json")
        info = json.loads(info_file.read_text())
        assert set(info["gateways"]) == {"hospital", "municipal"}
        assert info["gateways"]["hospital"]["url"].endswith(f":{port}")
        assert len(info["systems"]) >= 38
        hospital = info["gateways"]["hospital"]["config"]

        def answered():
            # Asked for app-ok only: the newest 200 messages of a busy demo may all still be under way.
            rows = _log(hospital, "--status", "app-ok")
            return [r for r in rows if r["direction"] == "outbound" and r["status"] == "app-ok"]

        done = wait_for(answered, timeout=90, interval=1.0, what="demo traffic answered with app-ok")
        assert {r["type"] for r in done} & {"LOG_INNLAGT", "HELSEOPPL_SOKNAD", "LOG_UTSKRIVNINGSKLAR"}
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        print(out[-8000:])  # pytest shows it when the test fails
    assert proc.returncode == 0, out
    assert "demo stopped" in out
    leftover = subprocess.run(["pgrep", "-f", f"--config {directory}"], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", "gateway processes left running"
