"""The delivery runner every destination operator uses.

plan + mode -> the changes that mode sends -> field mapping -> batches -> the destination -> one outcome
per row -> outcomes files -> commit. Batches are cut in a deterministic order, and after each one the
next batch index is checkpointed, so a task retried after a crash resumes where it stopped: at most
one batch is sent twice, and the commit (computed from the plan's base and every outcomes file) comes
out the same.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from datetime import datetime, timezone
from typing import Any

import duckdb

from airflow_provider_zeotap.errors import ConfigurationError, FatalError
from airflow_provider_zeotap.sync.destination import (
    BatchRefused,
    DeliveryStopped,
    Destination,
    OutboundRow,
    RowOutcome,
)
from airflow_provider_zeotap.sync.commit import commit_snapshot, count_outcomes, write_rejected_rows
from airflow_provider_zeotap.sync.diff import quote_identifier
from airflow_provider_zeotap.sync.guards import Guards
from airflow_provider_zeotap.sync.mapping import apply_mapping, resolve_mapping
from airflow_provider_zeotap.sync.models import (
    CHANGE_COLUMN,
    ROW_ID_COLUMN,
    Change,
    CommittedState,
    OperationCounts,
    Outcome,
    Plan,
    SyncResult,
)
from airflow_provider_zeotap.sync.modes import OPERATION_ORDER, Operation, OperationTable
from airflow_provider_zeotap.sync.progress import Progress
from airflow_provider_zeotap.sync.remembered import fingerprint, load_remembered, write_remembered
from airflow_provider_zeotap.sync.state import CommittedPointer, KeyValueStore
from airflow_provider_zeotap.sync.storage import SyncStorage

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "delivery:"


@dataclass
class _BatchStopped(Exception):
    """``DeliveryStopped`` with the batch's local rejections and fingerprints added."""

    error: Exception
    outcomes: list[RowOutcome]
    fingerprints: dict[int, str]


@dataclass
class _Batch:
    index: int
    operation: Operation
    rows: list[dict[str, Any]]


