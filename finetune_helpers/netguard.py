"""Refuse every network connection that does not stay on this machine.

The book must run offline; the test run proves it by installing this guard in the test process
and in every notebook kernel (via ``tests/netguard/sitecustomize.py``). A connection to any
address outside loopback, and any DNS look-up of a non-local name, raises
:class:`NetworkBlockedError` at once, naming the address, instead of hanging or silently
falling back. Unix-domain sockets and loopback (the kernel's own ZeroMQ channels) are allowed.
"""

from __future__ import annotations

import ipaddress
import socket

ENV_VAR = "FINETUNE_HELPERS_NO_NETWORK"
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}
_installed = False


class NetworkBlockedError(ConnectionError):
    """Raised for a network access the offline book must not make."""


def _is_local(host: object) -> bool:
    if not isinstance(host, str):
        return True  # AF_UNIX paths (str) are handled by the caller; bytes paths, etc.
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        addr = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return addr.is_loopback or addr.is_unspecified


def _blocked(what: str) -> NetworkBlockedError:
    return NetworkBlockedError(
        f"network access blocked: {what}. The book runs offline; load models and data from "
        f"the offline zoo (finetune_helpers.zoo / finetune_helpers.data) or unset {ENV_VAR}.")


def install() -> None:
    """Patch ``socket`` so non-loopback connections and look-ups raise. Idempotent."""
    global _installed
    if _installed:
        return
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def _check(sock: socket.socket, address: object) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0] if isinstance(address, tuple) else address
            if not _is_local(host):
                raise _blocked(f"connect to {address!r}")

    def connect(self, address):  # type: ignore[no-untyped-def]
        _check(self, address)
        return real_connect(self, address)

    def connect_ex(self, address):  # type: ignore[no-untyped-def]
        _check(self, address)
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and not _is_local(name):
            raise _blocked(f"DNS look-up of {name!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo
    _installed = True
