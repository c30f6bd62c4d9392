"""JOC's store tests of tests/unit/test_joc_store.py, test_joc_controller_cluster.py,
test_joc_plan.py and test_joc_lease.py, again on a real PostgreSQL (a database of this session's
own; see tests/integration/postgres.py). The JOC process runs on PostgreSQL in test_deployment.py
and test_joc_instances.py (a JOC cluster)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from joc_svc.store import Store
from tests.integration.postgres import pg_server, pg_url  # noqa: F401  (fixtures)
from tests.unit.test_joc_controller_cluster import (  # noqa: F401  (collected here once more, on PostgreSQL)
    test_an_order_marked_left_that_has_events_after_all_is_no_longer_marked,
    test_resync_never_moves_the_cursor_back,
    test_resync_takes_the_snapshot_and_marks_what_left,
)
from tests.unit.test_joc_lease import (  # noqa: F401  (collected here once more, on PostgreSQL)
    test_a_clean_stop_releases_the_lease_to_anyone_at_once,
    test_a_deposed_instance_writes_nothing_and_hears_of_it,
    test_a_passive_instance_is_fenced_with_epoch_zero,
    test_a_restarted_instance_does_not_renew_the_lease_of_its_former_process,
    test_a_silent_holder_is_taken_over_with_the_next_epoch,
    test_after_the_grace_anyone_takes_a_lease_left_by_a_switchover,
    test_of_many_instances_trying_at_once_one_wins,
    test_switchover_to_a_named_instance_excludes_the_others_for_the_grace,
    test_switchover_to_any_lets_every_other_instance_but_the_resigned_one,
    test_the_first_instance_takes_the_lease_and_renews_it_others_wait,
)
from tests.unit.test_joc_plan import (  # noqa: F401  (collected here once more, on PostgreSQL)
    test_a_missed_order_the_controller_has_all_the_same_is_recorded_submitted,
    test_a_plan_is_written_once_and_submitted_by_its_records_mode,
    test_replan_replaces_rows_and_records_in_one_go,
)
from tests.unit.test_joc_store import (  # noqa: F401  (collected here once more, on PostgreSQL)
    test_a_batch_of_many_orders_applies_as_its_events_one_by_one,
    test_a_database_of_the_first_joc_is_upgraded_with_its_data,
    test_accounts,
    test_audit,
    test_audit_filters,
    test_deployments,
    test_event_projection_applies_each_event_once,
    test_event_that_does_not_apply_does_not_wedge_ingestion,
    test_folders,
    test_inventory_crud,
    test_list_orders_filters,
    test_migrations_make_the_schema_the_code_uses,
    test_move_follows_references_and_release,
    test_orders_added_together_are_recorded_in_one_go,
    test_pending_deliveries,
    test_placeholder_then_events,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def store(pg_url: str) -> Iterator[Store]:  # noqa: F811
    s = Store(pg_url)
    assert s.engine.dialect.name == "postgresql"
    yield s
    s.close()


@pytest.fixture(autouse=True)
def test_db_url(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    # The upgrade test makes its own old database at OSTINATO_TEST_DB_URL.
    monkeypatch.setenv("OSTINATO_TEST_DB_URL", pg_url)


def test_a_write_under_way_does_not_hold_up_a_take_over(store: Store) -> None:
    """On PostgreSQL the fence takes no row lock: an active instance paused in the middle of a
    write transaction (SIGSTOP) does not keep another from taking the lease over."""
    import threading
    from datetime import UTC, datetime

    from joc_svc import schema

    assert store.lease_tick("a", 0, "a:1", "", 60_000, 60_000).epoch == 1
    store.fence = ("a", 1)
    other = Store(store.url)
    taken: list[tuple[str, int]] = []

    def take_over() -> None:
        lease = other.lease_tick("b", 0, "b:1", "", 60_000, 60_000)
        taken.append((lease.holder, lease.epoch))

    try:
        with store._write() as conn:  # under way, not committed: its process is paused here
            conn.execute(
                schema.audit_log.insert().values(
                    account="a", action="x", object="y", reason="", at=datetime.now(UTC)
                )
            )
            with other.engine.begin() as ended:  # a's lease ran out meanwhile
                ended.execute(schema.joc_lease.update().values(expires_ms=0))
            contender = threading.Thread(target=take_over)
            contender.start()
            contender.join(10)
            assert taken == [("b", 2)], "the take-over waited for the paused instance's transaction"
    finally:
        contender.join()
        other.close()
