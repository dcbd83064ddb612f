"""How a sync run ends: a plain-text summary at the end of the task log, and the rejection limit.

A run whose rows were refused used to be green, and the reasons were only in a file named in one log
line. Now the log ends with a table a person can read in Airflow's log view: rows per operation and
outcome, and the first rejected rows with their key and reason. With ``max_rejected_ratio`` or
``fail_on_rejected`` the task fails when too many rows did not arrive, after the commit, so what the
destination acknowledged is kept either way.

"Rejected" here means every row that did not arrive: outcome ``rejected`` (refused for its data or the
target's state) or ``failed`` (no answer after retries). Both are in the rejected-rows file, both are
sent again by a later run, and in both cases the destination does not hold what the source says.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from airflow_provider_zeotap.errors import ConfigurationError
from airflow_provider_zeotap.sync.commit import REPORT_FIELDS
from airflow_provider_zeotap.sync.models import SyncResult

#: Rejected rows listed in the log; the rest are counted and stay in the file.
SHOWN_REJECTED_ROWS = 10
#: The table's count columns, in the order a row travels: chosen, then what became of it.
COUNT_COLUMNS = ("selected", "succeeded", "unchanged_payload", "identity_kept", "skipped", "rejected", "failed")
_KEY_WIDTH = 40
_REASON_WIDTH = 400


@dataclass(frozen=True)
class RejectionLimit:
    """When a run with rejected (or failed) rows fails the task.

    ``max_rejected_ratio``: the most (rejected + failed) / selected a run may have; None: no limit.
    ``fail_on_rejected``: fail on any rejected or failed row. Both are checked when the DAG is parsed.
    """

    max_rejected_ratio: float | None = None
    fail_on_rejected: bool = False

    def __post_init__(self) -> None:
        ratio = self.max_rejected_ratio
        if ratio is not None and (
            isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or math.isnan(ratio) or not 0 <= ratio <= 1
        ):
            raise ConfigurationError(
                f"max_rejected_ratio must be a number from 0 to 1 (the share of selected rows that may be rejected "
                f"or fail, e.g. 0.05), or None for no limit; got {ratio!r}."
            )
        if not isinstance(self.fail_on_rejected, bool):
            raise ConfigurationError(
                f"fail_on_rejected must be True or False, got {self.fail_on_rejected!r}."
            )

    def breach(self, result: SyncResult) -> str | None:
        """The message to fail the task with, or None when the run stays within the limit.

        A dry run sends nothing and commits nothing, so it never fails here; its summary shows the rows
        that would be rejected.
        """
        bad = result.rejected + result.failed
        selected = selected_rows(result)
        if result.dry_run or not bad or not selected:
            return None
        ratio = bad / selected
        broken = []
        if self.fail_on_rejected:
            broken.append("fail_on_rejected=True")
        if self.max_rejected_ratio is not None and ratio > self.max_rejected_ratio:
            broken.append(f"above max_rejected_ratio={self.max_rejected_ratio:g}")
        if not broken:
            return None
        acknowledged = result.succeeded + result.unchanged_payload + result.identity_kept
        committed = (
            f"The {acknowledged} acknowledged rows are committed (snapshot {result.committed.snapshot_id}) and are "
            "not sent again."
            if result.committed is not None
            else "Nothing was committed (this run has no state store)."
        )
        fix = "pass fail_on_rejected=False" if self.fail_on_rejected else "raise max_rejected_ratio"
        return (
            f"Sync {result.sync_id!r} to {result.destination} ({result.mode}): {bad} of {selected} rows selected to "
            f"send were rejected or failed ({result.rejected} rejected, {result.failed} failed; ratio {ratio:.3g} = "
            f"(rejected + failed) / selected), {' and '.join(broken)}. {committed} Each refused row with its reason: "
            f"{result.rejected_rows_uri}. Fix those rows in the source (they are tried again on the next run), or "
            f"{fix}."
        )


def failed_rows_warning(failed: int) -> str:
    """The task log's warning when rows had no answer after the retries (quoted by the troubleshooting pages)."""
    return f"{failed} rows failed after retries; they keep their old state and are sent again on the next run"


def selected_rows(result: SyncResult) -> int:
    """Rows this run chose to act on: every row with an outcome, whether it needed a request or not."""
    return sum(counts.selected for counts in result.operations.values())


def first_rejected_rows(path: str, limit: int = SHOWN_REJECTED_ROWS) -> list[dict[str, Any]]:
    """The first ``limit`` lines of a rejected-rows file. Read line by line: the file may be huge."""
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if len(rows) >= limit:
                break
            if line.strip():
                rows.append(json.loads(line))
    return rows


def summary_lines(
    result: SyncResult, rejected_rows_path: str | None, *, limit: int = SHOWN_REJECTED_ROWS
) -> list[str]:
    """The plain-text summary that ends a sync task's log, one line per log record.

    Each line is logged on its own so that Airflow's prefix (time, level) is the same width on every line
    and the columns stay aligned in the log view.
    """
    selected = selected_rows(result)
    bad = result.rejected + result.failed
    lines = [
        f"Summary of sync {result.sync_id!r} to {result.destination} ({result.mode}): {selected} rows selected, "
        f"{bad} rejected or failed"
    ]
    if result.dry_run:
        lines.append("Dry run: nothing was sent or committed; 'rejected' counts the rows that would be rejected")
    if result.operations:
        table = [[op, *(str(getattr(counts, column)) for column in COUNT_COLUMNS)]
                 for op, counts in result.operations.items()]
        table.append(["total", str(selected), *(str(getattr(result, column)) for column in COUNT_COLUMNS[1:])])
        lines += _table(["operation", *COUNT_COLUMNS], table, numeric=range(1, len(COUNT_COLUMNS) + 1))
    if result.not_acted_on:
        lines.append(f"{result.not_acted_on} changes this mode does not act on were committed as seen")
    if result.dry_run and result.dry_run_payloads_uri:
        lines.append(f"The first payloads, with would_reject reasons: {result.dry_run_payloads_uri}")
    if bad and rejected_rows_path and result.rejected_rows_uri:
        try:
            shown = first_rejected_rows(rejected_rows_path, limit)
        except (OSError, ValueError) as error:  # the run is done and committed; a report must not undo that
            lines.append(f"Rejected and failed rows: {bad}, in {result.rejected_rows_uri} (not readable here: {error})")
            return lines
        lines.append(
            f"Rejected and failed rows, first {len(shown)} of {bad} (all, with reasons: {result.rejected_rows_uri}):"
        )
        lines += _table(
            ["key", "change", "operation", "outcome", "reason"],
            [[_key(row), str(row.get("change")), str(row.get("operation")), str(row.get("outcome")),
              _cut(" ".join(str(row.get("reason")).split()), _REASON_WIDTH)] for row in shown],
        )
        if bad > len(shown):
            lines.append(f"... and {bad - len(shown)} more rejected or failed rows in {result.rejected_rows_uri}")
    return lines


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = ()) -> list[str]:
    """Columns padded to their widest cell, numbers right-aligned; the last column is never padded."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell if i == len(cells) - 1 and i not in numeric else cell.rjust(w) if i in numeric else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(cells, widths))
        ]
        return "  ".join(padded).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)]


def _key(row: dict[str, Any]) -> str:
    """The primary key of a report line: every field the report adds is left out (see ``write_rejected_rows``)."""
    parts = [f"{name}={json.dumps(value, ensure_ascii=False, default=str)}"
             for name, value in row.items() if name not in REPORT_FIELDS]
    return _cut(", ".join(parts), _KEY_WIDTH)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
