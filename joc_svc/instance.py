"""One JOC instance of an active-passive cluster over one database (JS7's JOC cluster, failing over
in seconds rather than a minute).

The lease row in the database (joc_svc.store.lease) says which instance is active and with which
epoch. Each instance beats in a thread of its own, so that a busy event loop does not cost the
active its lease: it renews every RENEW_S while active, and a passive one tries to take the lease
over as often, which it can once the lease ended (LEASE_MS of silence by the database's clock).

While active, an instance runs what must run once (`duties`: event ingestion and release at each
controller, the orders projection, deployment delivery, the daily plan) and serves writes. Its
fence makes a deposed instance harmless even before it notices: its database writes check the
lease in their own transaction, and every command to a controller carries its epoch, which the
controller refuses once it saw a newer one. A passive instance serves reads from the database and
answers writes UNAVAILABLE, naming the active instance's address as a passive controller node
does, so that clients follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from gen.ostinato.joc.v1 import joc_pb2
from joc_svc.auth import SERVED_BY_PASSIVE
from joc_svc.store import InstanceRow, LeaseView, Store
from ostinato.errors import FailedPrecondition, NotActive, NotFound

log = logging.getLogger(__name__)

# The lease lasts LEASE_MS after its last renewal; instances beat every RENEW_S, so that an active
# one misses several beats before it loses the lease, and a passive one takes over within a beat
# of its end. A switched-over instance waits GRACE_MS before it may take the lease back unasked.
LEASE_MS = 2_000
RENEW_S = 0.4
GRACE_MS = 2_000


@dataclass(frozen=True, slots=True)
class Role:
    active: bool
    epoch: int  # the epoch this instance holds while active; 0 when passive
    active_address: str  # the active instance's gRPC address, "" while none is active
    holder: str = ""  # the active instance's id, "" while none is active

    @staticmethod
    def of(lease: LeaseView, me: str) -> Role:
        if lease.held_by(me):
            return Role(True, lease.epoch, lease.address, me)
        if lease.live:
            return Role(False, 0, lease.address, lease.holder)
        return PASSIVE


PASSIVE = Role(False, 0, "")


class Instance:
    def __init__(
        self,
        store: Store,
        instance_id: str,
        address: str = "",  # its gRPC address, set once the server listens
        web_url: str = "",
        lease_ms: int = LEASE_MS,
        renew_s: float = RENEW_S,
    ) -> None:
        self.store = store
        self.id = instance_id
        self.address = address
        self.web_url = web_url
        self.lease_ms = lease_ms
        self.renew_s = renew_s
        self.role = PASSIVE
        # The epoch of the last lease held: commands sent to controllers carry it, also after the
        # instance learnt it was deposed (a command in flight then must be refused, not unfenced).
        self.last_epoch = 0
        self._changed = asyncio.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        store.fence = (instance_id, 0)
        store.on_fenced = self.check_now

    # ---- the heartbeat thread

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._beat, name=f"joc-lease-{self.id}", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stops beating and gives the lease up, so that another instance takes over at once."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        if self.role.active:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.store.lease_release, self.id, self.role.epoch)
            log.info("JOC instance %s gave up the lease (epoch %d)", self.id, self.role.epoch)
        self._set(PASSIVE)

    async def settled(self, timeout: float) -> Role:
        """Waits (at most `timeout`) until this instance is active or another one is: not while
        the lease still runs under this instance's name for its former process (killed, started
        again), which ends within the lease time. JOC announces itself after this, so that a
        single JOC takes writes as soon as it says it listens."""
        deadline = time.monotonic() + timeout
        while True:
            self._changed.clear()
            role = self.role
            if role.active or (role.holder and role.holder != self.id) or time.monotonic() >= deadline:
                return role
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), max(deadline - time.monotonic(), 0.01))

    def check_now(self) -> None:
        """Something suggests the lease was lost (a write or a controller refused the epoch):
        beat now rather than at the next interval. Any thread."""
        self._wake.set()

    def _beat(self) -> None:
        last_ok = time.monotonic()
        failing = False
        held = 0  # the epoch of the lease this process took and holds
        while not self._stop.is_set():
            try:
                lease = self.store.lease_tick(
                    self.id, held, self.address, self.web_url, self.lease_ms, GRACE_MS
                )
                last_ok, failing = time.monotonic(), False
                role = Role.of(lease, self.id)
                held = role.epoch
            except Exception as e:  # the database is away: the lease ends by its clock meanwhile
                if not failing:
                    log.warning("JOC instance %s: the database does not answer (%s)", self.id, e)
                failing = True
                # Passive before the lease could have ended: another instance may take it then.
                role = PASSIVE if time.monotonic() - last_ok > self.lease_ms / 1000 / 2 else self.role
            self._publish(role)
            self._wake.wait(self.renew_s)
            self._wake.clear()

    def _publish(self, role: Role) -> None:
        if role.active and role.epoch != self.role.epoch:
            self.store.fence = (self.id, role.epoch)  # before anything acts on the new role
        elif not role.active:
            self.store.fence = (self.id, 0)
        if role != self.role and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the process is ending
                self._loop.call_soon_threadsafe(self._set, role)

    def _set(self, role: Role) -> None:
        if role == self.role:
            return
        before, self.role = self.role, role
        if role.active:
            self.last_epoch = role.epoch
            log.info("JOC instance %s is active (epoch %d)", self.id, role.epoch)
        elif before.active:
            log.warning(
                "JOC instance %s is passive now (epoch %d ended; active: %s)",
                self.id,
                before.epoch,
                role.active_address or "none yet",
            )
        self._changed.set()

    # ---- what the rest of JOC asks

    def admit(self, method: str) -> None:
        """The gate of JOC's services: a passive instance serves reads only."""
        if not self.role.active and method not in SERVED_BY_PASSIVE:
            raise self.not_active()

    def not_active(self) -> NotActive:
        active = self.role.active_address
        where = f"the active instance is at {active}" if active else "no instance is active now"
        return NotActive(f"JOC instance {self.id} is passive; {where}", active)

    async def run_duties(self, duties: Callable[[int], Coroutine[Any, Any, None]]) -> None:
        """Runs `duties`(epoch) whenever this instance is active, cancelling them when it stops
        being active (or its epoch changes); forever, until cancelled."""
        task: asyncio.Task[None] | None = None
        epoch = 0
        try:
            while True:
                self._changed.clear()  # first: a change while this acts is not missed
                role = self.role
                if role.active and (task is None or epoch != role.epoch):
                    await _cancel(task)
                    epoch = role.epoch
                    task = asyncio.create_task(duties(epoch), name=f"duties-{epoch}")
                elif not role.active and task is not None:
                    await _cancel(task)
                    task = None
                await self._changed.wait()
        finally:
            await _cancel(task)

    async def switchover(
        self,
        to_instance: str,
        timeout: float = 10.0,
        before: Callable[[], Awaitable[None]] = lambda: asyncio.sleep(0),
    ) -> LeaseView:
        """Hands the lease over (to `to_instance`, or any other live instance) and waits until
        another instance holds it. `before` runs once the request is found possible, while this
        instance may still write (the audit entry)."""
        if not self.role.active:
            raise self.not_active()
        live = await self.live_instances()
        others = [i for i in live if i != self.id]
        if to_instance and to_instance not in live:
            known = sorted(live)
            raise NotFound(
                f"no live JOC instance {to_instance!r} (live: {', '.join(known) or 'none'})",
                field="to_instance",
            )
        if to_instance == self.id or not others:
            raise FailedPrecondition("no other live JOC instance to take over")
        await before()
        epoch = self.role.epoch
        if not await asyncio.to_thread(self.store.lease_resign, self.id, epoch, to_instance):
            raise self.not_active()
        self.store.fence = (self.id, 0)
        self._set(PASSIVE)
        self.check_now()
        deadline = time.monotonic() + timeout
        while True:
            lease = await asyncio.to_thread(self.store.lease)
            if lease.live and lease.holder != self.id:
                return lease
            if time.monotonic() > deadline:
                raise FailedPrecondition(f"no instance took the lease over within {timeout:.0f} s")
            await asyncio.sleep(0.05)

    async def status(self) -> tuple[LeaseView, list[tuple[InstanceRow, int]]]:
        """The lease, and every instance with its role (joc_pb2.JocRole): active, passive (a
        heartbeat within the lease time) or gone."""
        lease = await asyncio.to_thread(self.store.lease)
        rows = await asyncio.to_thread(self.store.joc_instances)

        def role(row: InstanceRow) -> int:
            if lease.held_by(row.id):
                return joc_pb2.JOC_ROLE_ACTIVE
            if row.heartbeat_ms > lease.now_ms - self.lease_ms:
                return joc_pb2.JOC_ROLE_PASSIVE
            return joc_pb2.JOC_ROLE_GONE

        return lease, [(row, role(row)) for row in rows]

    async def live_instances(self) -> set[str]:
        _, rows = await self.status()
        return {row.id for row, role in rows if role != joc_pb2.JOC_ROLE_GONE}


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    elif task is not None and task.done() and not task.cancelled() and task.exception():
        log.error("JOC duties ended with an error", exc_info=task.exception())
