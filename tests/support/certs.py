"""Throwaway X.509 material for TLS tests, made with the `openssl` command line.

`make_pki(dir)` writes a CA, a server certificate for 127.0.0.1 (and the DNS names given)
and a client certificate, all signed by that CA, plus a second CA that signed nothing the
servers trust (for "wrong CA" cases). EC P-256 keys keep generation fast.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

SERVER_DNS = "keyguard.test"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed none of the above
    other_client_cert: Path  # a client certificate signed by other_ca
    other_client_key: Path


def openssl_binary() -> str:
    found = shutil.which("openssl")
    if found is None:
        pytest.skip("openssl not installed")
    return found


def _run(*args: str, cwd: Path) -> None:
    result = subprocess.run(
        [openssl_binary(), *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr[-2000:]}")


def _key(path: Path, cwd: Path) -> None:
    _run(
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        path.name,
        cwd=cwd,
    )
    path.chmod(0o600)


def _ca(name: str, cwd: Path) -> tuple[Path, Path]:
    key, cert = cwd / f"{name}.key", cwd / f"{name}.crt"
    _key(key, cwd)
    _run(
        "req", "-x509", "-new", "-key", key.name, "-out", cert.name, "-days", "2",
        "-subj", f"/CN=keyguard test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
        cwd=cwd,
    )  # fmt: skip
    return cert, key


def _leaf(name: str, ca: tuple[Path, Path], extensions: str, cwd: Path) -> tuple[Path, Path]:
    key, cert, csr, ext = (cwd / f"{name}{s}" for s in (".key", ".crt", ".csr", ".ext"))
    _key(key, cwd)
    _run("req", "-new", "-key", key.name, "-out", csr.name, "-subj", f"/CN={name}", cwd=cwd)
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n" + extensions
    )
    _run(
        "x509", "-req", "-in", csr.name, "-CA", ca[0].name, "-CAkey", ca[1].name,
        "-CAcreateserial", "-out", cert.name, "-days", "2", "-extfile", ext.name,
        cwd=cwd,
    )  # fmt: skip
    return cert, key


def make_pki(directory: Path, dns_names: tuple[str, ...] = (SERVER_DNS, "localhost")) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca("ca", directory)
    other = _ca("other-ca", directory)
    sans = ",".join(["IP:127.0.0.1", *(f"DNS:{name}" for name in dns_names)])
    server = _leaf("server", ca, f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\n", directory)
    client = _leaf(
        "client", ca, "subjectAltName=DNS:client.test\nextendedKeyUsage=clientAuth\n", directory
    )
    stranger = _leaf(
        "stranger",
        other,
        "subjectAltName=DNS:stranger.test\nextendedKeyUsage=clientAuth\n",
        directory,
    )
    return Pki(
        ca=ca[0],
        server_cert=server[0],
        server_key=server[1],
        client_cert=client[0],
        client_key=client[1],
        other_ca=other[0],
        other_client_cert=stranger[0],
        other_client_key=stranger[1],
    )
