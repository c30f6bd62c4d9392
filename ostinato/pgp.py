"""OpenPGP signatures of inventory items, as operators make them with `gpg --detach-sign --armor`
or Kleopatra (NAME.asc beside NAME.json), verified against trusted OpenPGP public keys
(`--trust-pgp FILE`: armored or binary keys, several per file).

Verification is Sequoia-PGP's, through pysequoia: in process, without a keyring or a `gpg`
binary on the service host, and with its standard policy (weak algorithms, key binding and
revocation checked). A signature names its key by fingerprint; only a trusted key verifies it, and
a key that expired or was revoked verifies nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import pysequoia

from ostinato.errors import InvalidArgument

# Signature.algorithm of an OpenPGP signature; its bytes are the .asc file (or binary .sig).
OPENPGP = "OpenPGP"


class PgpRejected(Exception):
    """Why an OpenPGP signature does not verify (the caller names the item)."""


def _first_line(error: Exception) -> str:
    # pysequoia appends a Rust backtrace when RUST_BACKTRACE is set.
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


class PgpKeys:
    """Trusted OpenPGP public keys (certificates, in OpenPGP terms), by fingerprint."""

    def __init__(self, certificates: Iterable[pysequoia.Cert] = ()) -> None:
        self.keys = {c.fingerprint.lower(): c for c in certificates}

    @classmethod
    def from_files(cls, paths: Iterable[Path | str]) -> PgpKeys:
        found: list[pysequoia.Cert] = []
        for path in paths:
            try:
                data = Path(path).read_bytes()
            except OSError as e:
                raise InvalidArgument(f"cannot read OpenPGP keys from {path}: {e}") from None
            try:
                found += pysequoia.Cert.split_bytes(data)
            except Exception as e:  # pysequoia raises plain exceptions for data it cannot parse
                raise InvalidArgument(f"{path}: not OpenPGP public keys: {_first_line(e)}") from None
            if not found:
                raise InvalidArgument(f"{path}: no OpenPGP public key in it")
        return cls(found)

    def describe(self) -> str:
        return ", ".join(describe(c) for c in self.keys.values()) or "none"

    def verify(self, data: bytes, signature: bytes, now: datetime) -> str:
        """Checks a detached signature over `data`; returns the signer ("OpenPGP key FPR (USER)")."""
        try:
            sig = pysequoia.Sig.from_bytes(signature)
        except Exception as e:
            raise PgpRejected(f"not an OpenPGP signature: {_first_line(e)}") from None
        if not self.keys:
            raise PgpRejected("this service trusts no OpenPGP key (start it with --trust-pgp FILE)")
        issuer = (sig.issuer_fingerprint or "").lower()
        key = self.keys.get(issuer) if issuer else None
        if key is None and not issuer and sig.issuer_key_id:
            key = next((c for f, c in self.keys.items() if f.endswith(sig.issuer_key_id.lower())), None)
        if key is None:
            named = (issuer or sig.issuer_key_id or "(unnamed)").upper()
            raise PgpRejected(
                f"signed by OpenPGP key {named}, which is not trusted (trusted: {self.describe()})"
            )
        if key.is_revoked:
            raise PgpRejected(f"{describe(key)} is revoked")
        expiration = key.expiration
        if expiration is not None and now > expiration:
            raise PgpRejected(f"{describe(key)} expired on {expiration:%Y-%m-%d %H:%M:%S} UTC")
        try:
            verified = pysequoia.verify(bytes=data, store=lambda _ids: [key], signature=sig)
        except Exception:
            verified = None
        if verified is None or not verified.valid_sigs:
            raise PgpRejected(
                "OpenPGP signature does not match the JSON text: it was changed after signing, or"
                f" signed with a subkey that {describe(key)} does not hold valid for signing"
            )
        return describe(key)


def issuer_of(signature: bytes) -> str:
    """The key a signature says it was made with ("OpenPGP key FPR"), unverified; "" if none."""
    try:
        sig = pysequoia.Sig.from_bytes(signature)
    except Exception:
        return ""
    issuer = sig.issuer_fingerprint or sig.issuer_key_id
    return f"OpenPGP key {issuer.upper()}" if issuer else ""


def describe(key: pysequoia.Cert) -> str:
    users = [str(u) for u in key.user_ids]
    return f"OpenPGP key {key.fingerprint.upper()}" + (f" ({users[0]})" if users else "")
