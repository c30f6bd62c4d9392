"""Archives of objects for signing outside JOC (security level high) and back (pure)."""

from __future__ import annotations

import io
import json
import tarfile
import time
import zipfile
from pathlib import Path

from gen.ostinato.common.v1 import events_pb2, items_pb2
from ostinato.cli.client import CliError
from ostinato.cli.inventory import SUFFIXES, object_type

SIGNING_README = """Objects exported by JOC for signing (security level high).

Sign each NAME.json file exactly as it is (do not change a byte), e.g. with OpenSSL:

    openssl dgst -sha256 -sign key.pem -out NAME.sig NAME.json

RSA and ECDSA keys work. Add the signer's X.509 certificate (PEM; intermediate CA certificates
may follow it) as signer.pem at the top of the archive, or as NAME.pem for one object.

Or with OpenPGP (gpg, Kleopatra): an armored detached signature beside each file,

    gpg --detach-sign --armor NAME.json        # writes NAME.json.asc (NAME.asc works too)

with no certificate: controllers, directors and subagents verify it against the OpenPGP public
keys they trust (--trust-pgp). Put the files back into an archive (zip or tar.gz) and deploy it with:

    ostinato deploy import ARCHIVE
"""
MANIFEST = "manifest.json"
SIGNER_CERTIFICATES = ("signer.pem", "signer.crt")


def suffix_of(item_type: int) -> str:
    for suffix, t in SUFFIXES.items():
        if t == item_type:
            return suffix
    raise CliError(f"no file name for objects of type {item_type}")


def archive_members(items: list[items_pb2.SignedItem]) -> dict[str, bytes]:
    """The files of an archive for signing: each object's exact JSON, a manifest, a README."""
    members: dict[str, bytes] = {"README.txt": SIGNING_README.encode()}
    manifest = []
    for item in items:
        name = item.path.lstrip("/") + suffix_of(item.type)
        members[name] = item.json.encode("utf-8")
        manifest.append({"file": name, "path": item.path, "versionId": item.version_id})
    members[MANIFEST] = json.dumps({"items": manifest}, indent=2).encode()
    return members


def write_archive(path: Path, members: dict[str, bytes]) -> None:
    """A zip, or a tar.gz when the name says so."""
    if path.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(path, "w:gz") as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = int(time.time())
                tar.addfile(info, io.BytesIO(data))
    else:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in members.items():
                z.writestr(name, data)


def read_archive(path: Path) -> dict[str, bytes]:
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                return {i.filename: z.read(i) for i in z.infolist() if not i.is_dir()}
        if tarfile.is_tarfile(path):
            members: dict[str, bytes] = {}
            with tarfile.open(path) as tar:
                for info in tar.getmembers():
                    f = tar.extractfile(info) if info.isfile() else None
                    if f is not None:
                        members[info.name.removeprefix("./")] = f.read()
            return members
    except (OSError, zipfile.BadZipFile, tarfile.TarError) as e:
        raise CliError(f"{path}: {e}") from None
    raise CliError(f"{path}: neither a zip nor a tar archive")


def _signature_bytes(data: bytes) -> bytes:
    """A signature file as openssl writes it (raw bytes), or base64 text of them."""
    import base64
    import binascii

    text = data.strip()
    if text and all(
        c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\r\n" for c in text
    ):
        try:
            return base64.b64decode(text, validate=False)
        except binascii.Error:
            pass
    return data


def signed_items(members: dict[str, bytes]) -> list[items_pb2.SignedItem]:
    """The objects of a signed archive: NAME.<type>.json with NAME.<type>.sig and the signer's
    certificate (NAME.<type>.pem, else signer.pem), or with an OpenPGP signature NAME.<type>.asc
    (or NAME.<type>.json.asc, gpg's own name). Unsigned objects are passed on as they are:
    controllers reject them, and the history says so."""
    from ostinato import signing
    from ostinato.errors import OstinatoError

    versions: dict[str, str] = {}
    if MANIFEST in members:
        try:
            versions = {e["file"]: e["versionId"] for e in json.loads(members[MANIFEST])["items"]}
        except (ValueError, KeyError, TypeError):
            raise CliError(f"{MANIFEST}: not the manifest JOC wrote") from None
    shared = next((members[n] for n in SIGNER_CERTIFICATES if n in members), None)
    items = []
    for name in sorted(members):
        found = object_type(name.rsplit("/", 1)[-1])
        if found is None:
            continue
        item_type = found[1]
        base = name[: -len(".json")]
        try:
            text = members[name].decode("utf-8")
        except UnicodeDecodeError:
            raise CliError(f"{name}: not UTF-8 text") from None
        item = items_pb2.SignedItem(
            type=item_type,  # type: ignore[arg-type]
            path="/" + name[: -len(suffix_of(item_type))],
            version_id=versions.get(name, ""),
            json=text,
        )
        openpgp = members.get(base + ".asc") or members.get(name + ".asc")
        signature = members.get(base + ".sig")
        if openpgp is not None and signature is not None:
            raise CliError(f"{base}: signed twice (.sig and .asc); keep one")
        if openpgp is not None:
            item.signature.CopyFrom(events_pb2.Signature(signature=openpgp, algorithm=signing.OPENPGP))
        elif signature is not None:
            certificate = members.get(base + ".pem") or members.get(base + ".crt") or shared
            if certificate is None:
                raise CliError(f"{base}.sig: no certificate; add signer.pem (or {base}.pem)")
            try:
                item.signature.CopyFrom(
                    signing.signature_of(_signature_bytes(signature), certificate.decode("utf-8", "replace"))
                )
            except OstinatoError as e:
                raise CliError(f"{base}: {e}") from None
        items.append(item)
    if not items:
        raise CliError(f"no objects (NAME{', NAME'.join(SUFFIXES)}) in the archive")
    return items
