"""Throwaway certificates for a TLS redis-server on this machine (tests and drills), made with openssl."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = "2"
KEY_BITS = "rsa:2048"


@dataclass(frozen=True)
class LocalPki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_pki(directory: Path, name: str = "embedfleet-test") -> LocalPki:
    """A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate, all signed by it."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = directory / "ca.key", directory / "ca.crt"
    _openssl(
        "req",
        "-x509",
        "-newkey",
        KEY_BITS,
        "-nodes",
        "-keyout",
        ca_key,
        "-out",
        ca,
        "-days",
        DAYS,
        "-subj",
        f"/CN={name}-ca",
    )
    server = _signed(directory, "server", ca, ca_key, "subjectAltName=IP:127.0.0.1,DNS:localhost")
    client = _signed(directory, "client", ca, ca_key, "extendedKeyUsage=clientAuth")
    return LocalPki(ca, *server, *client)


def _signed(directory: Path, role: str, ca: Path, ca_key: Path, extension: str) -> tuple[Path, Path]:
    key, request, cert = directory / f"{role}.key", directory / f"{role}.csr", directory / f"{role}.crt"
    extensions = directory / f"{role}.ext"
    extensions.write_text(extension + "\n")
    _openssl("req", "-newkey", KEY_BITS, "-nodes", "-keyout", key, "-out", request, "-subj", f"/CN={role}")
    _openssl(
        "x509",
        "-req",
        "-in",
        request,
        "-CA",
        ca,
        "-CAkey",
        ca_key,
        "-CAcreateserial",
        "-out",
        cert,
        "-days",
        DAYS,
        "-extfile",
        extensions,
    )
    return cert, key


def _openssl(*args: object) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)
