"""`[gateway] event_loop`: the service runs on uvloop by default, on asyncio's own loop when asked."""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest
import uvloop

from gateway.commands.serve import run_loop
from gateway.config import ConfigError, parse_config


def _config(tmp_path, **gateway):
    return parse_config({"gateway": {"name": "municipal", **gateway}}, tmp_path)


async def _loop_type():
    return type(asyncio.get_running_loop())


def test_uvloop_is_the_default(tmp_path):
    config = _config(tmp_path)
    assert config.event_loop == "uvloop"
    assert run_loop(_loop_type(), config.event_loop) is uvloop.Loop


def test_asyncio_loop_on_request(tmp_path):
    config = _config(tmp_path, event_loop="asyncio")
    assert not issubclass(run_loop(_loop_type(), config.event_loop), uvloop.Loop)


def test_unknown_event_loop_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="event_loop must be one of uvloop, asyncio"):
        _config(tmp_path, event_loop="twisted")


def test_without_uvloop_installed_the_service_runs_on_asyncio_and_says_so(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what `import uvloop` sees when it is missing
    with caplog.at_level(logging.WARNING, logger="komut"):
        loop_type = run_loop(_loop_type(), "uvloop")
    assert not issubclass(loop_type, uvloop.Loop)
    assert "uvloop is not installed" in caplog.text
