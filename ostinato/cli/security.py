"""The CLI's side of transport security: which certificate it shows JOC, and `ostinato pki`.

By default the CLI uses the certificate `ostinato up` made for it: DIR/cli.pem, DIR/cli.key and
DIR/ca.pem with DIR from --tls-dir, else $OSTINATO_TLS_DIR, else .ostinato/pki (where `ostinato up`
keeps them). --tls-cert/--tls-key/--tls-ca name other files; --insecure talks plain text to a JOC
started with --insecure.

grpc and cryptography are imported only when a command runs, so the CLI starts fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ostinato import tls

DEFAULT_TLS_DIR = Path(".ostinato") / "pki"
CLI_NAME = "cli"


class SecurityError(Exception):
    """The CLI cannot tell how to secure its connection; the message says what to give."""


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tls-dir",
        type=Path,
        metavar="DIR",
        help="where cli.pem, cli.key and ca.pem are (default: $OSTINATO_TLS_DIR, else .ostinato/pki,"
        " made by 'ostinato up')",
    )
    parser.add_argument("--tls-cert", type=Path, metavar="FILE", help="the CLI's certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, metavar="FILE", help="its private key (PEM)")
    parser.add_argument("--tls-ca", type=Path, metavar="FILE", help="the CA that issued JOC's certificate")
    parser.add_argument(
        "--insecure", action="store_true", help="plain text, to a JOC that runs with --insecure"
    )


def client_security(args: argparse.Namespace) -> tls.Security:
    from ostinato import pki, tls

    files = (args.tls_cert, args.tls_key, args.tls_ca)
    if args.insecure:
        if any(files) or args.tls_dir:
            raise SecurityError("--insecure: give no --tls-* options with it")
        print("ostinato: warning: plain text (--insecure)", file=sys.stderr)
        return tls.INSECURE
    if any(files):
        if not all(files):
            raise SecurityError("--tls-cert, --tls-key and --tls-ca go together")
        return _checked(tls.Security(*files))
    given = args.tls_dir or os.environ.get("OSTINATO_TLS_DIR")
    directory = Path(given) if given else DEFAULT_TLS_DIR
    security = tls.Security(
        pki.cert_path(directory, CLI_NAME), pki.key_path(directory, CLI_NAME), directory / pki.CA_CERT
    )
    if not all(p.exists() for p in (security.cert, security.key, security.ca) if p is not None):
        raise SecurityError(
            f"no client certificate in {directory} (cli.pem, cli.key, ca.pem): give --tls-dir DIR"
            " (or $OSTINATO_TLS_DIR), or --tls-cert/--tls-key/--tls-ca, or --insecure for a plain-text JOC"
        )
    return _checked(security)


def _checked(security: tls.Security) -> tls.Security:
    from ostinato import tls
    from ostinato.errors import OstinatoError

    try:
        tls.use(security)
    except (OstinatoError, OSError) as e:
        raise SecurityError(f"TLS: {e}") from None
    return security


# ---- ostinato pki


def add_pki_commands(commands: argparse._SubParsersAction) -> None:
    pki_parser = commands.add_parser(
        "pki",
        help="a CA and certificates for mutual TLS between hosts",
        description="Makes a CA and certificates for services on several hosts (ostinato up makes its"
        " own). Give each service its NAME.pem, NAME.key and ca.pem (--tls-cert, --tls-key, --tls-ca),"
        " and the subjects of its callers as --tls-peer.",
    )
    pki_commands = pki_parser.add_subparsers(dest="pki_command", required=True, metavar="COMMAND")
    p = pki_commands.add_parser("init", help="make a CA: DIR/ca.pem and DIR/ca.key")
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument("--name", default="ostinato CA", help="the CA's common name (default %(default)s)")
    p.add_argument(
        "--organization", default="ostinato", help="O= of the CA and its certificates (default %(default)s)"
    )
    p.set_defaults(func=cmd_pki_init)
    p = pki_commands.add_parser(
        "issue", help="a certificate and key for a service: DIR/NAME.pem, DIR/NAME.key"
    )
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument("name", metavar="NAME", help="file name, and CN unless --subject")
    p.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="HOST",
        help="a host name or address clients dial the service at (repeatable)",
    )
    p.add_argument("--subject", metavar="DN", help="the subject, e.g. 'CN=controller-a,O=ops'")
    p.add_argument("--days", type=int, help="validity in days (default 825)")
    p.set_defaults(func=cmd_pki_issue)


def cmd_pki_init(args: argparse.Namespace) -> int:
    from ostinato import pki
    from ostinato.errors import OstinatoError

    try:
        cert = pki.init(args.dir, common_name=args.name, organization=args.organization)
    except OstinatoError as e:
        raise SecurityError(str(e)) from None
    print(f"CA {pki.subject_of(cert)}: {cert} (give it to every service as --tls-ca)")
    print(f"its key {args.dir / pki.CA_KEY} signs certificates: keep it off the service hosts")
    return 0


def cmd_pki_issue(args: argparse.Namespace) -> int:
    from ostinato import pki
    from ostinato.errors import OstinatoError

    days = pki.LEAF_DAYS if args.days is None else args.days
    if days <= 0:
        raise SecurityError("--days: must be more than 0")
    try:
        issued = pki.issue(args.dir, args.name, args.san, subject=args.subject, days=days)
    except OstinatoError as e:
        raise SecurityError(str(e)) from None
    print(f"{issued.cert} and {issued.key}: subject {issued.subject}")
    print(f"its callers accept it with: --tls-peer '{issued.subject}'")
    return 0
