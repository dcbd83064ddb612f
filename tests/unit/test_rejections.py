"""Rejections you cannot miss: the Permutive segment rules, the rejection limit, the summary table."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import pytest

from airflow_provider_zeotap.destinations.permutive import (
    MAX_CODE_LENGTH,
    MAX_NAME_LENGTH,
    PermutiveSegments,
    code_from_name,
    code_problem,
    name_problem,
)
from airflow_provider_zeotap.errors import ConfigurationError
from airflow_provider_zeotap.sync.destination import OutboundRow
from airflow_provider_zeotap.sync.models import Change, CommittedState, OperationCounts, SyncResult
from airflow_provider_zeotap.sync.modes import Operation
from airflow_provider_zeotap.sync.summary import RejectionLimit, first_rejected_rows, summary_lines
from airflow_provider_zeotap.testing import permutive_batch

CODE_RULE = "codes are letters, digits, '_', '.', ':' and '-'"


# -- the Permutive segment rules --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("bad code", f"segment_code 'bad code' has a space: {CODE_RULE}"),
        ("café", "segment_code 'café' has a non-ASCII letter 'é' (U+00E9)"),
        ("a" * 500, f"segment_code '{'a' * 40}…' is 500 characters long; at most {MAX_CODE_LENGTH}"),
        ("tab\there", "has a tab"),
        ("two\nlines", "has a line break"),
        ("nbsp\u00a0x", "has a whitespace character U+00A0"),
        ("bell\x07", "has a control character U+0007"),
        ("a/b", "has the character '/'"),
        ("a b/c!d", "has a space, the character '/' and the character '!'"),
        ("a b/c!d#e", "(and 1 more characters not allowed)"),
        ("", "segment_code is empty"),
    ],
)
def test_each_broken_code_rule_is_named_in_the_reason(code, reason):
    assert reason in (code_problem(code) or "")


def test_a_code_that_is_too_long_and_has_a_bad_character_names_both():
    reason = code_problem("é" * 101) or ""
    assert "is 101 characters long; at most 100; it also has a non-ASCII letter 'é'" in reason


@pytest.mark.parametrize("code", ["seg-00001", "A.b:c_d-e", "x", "9" * MAX_CODE_LENGTH])
def test_valid_codes_pass(code):
    assert code_problem(code) is None


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        (None, "segment_name is empty and the task has no segment_name default"),
        ("", "segment_name is empty"),
        ("   ", "segment_name '   ' is only whitespace"),
        ("\t\n", "is only whitespace"),
        ("n" * 300, f"segment_name '{'n' * 40}…' is 300 characters long; at most {MAX_NAME_LENGTH}"),
    ],
)
def test_each_broken_name_rule_is_named_in_the_reason(name, reason):
    assert reason in (name_problem(name) or "")


@pytest.mark.parametrize("name", ["Sports fans", "Café lovers ☕", "x", "n" * MAX_NAME_LENGTH, " padded "])
def test_valid_names_pass(name):
    assert name_problem(name) is None


SAMPLES = ["seg-1", "A.b:c_d-e", "", " ", "bad code", "café", "a" * 100, "a" * 101, "a/b", "x\ty", "ü" * 3,
           "UPPER_lower.09", "semi;colon", "x" * 5000]


@pytest.mark.parametrize("value", SAMPLES)
def test_the_client_rules_and_the_emulator_model_agree(value):
    """Two copies of the rules, kept apart on purpose (the emulator models the API on its own): same verdicts.

    One rule is the project's alone: a name of only whitespace, which the emulator (like the API) takes.
    """
    assert (code_problem(value) is None) == permutive_batch.valid_code(value)
    if value.strip() or value == "":
        assert (name_problem(value) is None) == permutive_batch.valid_name(value)


@pytest.mark.parametrize("name", ["Sports fans", "é" * 400, "!!!", "  spaced  out  ", "a" * 300])
def test_generated_codes_keep_the_rules(name):
    assert code_problem(code_from_name(name)) is None


def _row(change: Change = Change.ADDED, **payload) -> OutboundRow:
    return OutboundRow(row_id=1, change=change, key={"code": payload.get("segment_code")}, payload=payload)


def test_validate_checks_codes_of_every_operation_and_names_only_of_what_is_sent():
    adapter = PermutiveSegments(hook=None, import_id=str(uuid.uuid4()))  # type: ignore[arg-type]
    assert "has a space" in adapter.validate(Operation.CREATE, _row(segment_code="a b", segment_name="A"))
    assert "has a space" in adapter.validate(Operation.DELETE, _row(Change.REMOVED, segment_code="a b"))
    assert adapter.validate(Operation.DELETE, _row(Change.REMOVED, segment_code="ab", segment_name=" ")) is None
    assert "only whitespace" in adapter.validate(Operation.UPDATE, _row(segment_code="ab", segment_name=" "))
    assert "segment_name is empty" in adapter.validate(Operation.CREATE, _row(segment_code="ab", segment_name=""))
    assert adapter.validate(Operation.CREATE, _row(segment_code="ab", segment_name="Fine")) is None
    # A blank code is generated from the name, within the rules.
    assert adapter.validate(Operation.CREATE, _row(segment_code=None, segment_name="Déjà vu")) is None
    defaulted = PermutiveSegments(hook=None, import_id=str(uuid.uuid4()), segment_name="Default")  # type: ignore[arg-type]
    assert defaulted.validate(Operation.CREATE, _row(segment_code="ab", segment_name="")) is None


# -- the rejection limit --------------------------------------------------------------------------------
def result(*, selected: int = 10, rejected: int = 0, failed: int = 0, dry_run: bool = False) -> SyncResult:
    succeeded = selected - rejected - failed
    committed = CommittedState(
        snapshot_id="snap-1", snapshot_uri="file:///state/snap-1.parquet", plan_id="plan-1", rows=succeeded,
        committed_at=datetime.now(timezone.utc), primary_key=["code"],
    )
    return SyncResult(
        sync_id="segments", plan_id="plan-1", destination="Permutive segments", mode="mirror", dry_run=dry_run,
        operations={"create": OperationCounts(selected=selected, succeeded=succeeded, rejected=rejected, failed=failed)},
        succeeded=succeeded, rejected=rejected, failed=failed,
        rejected_rows_uri="file:///state/rejected_rows.jsonl" if rejected or failed else None,
        committed=committed,
    )


@pytest.mark.parametrize("ratio", [-0.1, 1.5, "0.2", True, float("nan")])
def test_a_ratio_outside_0_to_1_is_refused_naming_the_setting(ratio):
    with pytest.raises(ConfigurationError, match="max_rejected_ratio must be a number from 0 to 1"):
        RejectionLimit(max_rejected_ratio=ratio)


def test_fail_on_rejected_must_be_a_boolean():
    with pytest.raises(ConfigurationError, match="fail_on_rejected must be True or False, got 'yes'"):
        RejectionLimit(fail_on_rejected="yes")  # type: ignore[arg-type]


def test_the_settings_are_checked_when_the_dag_is_parsed():
    from airflow_provider_zeotap.operators.permutive import PermutiveSyncOperator

    with pytest.raises(ConfigurationError, match="^sync: max_rejected_ratio must be"):
        PermutiveSyncOperator(task_id="sync", plan={}, sync_id="s", import_id=str(uuid.uuid4()),
                              audience_mode="mirror", max_rejected_ratio=20)
    task = PermutiveSyncOperator(task_id="ok", plan={}, sync_id="s", import_id=str(uuid.uuid4()),
                                 audience_mode="mirror", max_rejected_ratio=0.2, fail_on_rejected=True)
    assert task.rejection_limit == RejectionLimit(max_rejected_ratio=0.2, fail_on_rejected=True)
    from airflow_provider_zeotap.operators.personyze import PersonyzeSyncOperator

    with pytest.raises(ConfigurationError, match="^users: fail_on_rejected must be True or False"):
        PersonyzeSyncOperator(task_id="users", plan={}, sync_id="s", object_type="users", sync_mode="upsert",
                              fail_on_rejected="no")


def test_the_ratio_counts_rejected_and_failed_rows_over_selected_ones():
    limit = RejectionLimit(max_rejected_ratio=0.2)
    assert limit.breach(result(rejected=1)) is None
    assert limit.breach(result(rejected=2)) is None  # at the limit is within it
    message = limit.breach(result(rejected=2, failed=1)) or ""
    assert "3 of 10 rows selected to send were rejected or failed (2 rejected, 1 failed; ratio 0.3" in message
    assert "above max_rejected_ratio=0.2" in message
    assert "The 7 acknowledged rows are committed (snapshot snap-1)" in message
    assert "file:///state/rejected_rows.jsonl" in message and "raise max_rejected_ratio" in message


def test_fail_on_rejected_fails_on_one_row_and_never_on_none_or_a_dry_run():
    limit = RejectionLimit(fail_on_rejected=True)
    assert limit.breach(result()) is None
    assert limit.breach(result(rejected=3, dry_run=True)) is None
    message = limit.breach(result(failed=1)) or ""
    assert "1 of 10" in message and "fail_on_rejected=True" in message and "pass fail_on_rejected=False" in message
    assert RejectionLimit().breach(result(rejected=10)) is None  # no setting: a report, not a failure


# -- the summary table ----------------------------------------------------------------------------------
def rejected_file(tmp_path, count: int, trailing: str = "") -> str:
    path = tmp_path / "rejected_rows.jsonl"
    lines = [json.dumps({"code": f"bad {i:02d}", "change": "added", "operation": "create", "outcome": "rejected",
                         "reason": f"segment_code 'bad {i:02d}' has a space"}) for i in range(count)]
    path.write_text("\n".join(lines) + "\n" + trailing)
    return str(path)


def test_only_the_first_rows_of_the_rejected_file_are_read(tmp_path):
    path = rejected_file(tmp_path, 12, trailing="this line is not JSON and is never read\n")
    assert [row["code"] for row in first_rejected_rows(path, 10)] == [f"bad {i:02d}" for i in range(10)]


def test_the_summary_lists_counts_per_operation_and_the_first_ten_rejected_rows(tmp_path):
    path = rejected_file(tmp_path, 12)
    lines = summary_lines(result(selected=15, rejected=12), path)
    text = "\n".join(lines)
    assert lines[0] == "Summary of sync 'segments' to Permutive segments (mirror): 15 rows selected, 12 rejected or failed"
    header = lines[1].split()
    assert header == ["operation", "selected", "succeeded", "unchanged_payload", "identity_kept", "skipped",
                      "rejected", "failed"]
    assert lines[3].split() == ["create", "15", "3", "0", "0", "0", "12", "0"]
    assert lines[4].split() == ["total", "15", "3", "0", "0", "0", "12", "0"]
    assert len({len(line) for line in lines[1:5]}) == 1  # aligned columns
    listed = [line for line in lines if line.startswith('code="bad ')]
    assert [line.split('"')[1] for line in listed] == [f"bad {i:02d}" for i in range(10)]
    assert "first 10 of 12 (all, with reasons: file:///state/rejected_rows.jsonl)" in text
    assert lines[-1] == "... and 2 more rejected or failed rows in file:///state/rejected_rows.jsonl"


def test_a_clean_run_has_no_rejected_section_and_a_dry_run_says_so(tmp_path):
    clean = summary_lines(result(), None)
    assert len(clean) == 5 and "rejected or failed rows" not in "\n".join(clean)
    dry = summary_lines(result(rejected=2, dry_run=True), None)
    assert dry[1] == "Dry run: nothing was sent or committed; 'rejected' counts the rows that would be rejected"
    assert dry[4].split() == ["create", "10", "8", "0", "0", "0", "2", "0"]


def test_an_unreadable_rejected_file_still_gives_a_summary(tmp_path):
    lines = summary_lines(result(rejected=2), str(tmp_path / "gone.jsonl"))
    assert lines[-1].startswith("Rejected and failed rows: 2, in file:///state/rejected_rows.jsonl (not readable here:")
