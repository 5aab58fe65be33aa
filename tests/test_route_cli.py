"""`komut route FILE`: every valid sample message is explained, refusals carry their code, and
the exit codes are 0 routable, 1 refused or invalid, 2 usage error."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from lxml import etree

from gateway.commands import route as route_command
from gateway.registry import load_default_registry
from message_types.kinds import MSGHEAD_NS

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_messages"
MANIFEST = tomllib.loads((SAMPLES / "manifest.toml").read_text(encoding="utf-8"))["message"]
VALID = [m for m in MANIFEST if m["expect"] == "valid"]
INVALID = [m for m in MANIFEST if m["expect"] != "valid"]
URLS = {
    "hospital": "https://127.0.0.1:8080/peer/v1/messages",
    "municipal": "https://127.0.0.1:8081/peer/v1/messages",
}
REGISTRY = load_default_registry()
P = f"{{{MSGHEAD_NS}}}"


def cli(*argv: str) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "route", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout, done.stderr


def run(*argv: str) -> tuple[int, str, str]:
    """In-process, for the cases that need no separate interpreter."""
    parser = argparse.ArgumentParser(prog="komut")
    route_command.register(parser.add_subparsers())
    args = parser.parse_args(["route", *argv])
    out, err = io.StringIO(), io.StringIO()
    code = route_command.cmd_route(args, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_there_are_valid_samples_to_route():
    assert len(VALID) >= 20


@pytest.mark.parametrize("entry", VALID, ids=[m["file"] for m in VALID])
def test_each_valid_sample_is_explained(entry):
    code, out, err = cli("--json", str(SAMPLES / entry["file"]))
    assert code == 0, err + out
    report = json.loads(out)
    assert (report["valid"], report["routable"], report["type"]) == (True, True, entry["type"])
    sender, receiver = report["sender"]["her_id"], report["receiver"]["her_id"]
    # Without --config, the decision is the sender's gateway's.
    sender_gateway = REGISTRY.endpoint(sender).gateway
    receiver_gateway = REGISTRY.endpoint(receiver).gateway
    assert report["gateway"] == sender_gateway
    primary = report["routes"][0]
    assert (primary["role"], primary["receiver"]["her_id"]) == ("PRIM", receiver)
    assert primary["receiver"]["name"] == REGISTRY.display_name(receiver)
    assert primary["via"]["her_id"] == REGISTRY.nearest_with_endpoint(receiver).her_id
    if receiver_gateway == sender_gateway:
        level1 = REGISTRY.level1(receiver).her_id
        assert (primary["local"], primary["transport"]) == (True, "folder")
        assert primary["endpoint"] == f"systems/{level1}/in"
        assert primary["protection"] is None
        where = f"local system of this gateway ({sender_gateway}): folder systems/{level1}/in"
    else:
        assert (primary["local"], primary["transport"], primary["gateway"]) == (
            False,
            "https",
            receiver_gateway,
        )
        assert primary["endpoint"] == URLS[receiver_gateway]
        assert primary["protection"]["send_cipher"] == str(REGISTRY.protection(receiver).send_cipher)
        where = f"peer gateway {receiver_gateway}: https {URLS[receiver_gateway]}"
    explanation = report["explanation"]
    assert explanation[0] == f"PRIM {receiver} {REGISTRY.display_name(receiver)}"
    assert explanation[1] == f"  {where}"
    assert explanation[2].startswith("  policy: ")
    assert not any(line.startswith("REFUSED") for line in explanation)


def test_text_output_names_receiver_transport_and_policy():
    code, out, _ = cli(str(SAMPLES / "valid/plo/01-log-innlagt.xml"))
    assert code == 0
    assert "gateway:  hospital (the gateway that serves the sender 9100201)" in out
    assert "ROUTABLE: 1 delivery" in out
    assert "PRIM 9203001 Drammen kommune, Sykepleietjeneste, pleie og omsorg" in out
    assert f"peer gateway municipal: https {URLS['municipal']}" in out
    assert "policy: aes256, per the receiver's policy 'standard'" in out


def test_gateway_option_makes_the_same_message_local():
    code, out, _ = run("--json", "--gateway", "municipal", str(SAMPLES / "valid/plo/01-log-innlagt.xml"))
    assert code == 0
    [route] = json.loads(out)["routes"]
    assert (route["local"], route["endpoint"], route["protection"]) == (True, "systems/9203000/in", None)


# --- refusals ----------------------------------------------------------------------------------------


def readdress(sample: str, tmp_path: Path, her_ids: dict[str, str]) -> Path:
    """A valid sample with the receiver's HER-ids replaced (everything else stays valid)."""
    tree = etree.parse(str(SAMPLES / sample))
    receiver = tree.find(f"{P}MsgInfo/{P}Receiver")
    changed = 0
    for ident in receiver.iter(f"{P}Id"):
        if ident.text in her_ids:
            ident.text = her_ids[ident.text]
            changed += 1
    assert changed == len(her_ids)
    path = tmp_path / Path(sample).name
    tree.write(str(path), xml_declaration=True, encoding="UTF-8")
    return path


