"""Identities as operators write them (JS7's distinguished-names), as certificates carry them, and
the local CA that `ostinato up` and `ostinato pki` make."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from ostinato import pki, tls
from ostinato.errors import FailedPrecondition, InvalidArgument


def test_distinguished_names_are_compared_in_one_form() -> None:
    # As JS7's private.conf writes them: spaces after the commas.
    js7 = "CN=JS7 Example Primary Controller, DC=docker-example, DC=js7, DC=sh"
    assert tls.normalize(js7) == "CN=JS7 Example Primary Controller,DC=docker-example,DC=js7,DC=sh"
    assert tls.normalize("CN = a , O = b") == "CN=a,O=b"
    assert tls.normalize(r"CN=Smith\, John,O=ops") == r"CN=Smith\, John,O=ops"
    assert tls.normalize("Director-A.Example.com") == "director-a.example.com"  # a SAN
    for bad in ("CN=", "=x", "   "):
        with pytest.raises(InvalidArgument) as info:
            tls.normalize(bad)
        assert info.value.field == "--tls-peer"


def test_a_peer_is_accepted_by_its_subject_or_a_subject_alternative_name(tmp_path: Path) -> None:
    pki.init(tmp_path, organization="ops")
    issued = pki.issue(tmp_path, "director-a", ["director-a.example.com", "10.0.0.7"])
    identity = tls.identity_of(issued.cert.read_bytes())
    assert identity.subject == issued.subject == "CN=director-a,O=ops"
    assert set(identity.names) == {"director-a", "director-a.example.com", "10.0.0.7"}
    assert str(identity) == "CN=director-a,O=ops (SAN director-a, director-a.example.com, 10.0.0.7)"

    assert tls.Peers(["CN=director-a, O=ops"]).accepts(identity)
    assert tls.Peers(["DIRECTOR-A.example.com"]).accepts(identity)
    assert tls.Peers(["10.0.0.7"]).accepts(identity)
    assert not tls.Peers(["CN=director-a,O=other"]).accepts(identity)
    assert not tls.Peers(["CN=director-a"]).accepts(identity)  # the whole DN, not a part
    assert tls.Peers([]).accepts(identity)  # no list: any certificate of the CA


def test_the_local_ca_issues_certificates_for_servers_and_clients(tmp_path: Path) -> None:
    ca = pki.init(tmp_path, common_name="my CA", organization="acme")
    with pytest.raises(FailedPrecondition, match="holds a CA already"):
        pki.init(tmp_path)
    issued = pki.issue(tmp_path, "joc", ["localhost", "127.0.0.1"])
    certificate = x509.load_pem_x509_certificate(issued.cert.read_bytes())
    authority = x509.load_pem_x509_certificate(ca.read_bytes())
    certificate.verify_directly_issued_by(authority)
    usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert oct(issued.key.stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / pki.CA_KEY).stat().st_mode & 0o777) == "0o600"
    assert pki.issue(tmp_path, "x", [], subject="CN=x, OU=batch, O=acme").subject == "CN=x,OU=batch,O=acme"
    for name in ("", "../x", "ca"):
        with pytest.raises(InvalidArgument):
            pki.issue(tmp_path, name, [])
    with pytest.raises(FailedPrecondition, match="ostinato pki init"):
        pki.issue(tmp_path / "empty", "joc", [])

    # What `ostinato up` does at each start: make what is missing, keep what is there.
    first = pki.ensure(tmp_path / "local", ["joc", "cli"], ["127.0.0.1"])
    again = pki.ensure(tmp_path / "local", ["joc", "cli", "subagent-1"], ["127.0.0.1"])
    assert again["joc"].cert.read_bytes() == first["joc"].cert.read_bytes()
    assert again["subagent-1"].subject == "CN=subagent-1,O=ostinato local"


def parse(argv: list[str], peers_required: bool = True) -> tls.Security:
    parser = argparse.ArgumentParser()
    tls.add_arguments(parser, peers="its callers")
    return tls.from_args(parser.parse_args(argv), parser, peers_required)


def test_the_flags_say_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pki.init(tmp_path)
    issued = pki.issue(tmp_path, "s", ["127.0.0.1"])
    other = pki.issue(tmp_path, "t", ["127.0.0.1"])
    files = [
        "--tls-cert",
        str(issued.cert),
        "--tls-key",
        str(issued.key),
        "--tls-ca",
        str(tmp_path / "ca.pem"),
    ]
    assert parse([*files, "--tls-peer", "CN=d"]).peers == ("CN=d",)
    assert parse(["--insecure"]).insecure
    for argv, message in (
        ([], "--tls-cert, --tls-key and --tls-ca are required"),
        (files, "--tls-peer: give the identities"),
        (["--insecure", *files], "--insecure: give no --tls-* options"),
        ([*files[:3], str(other.key), *files[4:], "--tls-peer", "CN=d"], "is not the key of"),
        ([*files, "--tls-peer", "CN="], "not a distinguished name"),
        ([*files[:1], str(tmp_path / "missing.pem"), *files[2:], "--tls-peer", "CN=d"], "No such file"),
    ):
        with pytest.raises(SystemExit):
            parse(argv)
        assert message in capsys.readouterr().err, argv
