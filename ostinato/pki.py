"""A small certificate authority for mutual TLS between ostinato's services.

`init(DIR)` makes a CA (DIR/ca.pem, DIR/ca.key); `issue(DIR, NAME, sans)` makes DIR/NAME.pem and
DIR/NAME.key, signed by it, for a service (or the CLI) that is both server and client: ECDSA P-256,
extended key usages serverAuth and clientAuth, subject CN=NAME (plus the CA's organization), and
SANs for the names and addresses clients dial. `ostinato up` keeps such a directory in its data
directory and makes what is missing at start; `ostinato pki` runs the same for multi-host set-ups.
Private keys are written with mode 0600.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ostinato.errors import FailedPrecondition, InvalidArgument

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
CA_DAYS = 3650
LEAF_DAYS = 825
# Clock skew between hosts: a certificate is valid from a little before it was made.
BACKDATE = timedelta(minutes=5)


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path
    subject: str  # RFC 4514, as peers name it in --tls-peer


def cert_path(directory: Path, name: str) -> Path:
    return directory / f"{name}.pem"


def key_path(directory: Path, name: str) -> Path:
    return directory / f"{name}.key"


def init(directory: Path, common_name: str = "ostinato CA", organization: str = "ostinato") -> Path:
    """Makes a new CA in `directory`; refuses to replace one (its certificates would be lost)."""
    cert, key_file = directory / CA_CERT, directory / CA_KEY
    if cert.exists() or key_file.exists():
        raise FailedPrecondition(f"{directory} holds a CA already ({CA_CERT}, {CA_KEY})", field="DIR")
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    # Most general first, so that the RFC 4514 form reads CN=...,O=...
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_file, key)
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert


def issue(
    directory: Path,
    name: str,
    sans: list[str],
    subject: str | None = None,
    days: int = LEAF_DAYS,
    now: datetime | None = None,
) -> Issued:
    """A key and certificate for `name`, signed by the CA in `directory`. `sans`: host names and
    IP addresses clients dial it at (NAME itself is always one); `subject`: an RFC 4514 DN instead
    of CN=NAME,O=<the CA's organization>."""
    if not name or "/" in name or name.startswith("."):
        raise InvalidArgument(f"{name!r} is not a file name", field="NAME")
    if name == Path(CA_CERT).stem:
        raise InvalidArgument(f"{name!r} is the CA's own file name", field="NAME")
    ca_cert, ca_key = _load_ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    now = now or datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(parse_dn(subject) if subject else _default_subject(name, ca_cert))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(ca=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(_general_names([name, *sans])), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert, key_file = cert_path(directory, name), key_path(directory, name)
    _write_key(key_file, key)
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return Issued(cert, key_file, certificate.subject.rfc4514_string())


def ensure(directory: Path, names: list[str], sans: list[str]) -> dict[str, Issued]:
    """What `ostinato up` needs: a CA (made when there is none) and a certificate for each name
    (issued when missing). Existing files are kept, so restarts and renewals by hand stay."""
    if not (directory / CA_CERT).exists():
        init(directory, common_name="ostinato local CA", organization="ostinato local")
    issued = {}
    for name in names:
        cert, key = cert_path(directory, name), key_path(directory, name)
        if cert.exists() and key.exists():
            issued[name] = Issued(cert, key, subject_of(cert))
        else:
            issued[name] = issue(directory, name, sans)
    return issued


def subject_of(cert: Path) -> str:
    """The RFC 4514 subject of the (first) certificate in a PEM file."""
    try:
        return x509.load_pem_x509_certificate(cert.read_bytes()).subject.rfc4514_string()
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"cannot read a certificate from {cert}: {e}") from None


def parse_dn(text: str) -> x509.Name:
    """An RFC 4514 / RFC 2253 distinguished name as people write it (spaces after commas are
    allowed)."""
    parts = [p.strip() for p in _split_unescaped(text, ",")]
    cleaned = ",".join("=".join(s.strip() for s in p.split("=", 1)) for p in parts)
    try:
        name = x509.Name.from_rfc4514_string(cleaned)
    except ValueError:
        raise InvalidArgument(f"{text!r} is not a distinguished name like 'CN=name,O=org'") from None
    if not list(name):
        raise InvalidArgument(f"{text!r} is an empty distinguished name")
    return name


def _split_unescaped(text: str, separator: str) -> list[str]:
    parts, current, escaped = [], "", False
    for c in text:
        if c == separator and not escaped:
            parts.append(current)
            current = ""
            continue
        current += c
        escaped = c == "\\" and not escaped
    parts.append(current)
    return parts


def _default_subject(name: str, ca: x509.Certificate) -> x509.Name:
    organization = ca.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return x509.Name([*organization, x509.NameAttribute(NameOID.COMMON_NAME, name)])


def _general_names(values: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for value in dict.fromkeys(v.strip() for v in values if v.strip()):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(value)))
        except ValueError:
            names.append(x509.DNSName(value))
    return names


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), password=None)
    except (OSError, ValueError) as e:
        raise FailedPrecondition(
            f"no usable CA in {directory} ({e}); make one with 'ostinato pki init {directory}'", field="DIR"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise FailedPrecondition(f"{directory / CA_KEY}: not an ECDSA key made by 'ostinato pki init'")
    return cert, key


def _usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.unlink(missing_ok=True)
    path.touch(mode=0o600)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
