"""Digital signatures of inventory items: X.509 (RSA and ECDSA) and OpenPGP.

What is signed is the exact JSON text of an item (UTF-8 bytes), as `openssl dgst -sha256 -sign
key.pem` signs a file: RSA with PKCS#1 v1.5 padding, ECDSA as a DER sequence, both over SHA-256.
A `Signature` carries the signature bytes, the algorithm and the signer's certificate in PEM
(optionally followed by intermediate CA certificates). An OpenPGP signature (algorithm
"OpenPGP", as `gpg --detach-sign --armor` makes it) carries no certificate: it names its key,
which the verifier must trust (ostinato/pgp.py).

A `Verifier` holds trusted certificates: either the signers' own certificates or CA certificates
that issued them (directly or through intermediates that came with the signature). It checks the
bytes first and only then looks inside the JSON, and rejects with `SignatureRejected` saying why:
unsigned, tampered or signed with another key, expired (or not yet valid), untrusted, or signed for
another path or version.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from gen.ostinato.common.v1 import events_pb2, items_pb2
from ostinato import pgp
from ostinato.errors import InvalidArgument, SignatureRejected

RSA_SHA256 = "SHA256withRSA"
ECDSA_SHA256 = "SHA256withECDSA"
OPENPGP = pgp.OPENPGP

# What must be signed (JS7: workflows, job resources, file order sources). Other items may be
# signed; an unsigned one of these is rejected.
SIGNED_TYPES = frozenset(
    {
        items_pb2.ITEM_TYPE_WORKFLOW,
        items_pb2.ITEM_TYPE_JOB_RESOURCE,
        items_pb2.ITEM_TYPE_FILE_ORDER_SOURCE,
    }
)

# Issuer chains longer than this are not followed.
MAX_CHAIN = 6
_CACHE_SIZE = 512

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def type_word(item_type: int) -> str:
    """ITEM_TYPE_JOB_RESOURCE -> "job resource", for messages."""
    name = items_pb2.ItemType.Name(items_pb2.ItemType.ValueType(item_type))
    return name.removeprefix("ITEM_TYPE_").lower().replace("_", " ")


def subject_text(certificate: x509.Certificate) -> str:
    return certificate.subject.rfc4514_string() or "(empty subject)"


def load_certificates(pem: str | bytes, what: str = "certificate") -> list[x509.Certificate]:
    """Every certificate of a PEM text, in order; InvalidArgument when there is none."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise InvalidArgument(f"{what} is not a PEM X.509 certificate: {e}") from None
    return certificates


def algorithm_for(key: PublicKey | PrivateKey) -> str:
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return RSA_SHA256
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return ECDSA_SHA256
    raise InvalidArgument(f"unsupported key type {type(key).__name__}; use RSA or ECDSA")


def signature_of(signature: bytes, certificate_pem: str) -> events_pb2.Signature:
    """A Signature for bytes signed outside (e.g. by openssl): the algorithm follows the key."""
    leaf = load_certificates(certificate_pem, "signer certificate")[0]
    return events_pb2.Signature(
        signature=signature,
        algorithm=algorithm_for(_public_key(leaf)),
        signer_certificate=certificate_pem,
    )


def _public_key(certificate: x509.Certificate) -> PublicKey:
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise InvalidArgument(f"unsupported key type {type(key).__name__}; use RSA or ECDSA")
    return key


class Signer:
    """A private key with its certificate (PEM, leaf first, intermediates may follow)."""

    def __init__(self, key_pem: str | bytes, certificate_pem: str) -> None:
        data = key_pem.encode() if isinstance(key_pem, str) else key_pem
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as e:
            raise InvalidArgument(f"signing key is not an unencrypted PEM private key: {e}") from None
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise InvalidArgument(f"unsupported key type {type(key).__name__}; use RSA or ECDSA")
        chain = load_certificates(certificate_pem, "signing certificate")
        if _public_bytes(chain[0].public_key()) != _public_bytes(key.public_key()):
            raise InvalidArgument(f"the signing key does not belong to certificate {subject_text(chain[0])}")
        self.key = key
        self.certificate = chain[0]
        self.certificate_pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in chain)
        self.algorithm = algorithm_for(key)

    @property
    def subject(self) -> str:
        return subject_text(self.certificate)

    def sign(self, data: bytes) -> events_pb2.Signature:
        if isinstance(self.key, rsa.RSAPrivateKey):
            raw = self.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        else:
            raw = self.key.sign(data, ec.ECDSA(hashes.SHA256()))
        return events_pb2.Signature(
            signature=raw, algorithm=self.algorithm, signer_certificate=self.certificate_pem
        )

    def sign_item(self, item: items_pb2.SignedItem) -> items_pb2.SignedItem:
        item.signature.CopyFrom(self.sign(item.json.encode("utf-8")))
        return item


