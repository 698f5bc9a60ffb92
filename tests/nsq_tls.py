"""Throwaway certificates for the NSQ TLS tests, made with the ``openssl`` binary.

One CA signs the broker's certificate (for 127.0.0.1 and localhost), one for another name
(nsqd.example) and a client certificate; a second, untrusted CA signs a rogue client
certificate.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
_LEAF_EXT = (
    "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
    "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
)


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    rogue_cert: Path
    rogue_key: Path
    other_name_cert: Path  # signed by the CA for nsqd.example only
    other_name_key: Path


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl("req", "-x509", *_KEY, "-keyout", key, "-out", cert, "-days", "2",
             "-subj", f"/CN={name}", "-config", "/dev/null",
             "-addext", "subjectKeyIdentifier=hash", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    return cert, key


def _leaf(directory: Path, name: str, ca: tuple[Path, Path], extra: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    csr, ext = directory / f"{name}.csr", directory / f"{name}.ext"
    ext.write_text(_LEAF_EXT + extra)
    _openssl("req", "-new", *_KEY, "-keyout", key, "-out", csr, "-subj", f"/CN={name}",
             "-config", "/dev/null")  # fmt: skip
    serial = str(int.from_bytes(name.encode()[:6], "big"))
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-set_serial", serial,
             "-days", "2", "-out", cert, "-extfile", ext)  # fmt: skip
    return cert, key


def make_pki(directory: Path) -> Pki:
    """Write a CA, a broker and a client certificate, and a rogue CA's client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca(directory, "test-ca")
    other = _ca(directory, "other-ca")
    server = _leaf(
        directory,
        "localhost",
        ca,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    client = _leaf(directory, "taskdash-client", ca, "extendedKeyUsage=clientAuth\n")
    rogue = _leaf(directory, "rogue-client", other, "extendedKeyUsage=clientAuth\n")
    named = _leaf(
        directory,
        "nsqd.example",
        ca,
        "subjectAltName=DNS:nsqd.example\nextendedKeyUsage=serverAuth\n",
    )
    return Pki(ca[0], *server, *client, other[0], *rogue, *named)
