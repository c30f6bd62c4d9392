"""Keys and certificates made by the `openssl` command, as an operator would make them: RSA and
ECDSA self-signed certificates, a CA chain (root CA -> intermediate CA -> ECDSA leaf), an expired
certificate and a key nobody trusts. And signing a file as operators do (`openssl dgst`)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

CA_CONFIG = """
[ ca ]
default_ca = ca_default
[ ca_default ]
dir = .
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = policy_any
copy_extensions = none
x509_extensions = leaf
[ policy_any ]
commonName = supplied
[ leaf ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
[ intermediate ]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"openssl {' '.join(args)}: {done.stderr}"


def sign_file(key: Path, file: Path, signature: Path) -> None:
    """What the operator does at security level high."""
    openssl("dgst", "-sha256", "-sign", str(key), "-out", str(signature), str(file), cwd=file.parent)


@dataclass
class Pki:
    dir: Path

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    def cert(self, name: str) -> Path:
        return self.dir / f"{name}.pem"

    def pem(self, name: str) -> str:
        return self.cert(name).read_text()

    @property
    def chain_pem(self) -> str:
        """The leaf's certificate followed by its intermediate CA's: what a signer hands over."""
        return self.pem("leaf") + self.pem("intermediate")


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ca.cnf").write_text(CA_CONFIG)
    (folder / "index.txt").write_text("")
    (folder / "serial").write_text("01\n")

    def ec_key(name: str) -> None:
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=folder)

    def self_signed(name: str, key_args: list[str], cn: str) -> None:
        openssl(
            "req", "-x509", *key_args, "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem",
            "-days", "30", "-subj", f"/CN={cn}", cwd=folder,
        )  # fmt: skip

    def issued(name: str, issuer: str, extensions: str, dates: list[str]) -> None:
        openssl(
            "req", "-new", "-key", f"{name}.key", "-subj", f"/CN={name}", "-out", f"{name}.csr", cwd=folder
        )
        openssl(
            "ca", "-batch", "-config", "ca.cnf", "-cert", f"{issuer}.pem", "-keyfile", f"{issuer}.key",
            "-extensions", extensions, *dates, "-notext", "-in", f"{name}.csr", "-out", f"{name}.pem",
            cwd=folder,
        )  # fmt: skip

    self_signed("rsa", ["-newkey", "rsa:2048"], "rsa signer")
    self_signed("ecdsa", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"], "ecdsa signer")
    self_signed("root", ["-newkey", "rsa:2048"], "test root CA")
    ec_key("intermediate")
    issued("intermediate", "root", "intermediate", ["-days", "30"])
    ec_key("leaf")
    issued("leaf", "intermediate", "leaf", ["-days", "30"])
    ec_key("expired")
    issued("expired", "root", "leaf", ["-startdate", "20200101000000Z", "-enddate", "20200201000000Z"])
    self_signed("stranger", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"], "stranger")
    return Pki(folder)
