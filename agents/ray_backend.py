"""Connecting to Ray: a local instance, or a running cluster at `--address HOST:PORT`.

Ray is an optional extra (`pip install -e ".[dist]"`), imported only here and only when asked for,
so the base install trains and evaluates without it. `ray.init` on an address nobody listens on
retries for a long time; a plain socket connect with a timeout first turns that into one line.

Ray 2.60's `ray start --head` turns on token authentication and writes the token to
`~/.ray/auth_token`, but a driver only sends a token when `RAY_AUTH_MODE=token`; without it the
connection is refused ("InvalidAuthToken"). So a driver joining a cluster uses token mode whenever
it has a token (`RAY_AUTH_TOKEN`, `RAY_AUTH_TOKEN_PATH` or the default file); a cluster without
authentication accepts such a driver too.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping
from pathlib import Path
from types import ModuleType

INSTALL_HINT = 'Ray is not installed; install the distributed extra: pip install -e ".[dist]"'
CONNECT_TIMEOUT_S = 3.0
DEFAULT_TOKEN_FILE = Path("~/.ray/auth_token")


def import_ray(address: str | None = None) -> ModuleType:
    """The `ray` module, or a ValueError with the install command when the extra is missing. Ray reads
    its authentication mode when imported, so a driver for a cluster (`address`) chooses it first."""
    if address is not None:
        use_token_if_present(os.environ)
    try:
        import ray
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    return ray


def parse_address(address: str) -> tuple[str, int]:
    """`HOST:PORT` -> (host, port); anything else is a ValueError naming the value."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--address {address!r}: expected auto or HOST:PORT, e.g. 192.168.1.10:6379")
    return host, int(port)


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise a ValueError within `timeout_s` when nothing accepts connections at `address`."""
    host, port = parse_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as error:
        raise ValueError(
            f"--address {address}: no Ray cluster reachable ({error.strerror or error}); "
            f"start one with `ray start --head --port {port}` or leave --address out for a local one"
        ) from None


def init_ray(address: str | None = None, num_cpus: int | None = None) -> ModuleType:
    """`ray.init` on a local instance (address None) or on a cluster (`auto` or HOST:PORT)."""
    ray = import_ray(address)
    if ray.is_initialized():
        return ray
    if address is None:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    else:
        if address != "auto":
            check_reachable(address)
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    return ray


def use_token_if_present(environ: MutableMapping[str, str]) -> bool:
    """Set `RAY_AUTH_MODE=token` in `environ` when a token is available and no mode was chosen."""
    if environ.get("RAY_AUTH_MODE"):
        return environ["RAY_AUTH_MODE"] == "token"
    has_token = bool(environ.get("RAY_AUTH_TOKEN")) or bool(environ.get("RAY_AUTH_TOKEN_PATH")) or \
        DEFAULT_TOKEN_FILE.expanduser().is_file()
    if has_token:
        environ["RAY_AUTH_MODE"] = "token"
    return has_token