def test_type_not_accepted_is_refused_with_t10(tmp_path):
    # The admission report, sent to a GP instead of the hospital's meldingsmottak.
    path = readdress(
        "valid/plo/02-innleggelsesrapport.xml", tmp_path, {"9100000": "9320100", "9100201": "9320101"}
    )
    code, out, _ = cli("--json", str(path))
    assert code == 1
    report = json.loads(out)
    assert (report["valid"], report["routable"], report["routes"]) == (True, False, [])
    assert [p["code"] for p in report["problems"]] == ["T10"]
    assert "Bragernes legesenter, Ola Fjellheim (HER-id 9320101)" in report["problems"][0]["message"]
    assert report["explanation"][-1].startswith("REFUSED T10 Meldingsformatet er ikke støttet: ")


def test_unknown_receiver_is_refused_with_e21(tmp_path):
    path = readdress("valid/plo/02-innleggelsesrapport.xml", tmp_path, {"9100201": "9100299"})
    code, out, _ = run(str(path))
    assert code == 1
    assert "REFUSED" in out
    assert "REFUSED E21 Mottaker finnes ikke: the receiver HER-id 9100299" in out


@pytest.mark.parametrize("entry", INVALID[:10], ids=[m["file"] for m in INVALID[:10]])
def test_invalid_samples_are_not_routed(entry):
    code, out, _ = run("--json", str(SAMPLES / entry["file"]))
    assert code == 1
    report = json.loads(out)
    assert (report["valid"], report["routable"], report["routes"]) == (False, False, [])
    assert sorted({p["code"] for p in report["problems"] if p["severity"] == "error"}) == sorted(
        entry["expect"]
    )
    assert all(line.startswith("INVALID ") for line in report["explanation"])


# --- configuration and usage errors ------------------------------------------------------------------


def test_config_routes_as_that_gateway(tmp_path):
    config = tmp_path / "municipal.toml"
    config.write_text(
        "\n".join(
            [
                "[gateway]",
                'name = "municipal"',
                "[gateways]",
                'hospital = "https://hospital.example/peer/v1/messages"',
                "[[local_systems]]",
                'name = "Drammen PLO"',
                "her_ids = [9203000]",
                'folder = "drammen"',
            ]
        ),
        encoding="utf-8",
    )
    sample = str(SAMPLES / "valid/plo/02-innleggelsesrapport.xml")  # municipality -> hospital
    code, out, _ = run("--json", "--config", str(config), sample)
    assert code == 0
    report = json.loads(out)
    assert report["gateway"] == "municipal"
    assert report["routes"][0]["endpoint"] == "https://hospital.example/peer/v1/messages"
    # The GP office has no local system in this configuration: refused, not guessed.
    code, out, _ = run(
        "--json", "--config", str(config), str(SAMPLES / "valid/plo/09-helseopplysninger-til-lege.xml")
    )
    assert code == 1
    assert [p["code"] for p in json.loads(out)["problems"]] == ["E21"]
    code, out, _ = run("--json", "--config", str(config), str(SAMPLES / "valid/plo/01-log-innlagt.xml"))
    assert json.loads(out)["routes"][0]["endpoint"] == str(tmp_path / "drammen" / "in")
    code, _, err = run("--config", str(config), "--gateway", "hospital", sample)
    assert code == 2 and "contradicts" in err


def test_usage_errors_exit_2(tmp_path):
    sample = str(SAMPLES / "valid/plo/01-log-innlagt.xml")
    assert run(str(tmp_path / "missing.xml"))[0] == 2
    code, _, err = run("--gateway", "hospitl", sample)
    assert code == 2 and "no such gateway" in err
    broken = tmp_path / "registry.toml"
    broken.write_text("schema = 1\n[[party]]\nher_id = 1\n", encoding="utf-8")
    code, _, err = run("--registry", str(broken), sample)
    assert code == 2 and "refused" in err
    assert run("--config", str(tmp_path / "missing.toml"), sample)[0] == 2
    assert cli()[0] == 2  # argparse: FILE is required