def _public_bytes(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def generate_root(common_name: str, days: int = 3650, now: datetime | None = None) -> tuple[str, str]:
    """A new ECDSA P-256 key and its self-signed CA certificate, both PEM: the root key a local
    set-up signs with when no operator gave one."""
    now = now or datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True, slots=True)
class _Chain:
    """A signer certificate's path to a trust anchor: leaf first, anchor last (one element when
    the leaf is itself trusted)."""

    certificates: tuple[x509.Certificate, ...]


class Verifier:
    """Verifies signed items against trusted certificates (signers' own, or CA certificates) and
    trusted OpenPGP keys."""

    def __init__(self, trusted: Iterable[x509.Certificate] = (), pgp_keys: pgp.PgpKeys | None = None) -> None:
        self.pgp = pgp_keys or pgp.PgpKeys()
        self.anchors: list[x509.Certificate] = list(trusted)
        self._anchor_prints = {c.fingerprint(hashes.SHA256()) for c in self.anchors}
        self._parsed: dict[str, list[x509.Certificate]] = {}
        self._chains: dict[str, _Chain] = {}

    @classmethod
    def from_pem(cls, texts: Iterable[str | bytes]) -> Verifier:
        return cls([c for text in texts for c in load_certificates(text, "trusted certificate")])

    @classmethod
    def from_files(cls, paths: Iterable[Path | str], pgp_paths: Iterable[Path | str] = ()) -> Verifier:
        """--trust FILE (PEM certificates) and --trust-pgp FILE (OpenPGP public keys)."""
        certificates: list[x509.Certificate] = []
        for path in paths:
            try:
                data = Path(path).read_bytes()
            except OSError as e:
                raise InvalidArgument(f"cannot read trusted certificates from {path}: {e}") from None
            certificates += load_certificates(data, f"{path}")
        return cls(certificates, pgp.PgpKeys.from_files(pgp_paths))

    def describe(self) -> str:
        return ", ".join(subject_text(c) for c in self.anchors) or "nothing"

    def verify_items(self, items: Sequence[items_pb2.SignedItem], now: datetime | None = None) -> None:
        """Verifies each item; the first that fails raises SignatureRejected naming it."""
        now = now or datetime.now(UTC)
        for item in items:
            self.verify(item, now)

    def verify(self, item: items_pb2.SignedItem, now: datetime | None = None) -> str:
        """Checks the item's signature over its exact JSON bytes, then the signer (an X.509
        certificate's validity and trust, or a trusted OpenPGP key), then that the JSON names the
        item's path and version. Returns the signer ("" for an unsigned item of a type that needs
        no signature)."""
        now = now or datetime.now(UTC)
        what = f"{type_word(item.type)} {item.path or '(no path)'}"

        def reject(why: str) -> SignatureRejected:
            return SignatureRejected(f"{what}: {why}")

        signature = item.signature
        if not signature.signature:
            if item.type not in SIGNED_TYPES:
                return ""
            raise reject("unsigned: it must carry a signature by a trusted key")
        if signature.algorithm == pgp.OPENPGP:
            try:
                signer = self.pgp.verify(item.json.encode("utf-8"), signature.signature, now)
            except pgp.PgpRejected as e:
                raise reject(str(e)) from None
        else:
            signer = self._verify_x509(item, now, reject)
        # The bytes are genuine: only now is the JSON parsed, to bind the signature to the item.
        try:
            value = json.loads(item.json)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise reject("the signed JSON is not an object")
        if value.get("path") != item.path:
            raise reject(f"signed for path {value.get('path')!r}, delivered as {item.path!r}")
        if item.version_id and value.get("versionId", item.version_id) != item.version_id:
            raise reject(
                f"signed for version {value.get('versionId')!r}, delivered as version {item.version_id!r}"
            )
        return signer

    def _verify_x509(
        self, item: items_pb2.SignedItem, now: datetime, reject: Callable[[str], SignatureRejected]
    ) -> str:
        signature = item.signature
        if not signature.signer_certificate:
            raise reject("the signature carries no signer certificate")
        try:
            certificates = self._certificates(signature.signer_certificate)
        except InvalidArgument as e:
            raise reject(str(e)) from None
        leaf = certificates[0]
        try:
            key = _public_key(leaf)
        except InvalidArgument as e:
            raise reject(str(e)) from None
        expected = algorithm_for(key)
        if signature.algorithm and signature.algorithm != expected:
            raise reject(
                f"algorithm {signature.algorithm} does not fit the certificate's key ({expected} expected)"
            )
        data = item.json.encode("utf-8")
        try:
            if isinstance(key, rsa.RSAPublicKey):
                key.verify(signature.signature, data, padding.PKCS1v15(), hashes.SHA256())
            else:
                key.verify(signature.signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise reject(
                "signature does not match the JSON text: it was changed after signing, or signed with"
                f" another key than that of certificate {subject_text(leaf)}"
            ) from None
        chain = self._chain(signature.signer_certificate, certificates, reject)
        for certificate in chain.certificates:
            if now < certificate.not_valid_before_utc:
                raise reject(
                    f"certificate {subject_text(certificate)} is not valid before"
                    f" {certificate.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC"
                )
            if now > certificate.not_valid_after_utc:
                raise reject(
                    f"certificate {subject_text(certificate)} expired on"
                    f" {certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
                )
        return subject_text(leaf)

    def _certificates(self, pem: str) -> list[x509.Certificate]:
        found = self._parsed.get(pem)
        if found is None:
            found = load_certificates(pem, "signer certificate")
            if len(self._parsed) >= _CACHE_SIZE:
                self._parsed.clear()
            self._parsed[pem] = found
        return found

    def _chain(
        self, pem: str, certificates: list[x509.Certificate], reject: Callable[[str], SignatureRejected]
    ) -> _Chain:
        chain = self._chains.get(pem)
        if chain is None:
            chain = self._build_chain(certificates, reject)
            if len(self._chains) >= _CACHE_SIZE:
                self._chains.clear()
            self._chains[pem] = chain
        return chain

    def _build_chain(
        self, certificates: list[x509.Certificate], reject: Callable[[str], SignatureRejected]
    ) -> _Chain:
        leaf, intermediates = certificates[0], certificates[1:]
        if not self.anchors:
            raise reject("this service trusts no certificate (start it with --trust FILE)")
        _check_usage(leaf, reject)
        path = [leaf]
        current = leaf
        for _ in range(MAX_CHAIN):
            if current.fingerprint(hashes.SHA256()) in self._anchor_prints:
                return _Chain(tuple(path))
            issuer = self._issuer_of(current, intermediates)
            if issuer is None:
                break
            path.append(issuer)
            if issuer.fingerprint(hashes.SHA256()) in self._anchor_prints:
                return _Chain(tuple(path))
            current = issuer
        raise reject(
            f"certificate {subject_text(leaf)} (issued by {leaf.issuer.rfc4514_string()}) is not trusted:"
            f" it leads to no trusted certificate (trusted: {self.describe()})"
        )

    def _issuer_of(
        self, certificate: x509.Certificate, intermediates: list[x509.Certificate]
    ) -> x509.Certificate | None:
        for candidate in [*self.anchors, *intermediates]:
            if candidate.subject != certificate.issuer or candidate == certificate:
                continue
            if not _is_ca(candidate):
                continue
            try:
                certificate.verify_directly_issued_by(candidate)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return candidate
        return None


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return bool(certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _check_usage(certificate: x509.Certificate, reject: Callable[[str], SignatureRejected]) -> None:
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.digital_signature:
        raise reject(f"certificate {subject_text(certificate)} is not for digital signatures (key usage)")


def verify_items(verifier: Verifier | None, items: Sequence[items_pb2.SignedItem]) -> None:
    """What controller and director call before they accept items. None: verification is off,
    which only code can ask for (tests of the order engine); every command line gives a Verifier,
    and one without trusted certificates rejects every signed item."""
    if verifier is not None:
        verifier.verify_items(items)
