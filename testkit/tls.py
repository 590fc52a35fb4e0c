"""Throwaway TLS material made with ``openssl``, and a ``redis-server`` that speaks only TLS."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from testkit.redis_server import RedisServer

_EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")  # fast to make


@dataclass(frozen=True)
class Certs:
    ca: str           # the CA that signed the server's certificate
    server_cert: str  # for IP 127.0.0.1 (subjectAltName) only
    server_key: str
    other_ca: str     # a CA that signed nothing here: verifying with it must fail


def _openssl(*args: str) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise RuntimeError("openssl is not installed (Debian: apt-get install openssl)")
    subprocess.run([binary, *args], check=True, capture_output=True, timeout=30)


def _ca(directory: Path, name: str) -> tuple[str, str]:
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    _openssl("req", "-x509", *_EC, "-keyout", str(key), "-out", str(cert), "-days", "2",
             "-subj", f"/CN=dcm-sync test {name}")
    return str(cert), str(key)


def make_certs(directory: Path) -> Certs:
    """A CA, a server certificate it signs for ``127.0.0.1``, and an unrelated CA."""
    ca_cert, ca_key = _ca(directory, "ca")
    other_ca, _ = _ca(directory, "other-ca")
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                   "extendedKeyUsage=serverAuth\n")
    _openssl("req", *_EC, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    _openssl("x509", "-req", "-in", str(csr), "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
             "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return Certs(ca_cert, str(cert), str(key), other_ca)


def tls_args(certs: Certs, port: int) -> tuple[str, ...]:
    """redis-server options for TLS only on ``port`` (also for replication and, in a Sentinel,
    for its links to the master, replicas and other Sentinels); clients need no certificate."""
    return ("--port", "0", "--tls-port", str(port), "--tls-cert-file", certs.server_cert,
            "--tls-key-file", certs.server_key, "--tls-ca-cert-file", certs.ca,
            "--tls-auth-clients", "no", "--tls-replication", "yes")


class TLSRedisServer(RedisServer):
    """redis-server with TLS on its port and no plain-text port; clients need no certificate."""

    def __init__(self, certs: Certs) -> None:
        super().__init__(client_kwargs={"ssl": True, "ssl_ca_certs": certs.ca})
        self.certs = certs
        self.extra_args = tls_args(certs, self.port)

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"
