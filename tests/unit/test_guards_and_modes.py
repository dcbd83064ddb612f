from datetime import datetime, timezone

import pytest

from airflow_provider_zeotap.destinations.permutive import PermutiveSegments, code_from_name
from airflow_provider_zeotap.destinations.personyze import PersonyzeListMembers, PersonyzeUsers
from airflow_provider_zeotap.errors import GuardError
from airflow_provider_zeotap.http.errors import ConfigurationError
from airflow_provider_zeotap.sync.guards import Guards
from airflow_provider_zeotap.sync.models import CommittedState, Plan, PlanCounts


def plan(total: int, committed: int, removed: int = 0) -> Plan:
    now = datetime.now(timezone.utc)
    base = CommittedState(snapshot_id="s", snapshot_uri="file:///x", plan_id="p0", rows=committed,
                          committed_at=now, primary_key=["id"]) if committed else None
    return Plan(sync_id="s", plan_id="p1", primary_key=["id"], columns=["id"], source_columns=["id"],
                counts=PlanCounts(total=total, removed=removed), state_uri="file:///x", snapshot_uri="a",
                changes_uri="b", invalid_uri="c", base=base, created_at=now)


def test_empty_source_with_committed_rows_is_refused_naming_the_override():
    with pytest.raises(ConfigurationError, match="allow_empty_source=True"):
        Guards().check(plan(total=0, committed=10, removed=10), removals=10)
    Guards(allow_empty_source=True).check(plan(total=0, committed=10, removed=10), removals=10)


def test_removal_ratio_applies_above_a_small_size():
    with pytest.raises(ConfigurationError, match="max_removal_ratio"):
        Guards().check(plan(total=400, committed=1000, removed=600), removals=600)
    Guards().check(plan(total=400, committed=1000, removed=500), removals=500)  # exactly half is allowed
    Guards().check(plan(total=1, committed=50, removed=49), removals=49)  # small audiences are not guarded
    Guards(max_removal_ratio=None).check(plan(total=1, committed=1000, removed=999), removals=999)


def test_the_ratio_guard_applies_from_exactly_min_rows_for_ratio_committed_rows():
    with pytest.raises(ConfigurationError, match="would remove 51 of 100 committed rows"):
        Guards().check(plan(total=49, committed=100, removed=51), removals=51)
    Guards().check(plan(total=48, committed=99, removed=51), removals=51)  # one row fewer: not guarded yet
    with pytest.raises(ConfigurationError, match="would remove 6 of 10"):
        Guards(min_rows_for_ratio=10).check(plan(total=4, committed=10, removed=6), removals=6)


def test_max_removals():
    with pytest.raises(ConfigurationError, match="max_removals=5"):
        Guards(max_removals=5).check(plan(total=10, committed=16, removed=6), removals=6)


def test_each_destination_declares_its_modes():
    assert set(PersonyzeUsers.capabilities.modes) == {"upsert", "insert", "update"}
    assert set(PersonyzeListMembers.capabilities.modes) == {"add", "remove", "mirror"}
    assert set(PermutiveSegments.capabilities.modes) == {"add", "remove", "mirror", "upsert"}
    with pytest.raises(ValueError, match="does not support sync_mode='mirror'"):
        PersonyzeUsers.capabilities.operations_for("mirror")


def test_generated_segment_codes_are_stable_distinct_and_within_the_rules():
    import re

    assert code_from_name("Sports Fans!") == code_from_name("Sports Fans!")
    assert code_from_name("Sports Fans!") != code_from_name("sports fans")
    long = code_from_name("x" * 500)
    assert len(long) <= 100
    for name in ("Sports Fans!", "Ünïcödé ☃", "", "   "):
        assert re.fullmatch(r"[A-Za-z0-9_.:-]{1,100}", code_from_name(name))


def test_a_source_of_only_invalid_rows_counts_as_empty():
    all_invalid = plan(total=50, committed=50, removed=50).model_copy(
        update={"counts": PlanCounts(total=50, invalid=50, removed=50)}
    )
    with pytest.raises(ConfigurationError, match=r"no rows \(50 with a null or duplicate key\)"):
        Guards().check(all_invalid, removals=50)


def test_each_guard_refusal_says_what_it_saw_and_which_setting_lets_it_through():
    """The exact words: a guard's message is the whole of what the user gets before anything is sent."""
    with pytest.raises(GuardError) as empty:
        Guards().check(plan(total=0, committed=10, removed=10), removals=10)
    assert str(empty.value) == (
        "Sync 's': the source returned no rows but 10 are committed; refusing to treat that as 'everything was "
        "removed'. If the source really is empty, set allow_empty_source=True.")
    all_invalid = plan(total=3, committed=10, removed=10).model_copy(
        update={"counts": PlanCounts(total=3, invalid=3, removed=10)})
    with pytest.raises(GuardError) as invalid:
        Guards().check(all_invalid, removals=10)
    assert "the source returned no rows (3 with a null or duplicate key) but 10 are committed" in str(invalid.value)
    with pytest.raises(GuardError) as many:
        Guards(max_removals=5).check(plan(total=10, committed=16, removed=6), removals=6)
    assert str(many.value) == (
        "Sync 's' would remove 6 rows, more than max_removals=5. Check the source; if the removals are intended, "
        "raise max_removals (or set it to None).")
    Guards(max_removals=6).check(plan(total=10, committed=16, removed=6), removals=6)  # at the limit: allowed
    with pytest.raises(GuardError) as ratio:
        Guards().check(plan(total=400, committed=1000, removed=600), removals=600)
    assert str(ratio.value) == (
        "Sync 's' would remove 600 of 1000 committed rows (60%), more than max_removal_ratio=0.5. Check the source; "
        "if the removals are intended, raise max_removal_ratio (or set it to None).")


def test_an_empty_source_with_nothing_committed_is_a_first_run_not_a_refusal():
    Guards().check(plan(total=0, committed=0), removals=0)
    Guards(max_removals=0, max_removal_ratio=0.0, min_rows_for_ratio=0).check(plan(total=5, committed=0), removals=0)


def test_an_empty_source_is_refused_from_a_single_committed_row():
    with pytest.raises(GuardError, match="but 1 are committed"):
        Guards().check(plan(total=0, committed=1, removed=1), removals=1)
