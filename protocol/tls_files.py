"""The TLS files a process is configured with, checked before it starts.

A certificate path with a typo, a key that belongs to another certificate or a CA file
that is not PEM showed only once the process was half up: the agent had opened its
devices and its NATS link when uvicorn failed on the till API's certificate (a
traceback, the agent stopping again), central's API likewise, and a NATS client's files
failed as a connection error. Loading them the way the process will (Python's ``ssl``)
names the setting and the file instead.
"""

from __future__ import annotations

import os
import ssl

__all__ = ["ca_problem", "certificate_problem"]


def _file_problem(setting: str, path: str) -> str | None:
    if not os.path.isfile(path):
        return f"{setting} file {path!r} does not exist"
    if not os.access(path, os.R_OK):
        return f"{setting} file {path!r} cannot be read (permissions)"
    return None


def certificate_problem(cert_setting: str, cert: str, key_setting: str, key: str) -> str | None:
    """Why the certificate ``cert`` with its private key ``key`` (empty: in the
    certificate's file) cannot serve or identify this process, or None (also when
    neither is set)."""
    if not cert:
        if key:
            return f"{key_setting} is set without {cert_setting}: set both (or neither)"
        return None
    for setting, path in ((cert_setting, cert), (key_setting, key)):
        if path:
            problem = _file_problem(setting, path)
            if problem is not None:
                return problem
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert)
    except (ssl.SSLError, OSError):
        return f"{cert_setting} file {cert!r} holds no PEM certificate"
    try:
        # A password is given so that an encrypted key fails here instead of OpenSSL
        # asking for its passphrase on the terminal of a service that has none.
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key or None, password="")
    except (ssl.SSLError, OSError) as exc:
        if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
            return f"{key_setting} file {key!r} is not the private key of {cert_setting} {cert!r}"
        where = f"{key_setting} file {key!r}" if key else f"{cert_setting} file {cert!r}"
        return f"{where} holds no unencrypted PEM private key"
    return None


def ca_problem(setting: str, path: str) -> str | None:
    """Why the CA bundle ``path`` cannot verify a server, or None (also when unset)."""
    if not path:
        return None
    problem = _file_problem(setting, path)
    if problem is not None:
        return problem
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, OSError):
        return f"{setting} file {path!r} holds no PEM CA certificate"
    return None
