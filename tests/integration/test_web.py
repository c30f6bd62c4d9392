"""JOC's web view in a real browser (Debian's chromium, driven by playwright) against the real
topology: log in, watch an order run to its end without reloading, follow its log, answer a
prompt, resume a failed order, the workflows, daily plan and clusters pages and their actions,
roles, the JSON endpoints, certificates, and 10,000 orders. Every page is photographed into
build/screenshots/ (desktop 1280x800 and phone 390x844)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from playwright.async_api import Browser, Page, async_playwright, expect

from gen.ostinato.common.v1 import items_pb2
from gen.ostinato.joc.v1 import joc_pb2, joc_pb2_grpc
from ostinato import pki
from ostinato.topology import ROOT, Topology
from tests.integration.support import Joc, eventually, shell_job

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "build" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
WAIT_MS = 20_000  # what a page may take to show what the test waits for


def spki_pin(certificate: Path) -> str:
    """Chromium's pin of a certificate's key: the browser trusts JOC's own certificate, and no
    other, without the test CA in a system store."""
    cert = x509.load_pem_x509_certificate(certificate.read_bytes())
    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@dataclass
class Web:
    topology: Topology
    browser: Browser
    url: str
    token: str

    async def page(self, viewport: dict[str, int] = DESKTOP, token: str | None = None) -> Page:
        """A browser tab logged in through the login form (with the root token by default)."""
        context = await self.browser.new_context(viewport=viewport)  # type: ignore[arg-type]
        page = await context.new_page()
        page.on("dialog", lambda dialog: dialog.accept())  # "Cancel order X?" and the like
        await page.goto(self.url)
        await expect(page).to_have_url(re.compile(r"/login\?next=(/|%2F)$"))
        await page.fill("#token", token or self.token)
        await page.click("button.primary")
        await expect(page).to_have_url(f"{self.url}orders")
        return page

    async def shot(self, page: Page, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def fetch(
        self,
        path: str,
        *,
        token: str | None = None,
        body: Any = None,
        cert: bool = False,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """A script's request (urllib, JOC's CA verified); (status, JSON or text)."""
        context = ssl.create_default_context(cafile=str(self.topology.tls_dir / pki.CA_CERT))
        if cert:
            issued = self.topology.certificates()["cli"]
            context.load_cert_chain(str(issued.cert), str(issued.key))
        request = urllib.request.Request(self.url + path.lstrip("/"), headers=dict(headers or {}))
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        if body is not None:
            request.data = json.dumps(body).encode()
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, context=context, timeout=30) as answer:
                status, text = answer.status, answer.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        try:
            return status, json.loads(text)
        except json.JSONDecodeError:
            return status, text


@pytest.fixture
async def web(topology: Topology) -> AsyncIterator[Web]:
    assert topology.web_url and topology.web_url.startswith("https://127.0.0.1:")
    pin = spki_pin(topology.certificates()["joc"].cert)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", f"--ignore-certificate-errors-spki-list={pin}"]
        )
        token = (topology.data_dir / "joc" / "root.token").read_text().strip()
        yield Web(topology, browser, topology.web_url, token)
        await browser.close()


def gated_job(gate: Path, fail_without: bool = False) -> dict:
    """A job that says it waits, then waits until the test creates `gate` (or, failing_without,
    fails at once when it is missing)."""
    if fail_without:
        script = (
            'echo "checking $GATE"; test -e "$GATE" || { echo "no gate yet" >&2; exit 3; }; echo "gate found"'
        )
    else:
        script = 'echo "waiting for $GATE"; while [ ! -e "$GATE" ]; do sleep 0.05; done; echo "gate found"'
    return shell_job(script, GATE=f"'{gate}'")


async def add_order(joc: Joc, workflow: str, order_id: str) -> None:
    await joc.orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path=workflow, order_id=order_id))


async def test_an_order_runs_to_its_end_before_the_operator_s_eyes(
    web: Web, joc: Joc, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    await joc.deploy_workflow(
        "/web/gated",
        {
            "title": "waits for the test",
            "instructions": [{"execute": {"jobName": "wait"}}, {"execute": {"jobName": "after"}}],
            "jobs": {"wait": gated_job(gate), "after": shell_job("echo after >&2")},
        },
    )
    # A wrong token is refused on the login form.
    context = await web.browser.new_context(viewport=DESKTOP)  # type: ignore[arg-type]
    page = await context.new_page()
    await page.goto(web.url + "orders")
    await page.fill("#token", "ost_wrong")
    await page.click("button.primary")
    await expect(page.locator(".login .flash")).to_have_text("unknown or revoked token")
    await context.close()

    page = await web.page()
    await expect(page.locator("#account")).to_have_text("root")
    await page.evaluate("window.notReloaded = true")
    await add_order(joc, "/web/gated", "web-run")
    row = page.locator('#orders tr[data-order="web-run"]')
    await expect(row.locator(".badge").first).to_have_text("processing", timeout=WAIT_MS)
    await expect(page.locator('#counts [data-state="processing"] b')).to_have_text("1")
    assert await page.evaluate("window.notReloaded") is True  # the table came live, not by reload

    await row.locator("a").first.click()
    await expect(page).to_have_url(f"{web.url}order?id=web-run")
    await page.evaluate("window.notReloaded = true")
    await expect(page.locator("#order-state")).to_have_text("processing")
    await expect(page.locator("#log")).to_contain_text(f"waiting for {gate}", timeout=WAIT_MS)
    await expect(page.locator('g.node.current[data-key="0"]')).to_have_count(1)
    await web.shot(page, "order-running")

    gate.touch()
    await expect(page.locator("#order-state")).to_have_text("finished", timeout=WAIT_MS)
    await expect(page.locator("#log")).to_contain_text("gate found")
    await expect(page.locator("#log .err")).to_have_text("after")  # stderr in its own colour
    await expect(page.locator("#log")).to_have_class("log done")
    await expect(page.locator('g.node.current[data-key="2"]')).to_have_count(1)  # the end
    await expect(page.locator('g.node.succeeded[data-key="1"]')).to_have_count(1)
    await expect(page.locator("#history")).to_contain_text("finished")
    assert await page.evaluate("window.notReloaded") is True
    await web.shot(page, "order-finished")

    await page.goto(web.url + "orders")
    await expect(page.locator('#orders tr[data-order="web-run"] .badge').first).to_have_text("finished")
    await web.shot(page, "orders")
    for name in ("orders", "order?id=web-run"):
        phone = await web.page(PHONE)
        await phone.goto(web.url + name)
        await expect(phone.locator("main")).to_contain_text("web-run")
        await web.shot(phone, f"phone-{name.split('?')[0]}")
        width = await phone.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{name} is {width} px wide on a phone"


async def test_a_prompt_is_answered_from_the_order_page(web: Web, joc: Joc) -> None:
    await joc.deploy_workflow(
        "/web/release",
        {
            "instructions": [{"prompt": {"question": "Ship it?"}}, {"execute": {"jobName": "ship"}}],
            "jobs": {"ship": shell_job("echo shipped")},
        },
    )
    await add_order(joc, "/web/release", "web-prompt")
    page = await web.page()
    await page.goto(web.url + "order?id=web-prompt")
    await expect(page.locator("#order-state")).to_have_text("prompting", timeout=WAIT_MS)
    await expect(page.locator("#prompt")).to_contain_text("Ship it?")
    await expect(page.locator("#history")).to_contain_text("prompting: Ship it?")
    await web.shot(page, "order-prompting")
    await page.click("#answer")
    await expect(page.locator("#flash")).to_have_text("answer: accepted for web-prompt")
    await expect(page.locator("#order-state")).to_have_text("finished", timeout=WAIT_MS)
    await expect(page.locator("#log")).to_contain_text("shipped")
    await expect(page.locator("#history")).to_contain_text("prompt answered")


async def test_a_failed_order_is_seen_and_resumed(web: Web, joc: Joc, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    await joc.deploy_workflow(
        "/web/checked",
        {
            "instructions": [{"execute": {"jobName": "check"}}],
            "jobs": {"check": gated_job(gate, fail_without=True)},
        },
    )
    page = await web.page()
    await page.goto(web.url + "orders?workflow=/web/checked")
    await add_order(joc, "/web/checked", "web-fail")
    await expect(page.locator('#counts [data-state="failed"] b')).to_have_text("1", timeout=WAIT_MS)
    await page.click('#orders tr[data-order="web-fail"] a')
    await expect(page.locator("#order-state")).to_have_text("failed")
    await expect(page.locator("#outcomes")).to_contain_text("failed (return code 3)")
    await expect(page.locator('g.node.current.failed[data-key="0"]')).to_have_count(1)
    await expect(page.locator("#log .err")).to_have_text("no gate yet", timeout=WAIT_MS)
    await web.shot(page, "order-failed")

    gate.touch()
    await page.click("#resume")
    await expect(page.locator("#flash")).to_have_text("resume: accepted for web-fail")
    await expect(page.locator("#order-state")).to_have_text("finished", timeout=WAIT_MS)
    await expect(page.locator("#history")).to_contain_text("resumed")
    await expect(page.locator("#log")).to_contain_text("gate found")


async def test_workflows_daily_plan_and_clusters(web: Web, joc: Joc) -> None:
    put = joc.inventory.PutObject
    fork = {
        "title": "two branches",
        "instructions": [
            {
                "fork": {
                    "branches": [
                        {"id": "left", "block": {"instructions": [{"execute": {"jobName": "greet"}}]}},
                        {"id": "right", "block": {"instructions": [{"execute": {"jobName": "greet"}}]}},
                    ]
                }
            },
            {
                "ifElse": {
                    "condition": "$name == 'web'",
                    "then": {"instructions": [{"execute": {"jobName": "greet"}}]},
                }
            },
        ],
        "jobs": {"greet": shell_job('echo "hello $NAME"', NAME="$name")},
    }
    await put(
        joc_pb2.PutObjectRequest(
            path="/web/team/fork", type=items_pb2.ITEM_TYPE_WORKFLOW, json=json.dumps(fork)
        )
    )
    page = await web.page()
    await page.goto(web.url + "workflows")
    await page.click('#folders a:text-is("team")')
    await expect(page.locator("#objects")).to_contain_text("fork")
    await expect(page.locator("#objects")).to_contain_text("draft")
    await page.click("#deploy")  # the whole folder
    await expect(page.locator("#flash")).to_have_text("deployed 1 of 1")
    await web.shot(page, "workflows")

    await page.click('#objects a:text-is("fork")')
    await expect(page.locator("#versions")).to_contain_text("controller")
    await expect(page.locator("#deployments .badge")).to_have_text("deployed")
    await expect(page.locator('g.node.kind-fork[data-key="0"]')).to_have_count(1)
    await expect(page.locator('g.node[data-key="0/fork+left:0"]')).to_have_count(1)
    await expect(page.locator('g.node[data-key="1/then:0"]')).to_have_count(1)
    await web.shot(page, "workflow")
    await page.click("#add-order summary")
    await page.fill("textarea[name=arguments]", "name=web")
    await page.fill("input[name=order_id]", "web-fork")
    await page.click("#add-order button")
    await expect(page.locator("#flash")).to_have_text("order web-fork added")
    await page.goto(web.url + "order?id=web-fork")
    await expect(page.locator("#order-state")).to_have_text("finished", timeout=WAIT_MS)
    await expect(page.locator("#variables")).to_contain_text("web")
    await expect(page.locator("#log")).to_contain_text("hello web")
    await expect(page.locator("#history")).to_contain_text("forked into web-fork|left, web-fork|right")

    # A schedule with one start an hour from now, every day.
    start = datetime.now(UTC) + timedelta(hours=1)
    day = start.date().isoformat()
    calendar = {"type": "WORKINGDAYSCALENDAR", "includes": {"weekdays": [{"days": [1, 2, 3, 4, 5, 6, 7]}]}}
    schedule = {
        "workflowPaths": ["/web/team/fork"],
        "calendars": [
            {
                "calendarPath": "/web/plan/daily",
                "timeZone": "UTC",
                "periods": [{"singleStart": f"{start:%H:%M:%S}"}],
            }
        ],
        "orderParameterisations": [{"orderName": "web", "variables": {"name": "'web'"}}],
    }
    await put(
        joc_pb2.PutObjectRequest(
            path="/web/plan/daily", type=items_pb2.ITEM_TYPE_CALENDAR, json=json.dumps(calendar)
        )
    )
    await put(
        joc_pb2.PutObjectRequest(
            path="/web/plan/fork", type=items_pb2.ITEM_TYPE_SCHEDULE, json=json.dumps(schedule)
        )
    )
    await joc.deployment.Release(joc_pb2.ReleaseRequest(paths=["/web/plan"]))
    await page.goto(f"{web.url}plan?month={day[:7]}&date={day}")
    await expect(page.locator(f'#calendar td[data-date="{day}"] .n')).to_have_text("1")
    await expect(page.locator("#planned tbody tr")).to_have_count(1, timeout=WAIT_MS)
    # Planned, and submitted by JOC's daily plan soon (the date is within 3 days); or now:
    await page.click("#submit-date")
    await expect(page.locator("#flash")).to_have_text(re.compile(f"^submitted [01] orders of {day}$"))
    await expect(page.locator('#plan-counts [data-state="submitted"] b')).to_have_text("1", timeout=WAIT_MS)
    await web.shot(page, "plan")
    await page.click("#cancel-date")
    await expect(page.locator("#flash")).to_have_text(f"cancelled 1 orders of {day}")
    await expect(page.locator('#plan-counts [data-state="planned"] b')).to_have_text("1", timeout=WAIT_MS)
    await page.click("#submit-date")
    await expect(page.locator("#flash")).to_have_text(f"submitted 1 orders of {day}")
    await expect(page.locator('#plan-counts [data-state="submitted"] b')).to_have_text("1", timeout=WAIT_MS)

    await page.goto(web.url + "clusters")
    await expect(page.locator("#joc-nodes")).to_contain_text("active")
    await expect(page.locator("#controller-controller .badge")).to_have_text("active")
    await expect(page.locator("#agent-agent-1 .badge")).to_have_text("active")
    await expect(page.locator("#subagents-agent-1 tbody tr")).to_have_count(2)
    await expect(page.locator("#subagents-agent-1")).not_to_contain_text("not connected")
    await web.shot(page, "clusters")
    await page.goto(web.url + "orders")
    await expect(page.locator('#orders tr[data-order="web-fork"] .badge').first).to_have_text("finished")
    await web.shot(page, "orders-several")
    for name in ("workflows", "plan", "clusters"):
        phone = await web.page(PHONE)
        await phone.goto(web.url + name)
        await web.shot(phone, f"phone-{name}")
        width = await phone.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{name} is {width} px wide on a phone"


async def test_roles_json_and_certificates(web: Web, joc: Joc, topology: Topology) -> None:
    await joc.deploy_workflow(
        "/web/quick", {"instructions": [{"execute": {"jobName": "j"}}], "jobs": {"j": shell_job("true")}}
    )
    accounts = joc_pb2_grpc.AccountServiceStub(joc.channel)
    await accounts.PutAccount(joc_pb2.PutAccountRequest(name="vera", roles=[joc_pb2.ROLE_VIEWER]))
    viewer = (await accounts.CreateToken(joc_pb2.CreateTokenRequest(account="vera"))).token

    # Scripts: JSON with a bearer token; roles as on gRPC; the audit log names the account.
    status, added = web.fetch(
        "api/orders", token=web.token, body={"workflowPath": "/web/quick", "orderId": "web-json"}
    )
    assert (status, added["orderId"], added["message"]) == (200, "web-json", "order web-json added")
    await joc.wait_until_ended("web-json")
    status, listed = web.fetch("api/orders?workflow=/web/quick", token=viewer)
    assert status == 200 and [o["orderId"] for o in listed["orders"]] == ["web-json"]
    assert listed["orders"][0]["state"] == "finished" and listed["counts"] == {"finished": 1}
    status, refused = web.fetch(
        "api/orders/command", token=viewer, body={"orderIds": ["web-json"], "command": "cancel"}
    )
    assert status == 403 and refused == {
        "error": "account vera may not manage orders (CommandOrders)",
        "code": "PERMISSION_DENIED",
    }
    status, one = web.fetch("api/order?id=web-json", token=viewer)
    assert status == 200 and one["summary"]["order"]["state"] == "ORDER_STATE_FINISHED"
    assert web.fetch("api/order/log?id=nope", token=viewer)[0] == 404
    audit = joc_pb2_grpc.AuditServiceStub(joc.channel)
    entries = (await audit.ListAuditEntries(joc_pb2.ListAuditEntriesRequest(action="add order"))).entries
    assert [(e.account, e.object.split()[0]) for e in entries] == [("root", "web-json")]

    # Without a token or a certificate of the CA: log in first, even without --require-auth.
    assert web.fetch("api/orders") == (401, {"error": "log in first", "code": "UNAUTHENTICATED"})
    # The CLI's certificate of the CA names no account: it acts as root, as on gRPC.
    status, me = web.fetch("api/whoami", cert=True)
    assert (status, me["account"]["name"], me["via"]) == (200, "root", "certificate")
    # A form posted from another site is refused, the login cookie notwithstanding.
    status, refused = web.fetch(
        "api/orders/command",
        cert=True,
        body={"orderIds": ["web-json"], "command": "cancel"},
        headers={"Origin": "https://elsewhere.example"},
    )
    assert (status, refused["code"]) == (403, "PERMISSION_DENIED")

    page = await web.page(token=viewer)
    await expect(page.locator("#account")).to_have_text("vera")
    await expect(page.locator("#add-order")).to_have_count(0)
    await page.goto(web.url + "order?id=web-json")
    await expect(page.locator("#order-state")).to_have_text("finished")
    await expect(page.locator("#order-actions")).to_have_count(0)
    await page.goto(web.url + "workflows")
    await expect(page.locator("#deploy")).to_have_count(0)
    await page.click("text=log out")
    await expect(page).to_have_url(f"{web.url}login")
    await page.goto(web.url + "orders")
    await expect(page).to_have_url(re.compile(r"/login\?next=(/|%2F)orders$"))


async def test_ten_thousand_orders_page_fast(web: Web, joc: Joc) -> None:
    import asyncio

    await joc.deploy_workflow(
        "/web/held", {"instructions": [{"execute": {"jobName": "j"}}], "jobs": {"j": shell_job("true")}}
    )
    tomorrow = joc_pb2.AddOrderRequest(workflow_path="/web/held")
    tomorrow.scheduled_for.FromDatetime(datetime.now(UTC) + timedelta(days=1))
    limit = asyncio.Semaphore(100)

    async def add(n: int) -> None:
        request = joc_pb2.AddOrderRequest()
        request.CopyFrom(tomorrow)
        request.order_id = f"held-{n:05d}"
        async with limit:
            await joc.orders.AddOrder(request)

    await asyncio.gather(*(add(n) for n in range(10_000)))

    async def all_fresh() -> bool:
        status, listed = web.fetch("api/orders?state=fresh&size=25", token=web.token)
        return status == 200 and listed["total"] == 10_000

    await eventually(all_fresh, timeout=60, what="10,000 fresh orders in JOC")
    page = await web.page()
    took = []
    for number in (1, 150, 400):
        started = time.monotonic()
        await page.goto(f"{web.url}orders?state=fresh&size=25&page={number}")
        await expect(page.locator("#orders tbody tr")).to_have_count(25)
        took.append(time.monotonic() - started)
    await expect(page.locator(".pager")).to_contain_text("page 400 of 400 · 10000 orders")
    await expect(page.locator('#counts [data-state="fresh"] b')).to_have_text("10000")
    print(f"orders pages with 10,000 orders: {', '.join(f'{t * 1000:.0f} ms' for t in took)}")
    assert max(took) < 3.0, took
    await web.shot(page, "orders-10000")