class DeliveryRunner:
    def __init__(
        self,
        *,
        plan: Plan,
        destination: Destination,
        mode: str,
        storage: SyncStorage,
        pointer: CommittedPointer | None,
        checkpoints: KeyValueStore | None = None,
        field_mapping: Mapping[str, str] | None = None,
        guards: Guards | None = None,
        dry_run: bool = False,
        dry_run_sample: int = 20,
        batch_size: int | None = None,
        send_nulls: bool = False,
        retry_rejected: bool = False,
        progress_interval: float = 10.0,
    ) -> None:
        self.plan = plan
        self.destination = destination
        self.capabilities = destination.capabilities
        self.mode = mode
        self.table: OperationTable = self.capabilities.operations_for(mode)
        self.storage = storage
        self.pointer = pointer
        self.checkpoints = checkpoints
        self.guards = guards or Guards()
        self.dry_run = dry_run
        self.dry_run_sample = dry_run_sample
        self.batch_size = _batch_size(batch_size, self.capabilities.batch_size, self.capabilities.max_batch_size)
        self.send_nulls = send_nulls
        self.retry_rejected = retry_rejected
        self.progress_interval = progress_interval
        self.mapping = resolve_mapping(
            field_mapping,
            source_columns=plan.source_columns,
            default_fields=self.capabilities.default_fields,
            required_fields=self.capabilities.required_fields,
            destination=self.capabilities.name,
            accepts_any_field=self.capabilities.accepts_any_field,
        )
        self._check_identity()

    def _check_identity(self) -> None:
        """A mode that removes must be keyed by what identifies a member (see ``identity_fields``)."""
        if not any(op.removes for op in self.table.values()):
            return
        field = next((f for f in self.capabilities.identity_fields if f in self.mapping), None)
        if field is not None and self.mapping[field] not in self.plan.primary_key:
            raise ConfigurationError(
                f"{self.capabilities.mode_argument}={self.mode!r} removes members, so the column mapped to {field!r} "
                f"({self.mapping[field]!r}) must be the diff's primary key (now {self.plan.primary_key}): when it "
                "changes under another key, the old member could never be removed. Set "
                f"primary_key={self.mapping[field]!r} on the diff task."
            )

    # -- the run -----------------------------------------------------------------------------------
    def run(self) -> SyncResult:
        started = time.monotonic()
        counts = self.plan.counts.model_dump()
        removals = sum(counts[change.value] for change, op in self.table.items() if op.removes)
        selected = sum(counts[change.value] for change in self.table)
        not_acted_on = sum(counts[c.value] for c in Change if c not in self.table)
        self.guards.check(self.plan, removals)
        log.info(
            "%s %s=%s: %d rows to send (%s); %d changes this mode does not act on are committed as seen%s",
            self.capabilities.name,
            self.capabilities.mode_argument,
            self.mode,
            selected,
            ", ".join(f"{counts[c.value]} {c.value} as {op.value}" for c, op in self.table.items()),
            not_acted_on,
            " (dry run: nothing is sent or committed)" if self.dry_run else "",
        )
        if selected:
            self.destination.prepare(dry_run=self.dry_run)
        if self.dry_run:
            return self._dry_run(selected, not_acted_on, started)

        resume_from = self._checkpoint()
        if resume_from:
            log.info("Resuming plan %s after batch %d (checkpoint of an earlier try)", self.plan.plan_id, resume_from)
        batches = 0
        with Progress(self.capabilities.name, selected, self.progress_interval) as progress:
            try:
                for batch in self._batches():
                    batches = batch.index + 1
                    if batch.index < resume_from:
                        progress.done += len(batch.rows)  # delivered by an earlier try
                        continue
                    try:
                        outcomes, fingerprints = self._deliver_batch(batch)
                    except _BatchStopped as stopped:
                        self._write_outcomes(batch, stopped.outcomes, stopped.fingerprints)
                        raise stopped.error from None
                    self._write_outcomes(batch, outcomes, fingerprints)
                    self._save_checkpoint(batch.index + 1)
                    progress.add(outcomes)
            except BaseException:
                self._commit_after_failure(batches)
                raise
            progress.log()
        paths = self._outcome_paths(batches)
        committed = self._commit(paths)
        return self._result(paths, batches, resume_from, not_acted_on, committed, started)

    # -- batches -----------------------------------------------------------------------------------
    def _batches(self) -> Iterator[_Batch]:
        """Selected changes, removals first, each operation in row-id order, cut every ``batch_size`` rows."""
        path = self.storage.fetch(self.plan.changes_uri)
        index = 0
        with duckdb.connect() as con:
            for operation in OPERATION_ORDER:
                kinds = [change.value for change, op in self.table.items() if op == operation]
                if not kinds:
                    continue
                placeholders = ", ".join("?" * len(kinds))
                reader = con.sql(
                    f"SELECT * FROM read_parquet(?) WHERE {quote_identifier(CHANGE_COLUMN)} IN ({placeholders}) "
                    f"ORDER BY {quote_identifier(ROW_ID_COLUMN)}",
                    params=[path, *kinds],
                ).to_arrow_reader(self.batch_size)
                pending: list[dict[str, Any]] = []
                for record_batch in reader:
                    pending.extend(record_batch.to_pylist())
                    while len(pending) >= self.batch_size:
                        yield _Batch(index, operation, pending[: self.batch_size])
                        pending = pending[self.batch_size :]
                        index += 1
                if pending:
                    yield _Batch(index, operation, pending)
                    index += 1

    def _outbound(self, row: dict[str, Any]) -> OutboundRow:
        return OutboundRow(
            row_id=int(row[ROW_ID_COLUMN]),
            change=Change(row[CHANGE_COLUMN]),
            key={k: row.get(k) for k in self.plan.primary_key},
            payload=apply_mapping(self.mapping, row, send_nulls=self.send_nulls),
        )

    def _rejection(self, operation: Operation, row: OutboundRow) -> str | None:
        missing = [f for f in self.capabilities.required_fields if row.payload.get(f) in (None, "")]
        if missing:
            sources = ", ".join(f"{f} <- {self.mapping[f]}" for f in missing)
            return f"missing required field(s) {missing} (mapped from: {sources})"
        return self.destination.validate(operation, row)

    def _deliver_batch(self, batch: _Batch) -> tuple[list[RowOutcome], dict[int, str]]:
        """Outcomes of one batch, and the fingerprint of every row in it (for remembering rejections)."""
        outcomes: list[RowOutcome] = []
        sendable: list[OutboundRow] = []
        fingerprints: dict[int, str] = {}
        for raw in batch.rows:
            row = self._outbound(raw)
            fingerprints[row.row_id] = key = fingerprint(batch.operation, row)
            reason = self._rejection(batch.operation, row)
            known = None if self.retry_rejected else self._rejections.get(key)
            if reason:  # checked every run (it costs no request), so a fix in the settings takes effect
                outcomes.append(RowOutcome.rejected(row, reason))
            elif known:
                outcomes.append(RowOutcome.rejected(row, known["reason"], permanent=True))
            else:
                sendable.append(row)
        try:
            return outcomes + self._deliver(batch.operation, sendable), fingerprints
        except DeliveryStopped as stopped:
            raise _BatchStopped(stopped.error, outcomes + stopped.outcomes, fingerprints) from None

    @cached_property
    def _rejections(self) -> dict[str, dict[str, Any]]:
        """Rows an earlier run found invalid, by fingerprint: not sent again until they change."""
        base = self.plan.base
        if base is None or not base.rejected_uri or not self.storage.exists(base.rejected_uri):
            return {}
        return load_remembered(self.storage.fetch(base.rejected_uri))

    def _deliver(self, operation: Operation, rows: list[OutboundRow]) -> list[RowOutcome]:
        """Send; when the API refuses a whole batch, halve it until the rows at fault stand alone."""
        if not rows:
            return []
        try:
            outcomes = self.destination.send(operation, rows)
        except BatchRefused as refused:
            if len(rows) == 1:
                return [RowOutcome.rejected(rows[0], refused.reason, permanent=refused.permanent)]
            log.info(
                "%s refused a batch of %d %s operations (%s); splitting it to isolate the rows at fault",
                self.capabilities.name,
                len(rows),
                operation.value,
                refused.reason,
            )
            middle = len(rows) // 2
            return self._deliver(operation, rows[:middle]) + self._deliver(operation, rows[middle:])
        return _complete(rows, outcomes)

    # -- files, checkpoints, commit ----------------------------------------------------------------
    def _outcomes_uri(self, index: int) -> str:
        return self.storage.plan_uri(self.plan.plan_id, "delivery", f"outcomes-{index:06d}.jsonl")

    def _write_outcomes(self, batch: _Batch, outcomes: Sequence[RowOutcome], fingerprints: dict[int, str]) -> None:
        uri = self._outcomes_uri(batch.index)
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with open(self.storage.to_local(uri), "w", encoding="utf-8") as handle:
            for outcome in outcomes:
                record: dict[str, Any] = {
                    "row_id": outcome.row_id,
                    "outcome": outcome.outcome.value,
                    "operation": batch.operation.value,
                    "reason": outcome.reason,
                }
                if outcome.permanent:
                    fingerprint = fingerprints[outcome.row_id]
                    record["fingerprint"] = fingerprint
                    record["since"] = self._rejections.get(fingerprint, {}).get("since", now)
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.storage.publish(uri)

    @property
    def _checkpoint_key(self) -> str:
        return CHECKPOINT_PREFIX + self.plan.plan_id

    def _checkpoint(self) -> int:
        if self.checkpoints is None:
            return 0
        value = self.checkpoints.get(self._checkpoint_key) or {}
        return int(value.get("next_batch", 0)) if isinstance(value, dict) else 0

    def _save_checkpoint(self, next_batch: int) -> None:
        if self.checkpoints is not None:
            self.checkpoints.set(self._checkpoint_key, {"next_batch": next_batch, "plan_id": self.plan.plan_id})

    def _outcome_paths(self, batches: int) -> list[str]:
        uris = [self._outcomes_uri(i) for i in range(batches)]
        return [self.storage.fetch(uri) for uri in uris if self.storage.exists(uri)]

    def _commit(self, outcome_paths: list[str]) -> CommittedState | None:
        """Move the baseline forward by acknowledged rows (and rows this mode does not act on)."""
        plan = self.plan
        if self.pointer is None:
            return None
        if not (plan.counts.added or plan.counts.changed or plan.counts.removed):
            log.info("Nothing changed since the committed snapshot; the baseline stays as it is")
            return plan.base
        snapshot_id = f"{plan.plan_id}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}"
        uri = self.storage.committed_uri(snapshot_id)
        rows = commit_snapshot(
            base_snapshot=self.storage.fetch(plan.base.snapshot_uri) if plan.base else None,
            changes_path=self.storage.fetch(plan.changes_uri),
            outcome_paths=outcome_paths,
            acted_on={change.value for change in self.table},
            primary_key=plan.primary_key,
            out_path=self.storage.to_local(uri),
        )
        self.storage.publish(uri)
        state = CommittedState(
            snapshot_id=snapshot_id,
            snapshot_uri=uri,
            plan_id=plan.plan_id,
            rows=rows,
            committed_at=datetime.now(timezone.utc),
            primary_key=plan.primary_key,
            rejected_uri=self._write_rejections(snapshot_id, outcome_paths),
        )
        self.pointer.compare_and_set(plan, state)
        log.info("Committed snapshot %s of sync %r: %d rows", snapshot_id, plan.sync_id, rows)
        keep = {snapshot_id} | ({plan.base.snapshot_id} if plan.base else set())
        if removed := self.storage.prune(keep_plan=plan.plan_id, keep_snapshots=keep):
            log.info("Removed %d old plan folders and snapshots of sync %r", len(removed), plan.sync_id)
        return state

    def _write_rejections(self, snapshot_id: str, paths: list[str]) -> str | None:
        """Remember this run's invalid rows beside the committed snapshot (see ``_rejections``)."""
        if not paths:
            return None
        uri = self.storage.committed_uri(snapshot_id).removesuffix(".parquet") + ".rejected.jsonl"
        write_remembered(paths, self.storage.to_local(uri))
        self.storage.publish(uri)
        return uri

    def _commit_after_failure(self, batches: int) -> None:
        """Keep what was acknowledged before the stop, so a later run does not send it again.

        The checkpoint stays, so a retry of this task resumes at the unfinished batch and commits again.
        """
        log.error("Delivery stopped during batch %d; committing the rows acknowledged before it", batches)
        try:
            self._commit(self._outcome_paths(batches))
        except Exception:  # the original error matters more; this one is logged
            log.exception("Could not commit the acknowledged rows after the failure")

    # -- results -----------------------------------------------------------------------------------
    def _result(
        self,
        paths: list[str],
        batches: int,
        resumed_from: int,
        not_acted_on: int,
        committed: CommittedState | None,
        started: float,
    ) -> SyncResult:
        per_operation = count_outcomes(paths) if paths else {}
        operations = {
            op: OperationCounts(
                selected=sum(by_outcome.values()),
                succeeded=by_outcome.get(Outcome.SUCCEEDED.value, 0),
                rejected=by_outcome.get(Outcome.REJECTED.value, 0),
                failed=by_outcome.get(Outcome.FAILED.value, 0),
                skipped=by_outcome.get(Outcome.SKIPPED.value, 0),
            )
            for op, by_outcome in per_operation.items()
        }
        rejected_uri = self.storage.plan_uri(self.plan.plan_id, "rejected_rows.jsonl")
        bad = (
            write_rejected_rows(
                changes_path=self.storage.fetch(self.plan.changes_uri),
                outcome_paths=paths,
                primary_key=self.plan.primary_key,
                out_path=self.storage.to_local(rejected_uri),
            )
            if paths
            else 0
        )
        if bad:
            self.storage.publish(rejected_uri)
        result = SyncResult(
            sync_id=self.plan.sync_id,
            plan_id=self.plan.plan_id,
            destination=self.capabilities.name,
            mode=self.mode,
            operations=operations,
            succeeded=sum(c.succeeded for c in operations.values()),
            rejected=sum(c.rejected for c in operations.values()),
            failed=sum(c.failed for c in operations.values()),
            skipped=sum(c.skipped for c in operations.values()),
            not_acted_on=not_acted_on,
            rejected_rows_uri=rejected_uri if bad else None,
            committed=committed,
            batches=batches,
            resumed_from_batch=resumed_from,
            duration_seconds=round(time.monotonic() - started, 3),
        )
        log.info(
            "%s done: %d succeeded, %d rejected, %d failed, %d left alone in %d batches (%.1f s)%s",
            self.capabilities.name,
            result.succeeded,
            result.rejected,
            result.failed,
            result.skipped,
            batches,
            result.duration_seconds,
            f"; rejected and failed rows with reasons: {rejected_uri}" if bad else "",
        )
        return result

    def _dry_run(self, selected: int, not_acted_on: int, started: float) -> SyncResult:
        """Everything up to the wire: mapping, validation, batching. The first payloads go to a file."""
        uri = self.storage.plan_uri(self.plan.plan_id, "dry_run_payloads.jsonl")
        per_operation: dict[str, dict[str, int]] = {}
        written = 0
        batches = 0
        with open(self.storage.to_local(uri), "w", encoding="utf-8") as handle:
            for batch in self._batches():
                batches += 1
                counts = per_operation.setdefault(batch.operation.value, {"selected": 0, "rejected": 0})
                for raw in batch.rows:
                    row = self._outbound(raw)
                    counts["selected"] += 1
                    reason = self._rejection(batch.operation, row)
                    counts["rejected"] += bool(reason)
                    if written < self.dry_run_sample:
                        record = {"operation": batch.operation.value, "change": row.change.value,
                                  "key": row.key, "payload": row.payload, "would_reject": reason}
                        handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
                        written += 1
        self.storage.publish(uri)
        log.info("Dry run: %d rows in %d batches would be sent; first %d payloads in %s", selected, batches, written, uri)
        return SyncResult(
            sync_id=self.plan.sync_id,
            plan_id=self.plan.plan_id,
            destination=self.capabilities.name,
            mode=self.mode,
            dry_run=True,
            operations={op: OperationCounts(selected=c["selected"], rejected=c["rejected"]) for op, c in per_operation.items()},
            rejected=sum(c["rejected"] for c in per_operation.values()),
            not_acted_on=not_acted_on,
            dry_run_payloads_uri=uri,
            committed=self.plan.base,
            batches=batches,
            duration_seconds=round(time.monotonic() - started, 3),
        )


def _complete(rows: Sequence[OutboundRow], outcomes: Sequence[RowOutcome]) -> list[RowOutcome]:
    """Every row gets exactly one outcome; a row the destination said nothing about did not land."""
    by_id = {outcome.row_id: outcome for outcome in outcomes}
    return [by_id.get(row.row_id) or RowOutcome.failed(row, "the destination returned no outcome for this row") for row in rows]


def _batch_size(requested: int | None, default: int, maximum: int) -> int:
    size = default if requested is None else requested
    if not isinstance(size, int) or size < 1 or size > maximum:
        raise ConfigurationError(f"batch_size must be an integer from 1 to {maximum} for this destination, got {requested!r}.")
    return size
