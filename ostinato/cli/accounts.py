"""`ostinato account ...`: accounts, roles, tokens and signing keys."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ostinato.cli.client import CliError, connect
from ostinato.cli.render import print_table


def cmd_account_add(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    joc = connect(args)
    request = joc_pb2.PutAccountRequest(name=args.name, roles=args.role)
    if args.cert_subject is not None:
        request.cert_subject = args.cert_subject
    response = joc.call(joc.accounts.PutAccount, request)
    print(f"account {response.account.name}: {_roles_text(response.account.roles)}")
    if response.account.cert_subject:
        print(f"a client certificate with subject {response.account.cert_subject} acts as it")
    if not args.no_token:
        token = joc.call(joc.accounts.CreateToken, joc_pb2.CreateTokenRequest(account=args.name)).token
        print(f"token (shown once): {token}")
    return 0


def cmd_account_ls(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    joc = connect(args)
    response = joc.call(joc.accounts.ListAccounts, joc_pb2.ListAccountsRequest())
    rows = [("ACCOUNT", "ROLES", "TOKENS", "CLIENT CERTIFICATE", "SIGNING CERTIFICATE")]
    for a in response.accounts:
        signs_as = a.signing_certificate_subject or "-"
        rows.append((a.name, _roles_text(a.roles), str(a.token_count), a.cert_subject or "-", signs_as))
    print_table(rows)
    return 0


def cmd_account_rm(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    joc = connect(args)
    joc.call(joc.accounts.RemoveAccount, joc_pb2.RemoveAccountRequest(name=args.name))
    print(f"removed account {args.name}")
    return 0


def cmd_account_token(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    joc = connect(args)
    print(joc.call(joc.accounts.CreateToken, joc_pb2.CreateTokenRequest(account=args.name)).token)
    return 0


def cmd_account_key(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    try:
        key, cert = args.key.read_text(), args.cert.read_text()
    except OSError as e:
        raise CliError(str(e)) from None
    joc = connect(args)
    response = joc.call(
        joc.accounts.SetSigningKey,
        joc_pb2.SetSigningKeyRequest(account=args.name or "", private_key=key, certificate=cert),
    )
    print(f"account {response.account.name} signs as {response.account.signing_certificate_subject}")
    return 0


def cmd_account_whoami(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    joc = connect(args)
    response = joc.call(joc.accounts.GetCaller, joc_pb2.GetCallerRequest())
    a = response.account
    print(f"account    {a.name}")
    print(f"roles      {_roles_text(a.roles)}")
    print(f"signs as   {a.signing_certificate_subject or '-'}")
    print(f"client     {a.cert_subject or '-'}")
    tokens = "required" if response.auth_required else "optional"
    print(f"JOC        security level {response.security_level}, tokens {tokens}")
    return 0


def _roles_text(roles: Any) -> str:
    from gen.ostinato.joc.v1 import joc_pb2

    return ",".join(joc_pb2.Role.Name(r).removeprefix("ROLE_").lower() for r in roles) or "-"


def _role(text: str) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    name = "ROLE_" + text.strip().upper()
    if name not in joc_pb2.Role.keys() or name == "ROLE_UNSPECIFIED":
        raise argparse.ArgumentTypeError(f"unknown role {text!r} (viewer, editor, deployer, operator, admin)")
    return int(joc_pb2.Role.Value(name))


# `ostinato deploy WORD ...` for these words is the command deploy-WORD (deploy's own arguments are


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], joc_option: argparse.ArgumentParser
) -> None:
    account = commands.add_parser("account", help="accounts, roles, tokens and signing keys")
    account_commands = account.add_subparsers(dest="account_command", required=True, metavar="COMMAND")
    p = account_commands.add_parser("add", parents=[joc_option], help="create an account (or set its roles)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--role", action="append", type=_role, required=True, help="viewer, editor, deployer, ...")
    p.add_argument("--no-token", action="store_true", help="make no token now")
    p.add_argument(
        "--cert-subject",
        metavar="DN",
        help='a TLS client certificate with this subject acts as the account, e.g. "CN=alice,O=ops"'
        ' ("": none)',
    )
    p.set_defaults(func=cmd_account_add)
    p = account_commands.add_parser("ls", parents=[joc_option], help="list accounts")
    p.set_defaults(func=cmd_account_ls)
    p = account_commands.add_parser("rm", parents=[joc_option], help="remove an account and its tokens")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_account_rm)
    p = account_commands.add_parser("token", parents=[joc_option], help="a new token for an account")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_account_token)
    p = account_commands.add_parser("key", parents=[joc_option], help="set the key an account signs with")
    p.add_argument("name", nargs="?", metavar="NAME", help="default: your own account")
    p.add_argument("--key", type=Path, required=True, metavar="KEY.pem")
    p.add_argument("--cert", type=Path, required=True, metavar="CERT.pem")
    p.set_defaults(func=cmd_account_key)
    p = account_commands.add_parser("whoami", parents=[joc_option], help="your account and JOC's settings")
    p.set_defaults(func=cmd_account_whoami)
