"""The JOC cluster's lease and fence in the store (joc_svc.store.lease): who may take the lease,
when, with which epoch, and that a deposed instance writes nothing. Each test runs on SQLite here
and on PostgreSQL in tests/integration/test_postgres.py. Time is the database's: a lease is ended
by moving its expiry into the past, never by waiting."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from joc_svc import schema
from joc_svc.store import Store
from ostinato.errors import NotActive

LEASE_MS = 60_000  # long: a test ends leases itself
GRACE_MS = 60_000


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path}/joc.db")
    yield s
    s.close()


# The epoch each instance's process took and holds, as joc_svc.instance keeps it.
HELD: dict[str, int] = {}


@pytest.fixture(autouse=True)
def processes() -> None:
    HELD.clear()


def tick(store: Store, me: str, grace_ms: int = GRACE_MS) -> tuple[str, int]:
    lease = store.lease_tick(me, HELD.get(me, 0), f"{me}:1", "", LEASE_MS, grace_ms)
    HELD[me] = lease.epoch if lease.held_by(me) else 0
    return (lease.holder if lease.live else "", lease.epoch)


def end_lease(store: Store) -> None:
    """The holder fell silent for the lease time."""
    with store.engine.begin() as conn:
        conn.execute(schema.joc_lease.update().values(expires_ms=0))


def write(store: Store) -> None:
    store.audit("test", "write", "object", "", datetime.now(UTC))


def test_the_first_instance_takes_the_lease_and_renews_it_others_wait(store: Store) -> None:
    assert tick(store, "a") == ("a", 1)
    assert tick(store, "b") == ("a", 1)
    assert tick(store, "a") == ("a", 1)  # renewed, same epoch
    assert tick(store, "b") == ("a", 1)
    assert [i.id for i in store.joc_instances()] == ["a", "b"]
    assert store.lease().address == "a:1"


def test_a_silent_holder_is_taken_over_with_the_next_epoch(store: Store) -> None:
    tick(store, "a")
    end_lease(store)
    assert tick(store, "b") == ("b", 2)
    assert tick(store, "a") == ("b", 2)  # the old holder does not get it back
    end_lease(store)
    # The holder itself, paused past its lease with nobody taking over, takes it again: new epoch.
    assert tick(store, "b") == ("b", 3)


def test_a_deposed_instance_writes_nothing_and_hears_of_it(store: Store) -> None:
    tick(store, "a")
    store.fence = ("a", 1)
    heard: list[bool] = []
    store.on_fenced = lambda: heard.append(True)
    write(store)  # while it holds the lease
    end_lease(store)
    tick(store, "b")
    with pytest.raises(NotActive) as refused:
        write(store)
    assert refused.value.active_address == "b:1"
    assert "no longer holds the lease of epoch 1" in str(refused.value)
    assert heard == [True]
    assert len(store.audit_entries(100, "", "")) == 1  # the refused write left nothing
    store.fence = ("b", 2)  # the same database as the new active sees it
    write(store)


def test_a_passive_instance_is_fenced_with_epoch_zero(store: Store) -> None:
    tick(store, "a")
    store.fence = ("b", 0)
    with pytest.raises(NotActive):
        write(store)


def test_switchover_to_a_named_instance_excludes_the_others_for_the_grace(store: Store) -> None:
    tick(store, "a")
    assert store.lease_resign("a", 1, "c")
    assert tick(store, "b") == ("", 1)  # not b: c is named
    assert tick(store, "a") == ("", 1)  # nor the one that resigned
    assert tick(store, "c") == ("c", 2)


def test_switchover_to_any_lets_every_other_instance_but_the_resigned_one(store: Store) -> None:
    tick(store, "a")
    assert not store.lease_resign("a", 7, "")  # not its epoch: nothing happens
    assert store.lease_resign("a", 1, "")
    assert tick(store, "a") == ("", 1)
    assert tick(store, "b") == ("b", 2)


def test_after_the_grace_anyone_takes_a_lease_left_by_a_switchover(store: Store) -> None:
    tick(store, "a")
    store.lease_resign("a", 1, "c")  # c never comes
    assert tick(store, "a", grace_ms=0) == ("a", 2)


def test_a_restarted_instance_does_not_renew_the_lease_of_its_former_process(store: Store) -> None:
    tick(store, "a")
    HELD.clear()  # kill -9, started again: or a second process started with the same id
    assert tick(store, "a") == ("a", 1)  # the first process's lease runs on, not renewed
    end_lease(store)
    assert tick(store, "a") == ("a", 2)  # then taken over like any other


def test_a_clean_stop_releases_the_lease_to_anyone_at_once(store: Store) -> None:
    tick(store, "a")
    store.lease_release("a", 1)
    HELD.clear()
    assert tick(store, "a") == ("a", 2)  # a restart of a single JOC need not wait


def test_of_many_instances_trying_at_once_one_wins(store: Store) -> None:
    tick(store, "first")
    end_lease(store)
    # Each contender with its own engine, as separate processes would be.
    stores = [Store(store.url) for _ in range(6)]
    start = threading.Barrier(len(stores))
    won: list[tuple[str, int]] = []

    def contend(i: int) -> None:
        start.wait()
        holder, epoch = tick(stores[i], f"i{i}")
        if holder == f"i{i}":
            won.append((holder, epoch))

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert len(won) == 1 and won[0][1] == 2, won
    assert tick(store, won[0][0]) == won[0]


def test_the_lease_row_exists_after_migration(store: Store) -> None:
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(schema.joc_lease)).all()
    assert [(r.name, r.holder, r.epoch) for r in rows] == [("active", "", 0)]


def test_a_joc_cluster_in_the_topology_config(tmp_path: Path) -> None:
    from ostinato.topology import Topology, TopologyConfig

    config_file = tmp_path / "ostinato.toml"
    config_file.write_text("[joc]\ninstances = 3\n")
    topology = Topology(tmp_path / "data", TopologyConfig.from_toml(config_file))
    assert topology.joc_names == ["joc", "joc-2", "joc-3"]
    args = topology._joc_args("joc-3")
    assert args[args.index("--instance-id") + 1] == "joc-3"
    # Without a URL the instances share the first one's SQLite file (one host only).
    assert args[args.index("--db-url") + 1] == f"sqlite:///{(tmp_path / 'data' / 'joc' / 'joc.db').resolve()}"
    assert args[args.index("--http-listen") + 1] == "127.0.0.1:0"  # the first one's port is 4443
    config_file.write_text("[joc]\ninstances = 0\n")
    with pytest.raises(ValueError, match=r"\[joc\] instances: expected a number from 1 to 9, got 0"):
        TopologyConfig.from_toml(config_file)
