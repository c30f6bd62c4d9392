"""Accounts with tokens and roles on a JOC that requires them, and security level medium: each
account signs with its own key (made by openssl). The controller is test_joc's test-side one, which
keeps what it was given so the test can verify the signatures."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from gen.ostinato.common.v1 import items_pb2
from gen.ostinato.joc.v1 import joc_pb2, joc_pb2_grpc
from ostinato import rpc, signing
from ostinato.launch import Launched, launch
from tests.integration.certificates import Certificates
from tests.integration.pki import Pki, make_pki
from tests.integration.test_joc import HELLO, TestController, run_cli, serve_controller

pytestmark = pytest.mark.integration

WF = items_pb2.ITEM_TYPE_WORKFLOW


@pytest.fixture
async def fake(certificates: Certificates) -> AsyncIterator[tuple[TestController, rpc.Server]]:
    c = TestController()
    server = await serve_controller(c, certificates)
    yield c, server
    await server.stop(0)


def start_joc(data_dir: Path, controller: str, certificates: Certificates) -> Launched:
    args = ["--listen", "127.0.0.1:0", "--data-dir", str(data_dir), "--controller", f"main={controller}"]
    args += certificates.args("joc")
    return launch("joc", "joc_svc", [*args, "--security-level", "medium", "--require-auth"], data_dir)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def test_tokens_roles_and_signing_with_each_accounts_key(
    fake: tuple[TestController, rpc.Server], tmp_path: Path, certificates: Certificates
) -> None:
    controller, server = fake
    pki: Pki = await asyncio.to_thread(make_pki, tmp_path / "pki")
    joc = await asyncio.to_thread(start_joc, tmp_path / "joc", server.address, certificates)
    root = (tmp_path / "joc/root.token").read_text().strip()
    assert oct((tmp_path / "joc/root.token").stat().st_mode & 0o777) == "0o600"
    try:
        async with certificates.channel(joc.address) as channel:
            inventory = joc_pb2_grpc.InventoryServiceStub(channel)
            accounts = joc_pb2_grpc.AccountServiceStub(channel)
            put = joc_pb2.PutObjectRequest(path="/signed/hello", type=WF, json=HELLO)

            for metadata in ((), bearer("nonsense")):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await inventory.ListObjects(joc_pb2.ListObjectsRequest(folder="/"), metadata=metadata)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED

            # root makes alice (edits and deploys) and bob (only looks), through the CLI.
            joc_args = ["--joc", joc.address, "--token", root]
            code, out, err = await run_cli(
                "account", "add", "alice", "--role", "editor", "--role", "deployer", *joc_args
            )
            assert code == 0, err
            alice = out.split("token (shown once): ")[1].strip()
            code, out, err = await run_cli("account", "add", "bob", "--role", "viewer", *joc_args)
            bob = out.split("token (shown once): ")[1].strip()

            with pytest.raises(grpc.aio.AioRpcError) as info:
                await inventory.PutObject(put, metadata=bearer(bob))
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "account bob may not edit inventory" in (info.value.details() or "")
            await inventory.PutObject(put, metadata=bearer(alice))
            listed = await inventory.ListObjects(
                joc_pb2.ListObjectsRequest(folder="/signed"), metadata=bearer(bob)
            )
            assert [o.path for o in listed.objects] == ["/signed/hello"]
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await accounts.ListAccounts(joc_pb2.ListAccountsRequest(), metadata=bearer(alice))
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED

            # Medium: alice signs with her own key, which she has to set first.
            code, out, err = await run_cli("deploy", "-i", "/signed", "--joc", joc.address, "--token", alice)
            assert code == 1 and "account alice has no signing key" in err, out + err
            code, out, err = await run_cli(
                "account", "key", "--key", str(pki.key("rsa")), "--cert", str(pki.cert("rsa")),
                "--joc", joc.address, "--token", alice,
            )  # fmt: skip
            assert (code, out) == (0, "account alice signs as CN=rsa signer\n"), err
            code, out, err = await run_cli(
                "deploy", "-i", "/signed", "--joc", joc.address, "--token", alice, "--reason", "ticket 7"
            )
            assert code == 0 and out.startswith("deployed /signed/hello version "), out + err
            item = controller.deployed["/signed/hello"]
            assert signing.Verifier.from_files([pki.cert("rsa")]).verify(item) == "CN=rsa signer"
            with pytest.raises(signing.SignatureRejected):
                signing.Verifier.from_files([pki.cert("ecdsa")]).verify(item)

            code, out, err = await run_cli("account", "whoami", "--joc", joc.address, "--token", alice)
            assert "roles      deployer,editor" in out and "security level medium, tokens required" in out
            code, out, err = await run_cli("order", "cancel", "x", "--joc", joc.address, "--token", alice)
            assert code == 1 and "account alice may not manage orders" in err
            code, out, err = await run_cli("account", "ls", *joc_args)
            assert [line.split()[0] for line in out.splitlines()[1:]] == ["alice", "bob", "root"]

            code, out, err = await run_cli("deploy", "history", "/signed/hello", *joc_args)
            assert "alice" in out.splitlines()[1] and "deployed" in out.splitlines()[1]
            code, out, err = await run_cli("audit", "--account", "alice", *joc_args)
            assert code == 0, err
            actions = [re.split(r"\s{2,}", line)[2] for line in out.splitlines()[1:]]
            assert actions[:3] == ["deploy", "set signing key", "put"], out
            assert "ticket 7" in out.splitlines()[1]

            # A removed account's token stops working at once.
            code, out, err = await run_cli("account", "rm", "bob", *joc_args)
            assert code == 0, err
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await inventory.ListObjects(joc_pb2.ListObjectsRequest(folder="/"), metadata=bearer(bob))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        joc.stop()


async def test_a_client_certificate_names_an_account(
    fake: tuple[TestController, rpc.Server], tmp_path: Path, certificates: Certificates
) -> None:
    """With --require-auth: a certificate mapped to an account acts as it without a token; one
    mapped to none is refused; a token still names its own account."""
    _, server = fake
    joc = await asyncio.to_thread(start_joc, tmp_path / "joc", server.address, certificates)
    root = (tmp_path / "joc/root.token").read_text().strip()
    root_args = ["--joc", joc.address, "--token", root]
    subject = certificates.subject("carol")
    assert subject == "CN=carol,O=ostinato tests"
    try:
        code, out, err = await run_cli(
            "account", "add", "carol", "--role", "operator", "--no-token",
            "--cert-subject", "CN=carol, O=ostinato tests", *root_args,
        )  # fmt: skip
        assert code == 0, err
        assert f"a client certificate with subject {subject} acts as it" in out
        code, out, err = await run_cli(
            "account", "add", "dave", "--role", "viewer", "--cert-subject", subject, *root_args
        )
        assert code == 1 and f"{subject} names account carol already" in err, err
        code, out, err = await run_cli(
            "account", "add", "erin", "--role", "viewer", "--cert-subject", "carol", *root_args
        )
        assert code == 1 and "cert_subject" in err and "not a distinguished name" in err, err

        async with certificates.channel(joc.address, as_name="carol") as channel:
            accounts = joc_pb2_grpc.AccountServiceStub(channel)
            caller = await accounts.GetCaller(joc_pb2.GetCallerRequest())
            assert caller.account.name == "carol" and caller.account.cert_subject == subject
            inventory = joc_pb2_grpc.InventoryServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await inventory.PutObject(joc_pb2.PutObjectRequest(path="/c/hello", type=WF, json=HELLO))
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "account carol may not edit inventory" in (info.value.details() or "")
            # A token names its own account, whatever the certificate.
            caller = await accounts.GetCaller(joc_pb2.GetCallerRequest(), metadata=bearer(root))
            assert caller.account.name == "root"
        async with certificates.channel(joc.address, as_name="mallory") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await joc_pb2_grpc.AccountServiceStub(channel).GetCaller(joc_pb2.GetCallerRequest())
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED

        # The CLI with carol's certificate and no token: carol's command, in the audit log as hers.
        code, out, err = await run_cli(
            "order", "cancel", "o-1", "--joc", joc.address, "--reason", "carol's call",
            *certificates.cli_args("carol"),
        )  # fmt: skip
        assert "account" not in err, err
        code, out, err = await run_cli("audit", "--account", "carol", *root_args)
        assert code == 0 and "carol's call" in out, out + err
        code, out, err = await run_cli("account", "ls", *root_args)
        assert any(line.split()[0] == "carol" and subject in line for line in out.splitlines()), out
    finally:
        joc.stop()
