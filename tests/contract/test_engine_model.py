"""Model-based properties of the sync engine: random source histories, every mode x deletes.

Each Hypothesis example is a history of inserts, updates, deletes and
re-inserts, read in rounds (one run per round) with random batches and
checkpoints, under either commit policy. After every run the region's table
must equal the reference model (:func:`tests.contract.expected_rows`), the
stored state must be the last checkpoint's, and the run ledger must tell what
the run read and changed. A few fixed scripts pin what a random one may miss.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from stack.load import CommitPolicy
from tests import scripted
from tests.contract import (
    HISTORY,
    POLICIES,
    Row,
    check_history,
    elsewhere,
    examples,
    expected_rows,
    merge_path_only,
    records_read,
    run_ledger,
    stored_state,
    sync,
    table_rows,
)
from tests.scripted import ScriptedSource, checkpoint
from tests.strategies import Op, Script, records, scripts, tombstones

CASES = [
    ("incremental_deduped", "hard"),
    ("incremental_deduped", "soft"),
    ("incremental_deduped", "none"),
    ("incremental_append", "hard"),
    ("incremental_append", "soft"),
    ("incremental_append", "none"),
    ("full_refresh_overwrite", "none"),
    ("full_refresh_overwrite", "hard"),
    ("full_refresh_append", "none"),
    (HISTORY, "hard"),
    (HISTORY, "soft"),
    (HISTORY, "none"),
]

_EVERY_KIND = (
    Op("insert", 1, 1, "a"),
    Op("insert", 2, 2, None),
    Op("update", 1, 3, "a2"),
    Op("delete", 2, 4),
    Op("ghost_delete", 3, 5),
    Op("reinsert", 2, 6, "b2"),
    Op("delete", 1, 7),
)
EVERY_KIND = Script(
    (_EVERY_KIND, ()),
    (
        (
            records([_EVERY_KIND[2], _EVERY_KIND[0], _EVERY_KIND[1]]),  # key 1 twice, newest first
            checkpoint(),
            tombstones(_EVERY_KIND[3:5]),
            records(_EVERY_KIND[5:6]),
            tombstones(_EVERY_KIND[6:]),
            checkpoint(),
        ),
        (checkpoint(),),
    ),
)
"""Every kind of operation, a key twice in one batch, then a round with nothing new."""


def deleted_flags(table: list[Row]) -> list[Row]:
    """Rows with their deletion time reduced to whether they are deleted."""
    return sorted(((*row[:-1], row[-1] is not None) for row in table), key=repr)


@pytest.mark.parametrize(("mode", "deletes"), CASES)
@given(script=scripts(), policy=st.sampled_from(sorted(POLICIES)))
@example(script=EVERY_KIND, policy="every checkpoint")
@examples(3)
def test_every_run_leaves_the_table_the_model_says(
    warehouse, regions, mode: str, deletes: str, script: Script, policy: str
):
    merge_path_only(warehouse, mode)
    region = regions()
    untouched = elsewhere(warehouse, region)
    runs, entries, position = [], [], 0
    for number in range(1, len(script.rounds) + 1):
        said = script.until(number)
        before = table_rows(warehouse, region, mode)
        run_id = f"{region}-{number}"
        entry = sync(
            warehouse,
            ScriptedSource(said),
            mode=mode,
            deletes=deletes,
            region=region,
            run_id=run_id,
            policy=POLICIES[policy],
        )
        read = said[position:] if mode.startswith("incremental") else said
        runs.append((run_id, read))
        entries.append(entry)
        position = len(said)

        after = table_rows(warehouse, region, mode)
        assert deleted_flags(after) == deleted_flags(expected_rows(mode, deletes, runs))
        assert stored_state(warehouse, region) == {"position": position}
        assert entry.rows_read == records_read(read)
        # The ledger's counts add up to what changed in the table.
        if mode == HISTORY:
            check_history(warehouse, region, deletes, said)
            versions = entry.inserted + entry.updated + (entry.deleted if deletes == "soft" else 0)
            assert len(after) - len(before) == versions
        elif mode == "full_refresh_overwrite":
            assert entry.inserted == len(after)
        elif deletes != "soft":
            assert len(after) - len(before) == entry.inserted - entry.deleted
        if deletes == "none" or mode == "full_refresh_overwrite":
            assert entry.deleted == 0

    assert run_ledger(warehouse, region) == [
        {
            "run_id": run_id,
            "status": "succeeded",
            "rows_read": records_read(read),
            "inserted": entry.inserted,
            "deleted": entry.deleted,
        }
        for (run_id, read), entry in zip(runs, entries, strict=True)
    ]
    assert elsewhere(warehouse, region) == untouched, "the runs changed other regions"


@given(
    script=scripts(max_rounds=2),
    deletes=st.sampled_from(["hard", "soft", "none"]),
    policy=st.sampled_from(sorted(POLICIES)),
)
@examples(3)
def test_a_redelivered_round_changes_nothing(
    warehouse, regions, script: Script, deletes: str, policy: str
):
    """incremental_deduped: reading a round twice leaves the table as reading it once.

    With a commit per checkpoint, the second reading's early commits carry versions
    older than the rows loaded: those are quarantined, never loaded.
    """
    region, said = regions(), []
    once = dict(mode="incremental_deduped", deletes=deletes, region=region)
    for number, messages in enumerate(script.messages, 1):
        said += messages
        sync(warehouse, ScriptedSource(said), run_id=f"{number}", policy=CommitPolicy(), **once)
        loaded = table_rows(warehouse, region, "incremental_deduped")
        said += messages
        sync(
            warehouse,
            ScriptedSource(said),
            run_id=f"{number}-again",
            policy=POLICIES[policy],
            on_bad_record="fail" if policy == "coalesced" else "quarantine",
            **once,
        )
        assert table_rows(warehouse, region, "incremental_deduped") == loaded
        assert stored_state(warehouse, region) == {"position": len(said)}


# A key loaded, deleted at t=2, emitted again, deleted at t=4; committed three ways.
_TWICE_DELETED = [
    scripted.rows((1, "a", 1)),
    scripted.deletes(1, at=2),
    scripted.rows((1, "b", 3)),
    scripted.deletes(1, at=4),
]
COMMITS = {
    "one commit": [*_TWICE_DELETED, checkpoint()],
    "a commit per message": [m for message in _TWICE_DELETED for m in (message, checkpoint())],
    "row committed first": [_TWICE_DELETED[0], checkpoint(), *_TWICE_DELETED[1:], checkpoint()],
}


LANDED = {
    "incremental_deduped": [("", 1, "b", 3, 4)],
    "incremental_append": [("", 1, "a", 1, 2), ("", 1, "b", 3, 4)],
}


@pytest.mark.parametrize(
    ("mode", "landed", "commits"),
    [
        pytest.param(
            mode,
            landed,
            commits,
            id=f"{mode}-{commits}",
        )
        for mode, landed in LANDED.items()
        for commits in COMMITS
    ],
)
def test_a_soft_deleted_row_keeps_the_time_of_the_tombstone_that_deleted_it(
    warehouse, regions, mode: str, landed: list[Row], commits: str
):
    """The deletion time of a row does not depend on where the commits fell."""
    region, said = regions(), COMMITS[commits]
    sync(
        warehouse,
        ScriptedSource(said),
        mode=mode,
        deletes="soft",
        region=region,
        run_id="r",
        policy=POLICIES["every checkpoint"],
    )
    assert expected_rows(mode, "soft", [("", said)]) == landed
    assert table_rows(warehouse, region, mode) == landed


@pytest.mark.parametrize("deletes", ["hard", "none"])
def test_full_refresh_overwrite_lands_the_records_read_and_ignores_tombstones(
    warehouse, regions, deletes: str
):
    region = regions()
    said = [scripted.rows((1, "a", 1), (2, "b", 1)), scripted.deletes(1, at=2), checkpoint()]
    sync(
        warehouse,
        ScriptedSource(said),
        mode="full_refresh_overwrite",
        deletes=deletes,
        region=region,
        run_id="r",
        policy=POLICIES["coalesced"],
    )
    assert table_rows(warehouse, region, "full_refresh_overwrite") == [
        ("", 1, "a", 1, None),
        ("", 2, "b", 1, None),
    ]
