"""Connecting to Ray: a bad or unreachable --address is one clear error within seconds, not a hang."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.ray_backend import check_reachable, parse_address


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("address", ["localhost", "host:port", ":6379", "h:0", "h:70000"])
def test_malformed_address_is_named(address):
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_address(address)


def test_unreachable_address_fails_fast():
    address = f"127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(ValueError, match="no Ray cluster reachable"):
        check_reachable(address, timeout_s=2.0)
    assert time.monotonic() - start < 5


def test_listening_address_passes():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_reachable(f"127.0.0.1:{server.getsockname()[1]}")


def test_token_mode_is_chosen_when_a_token_exists(tmp_path, monkeypatch):
    from agents import ray_backend

    monkeypatch.setattr(ray_backend, "DEFAULT_TOKEN_FILE", tmp_path / "absent")
    environ = {"RAY_AUTH_TOKEN": "secret"}
    assert ray_backend.use_token_if_present(environ) and environ["RAY_AUTH_MODE"] == "token"
    environ = {}
    assert not ray_backend.use_token_if_present(environ) and "RAY_AUTH_MODE" not in environ
    (tmp_path / "auth_token").write_text("secret")
    monkeypatch.setattr(ray_backend, "DEFAULT_TOKEN_FILE", tmp_path / "auth_token")
    assert ray_backend.use_token_if_present(environ) and environ["RAY_AUTH_MODE"] == "token"
    environ = {"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": "secret"}
    assert not ray_backend.use_token_if_present(environ) and environ["RAY_AUTH_MODE"] == "disabled"


def test_sweep_without_ray_says_how_to_install_it(tmp_path):
    """The base install has no Ray: a package named ray that fails to import stands in for its absence."""
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, str(root / "run.py"), "sweep", "--seeds", "1", "--logdir", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 2
    assert done.stderr.strip() == 'error: Ray is not installed; install the distributed extra: pip install -e ".[dist]"'
