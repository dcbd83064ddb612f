"""The delivery runner every destination operator uses.

plan + mode -> the changes that mode sends -> field mapping -> identity checks -> batches -> ownership
records -> the destination -> one outcome per row -> outcomes files -> commit. Batches are cut in a
deterministic order, and each acknowledged batch is checkpointed, so a task retried after a crash
resumes where it stopped: only the batches in flight at the crash are sent twice (one, for a destination
that sends one batch at a time; only their rows without an answer, for one that reports answers row by row,
see ``answers.py``), and the commit (computed from the plan's base and every outcomes file) comes out the same.

The delivery runs on one event loop. An async destination (``asend``) has ``batches_in_flight``
batches going at once, so its requests flow across batch boundaries with no drain at each batch end;
a sync one is called directly, one batch at a time.

Before anything is sent, three checks stand between a plan and the destination: the baseline must
have been delivered to this task's target (the binding), the plan's base must still be the committed
state (a stale plan sends nothing), and no other task may have taken the plan.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import itertools
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from functools import cached_property
from typing import Any

import duckdb
import pyarrow.parquet as pq

from airflow_provider_zeotap.errors import BindingError, ConfigurationError
from airflow_provider_zeotap.sync.answers import AnswerJournal
from airflow_provider_zeotap.sync.commit import (
    commit_snapshot,
    count_outcomes,
    write_outcome_file,
    write_rejected_rows,
)
from airflow_provider_zeotap.sync.destination import (
    BatchRefused,
    DeliveryStopped,
    Destination,
    OutboundRow,
    RowOutcome,
)
from airflow_provider_zeotap.sync.diff import (
    DELIVERY_TYPES,
    parquet_relation,
    quote_identifier,
    quote_literal,
    scratch_duckdb,
)
from airflow_provider_zeotap.sync.guards import Guards
from airflow_provider_zeotap.sync.identity import IdentityCheck, identity_verdicts
from airflow_provider_zeotap.sync.mapping import MappedRow, apply_mapping, resolve_mapping
from airflow_provider_zeotap.sync.models import (
    CHANGE_COLUMN,
    PAYLOAD_FIELDS_COLUMN,
    PAYLOAD_HASH_COLUMN,
    ROW_ID_COLUMN,
    WAREHOUSE_MARKER_SUFFIX,
    Binding,
    Change,
    CommittedState,
    OperationCounts,
    Outcome,
    Plan,
    SyncResult,
)
from airflow_provider_zeotap.sync.modes import OPERATION_ORDER, Operation, OperationTable
from airflow_provider_zeotap.sync.ownership import OwnershipLog
from airflow_provider_zeotap.sync.progress import Progress
from airflow_provider_zeotap.sync.remembered import fingerprint, load_remembered, write_remembered
from airflow_provider_zeotap.sync.state import CommittedPointer, KeyValueStore
from airflow_provider_zeotap.sync.storage import SyncStorage, written_whole
from airflow_provider_zeotap.sync.sources import DbApiHookLike
from airflow_provider_zeotap.sync.summary import summary_lines
from airflow_provider_zeotap.sync.warehouse.store import WarehouseState
from airflow_provider_zeotap.sync.warehouse.store import marker as warehouse_marker

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "delivery:"
#: The delivery waits on APIs; its DuckDB work is bookkeeping over a run's changes and outcomes (the
#: identity check, the commit, the reports). A small budget, spilled past, keeps a worker's footprint
#: the same whether a run delivers a hundred thousand rows or a million (see the delivery benchmark).
DELIVERY_MEMORY_LIMIT = "64MB"
#: Ownership records of runs without a binding (the engine used outside Airflow, in tests).
_UNBOUND_TARGET = "unbound"


def binding_for(
    destination: Destination, mode: str, *, dag_id: str, task_id: str, operator: str, conn_id: str
) -> Binding:
    """The binding of a sync task: who delivers, through which connection, to which target, in which family."""
    table = destination.capabilities.operations_for(mode)
    added = table.get(Change.ADDED)
    return Binding(
        dag_id=dag_id,
        task_id=task_id,
        operator=operator,
        conn_id=conn_id,
        destination=destination.capabilities.name,
        target={str(k): str(v) for k, v in destination.target().items()},
        mode_family="removes" if added is not None and added.removes else "delivers",
    )


def payload_fingerprint(payload: Mapping[str, Any]) -> tuple[str, list[str]]:
    """What a payload gives the destination: a hash of its values, and the fields that have one.

    Nulls are left out of both: a field left out and a field cleared leave the destination alike, so a
    payload that only differs in them is the same payload.
    """
    held = {k: v for k, v in payload.items() if v is not None}
    content = json.dumps(held, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(content.encode("utf-8")).hexdigest()[:32], sorted(held)


@contextmanager
def _collector_frozen() -> Iterator[None]:
    """Keep the objects that exist before the delivery out of the garbage collector's full passes during it.

    An Airflow task process holds a few hundred thousand long-lived objects (its imports), and a full pass
    over them holds the event loop for about 0.2 s: a 20,000-row Zeotap delivery ran about 40 such passes
    and lost about 2% of its paced rate to them. Frozen, a pass looks at the delivery's own objects only.
    Unfrozen after, unless the process had frozen objects of its own before (a forked worker): those stay
    as they were.
    """
    already_frozen = gc.get_freeze_count() > 0
    gc.freeze()
    try:
        yield
    finally:
        if not already_frozen:
            gc.unfreeze()


@dataclass
class _BatchStopped(Exception):
    """``DeliveryStopped`` with the batch's local outcomes added."""

    error: Exception
    outcomes: list[RowOutcome]


#: A batch's rows of one operation.
_Part = tuple[Operation, list[dict[str, Any]]]
#: Rows ready for the wire, by operation, in the order they go out.
_Parts = list[tuple[Operation, list[OutboundRow]]]
#: Raw-row keys of a record a mirror removes beyond the plan's own removals (see ``_takeover_rows``): the
#: record as the target listed it, or as this sync sent it; and, for the latter, the row's key as sent.
_TARGET_RECORD = "__target_record"
_TARGET_KEY = "__target_key"


@dataclass
class _Batch:
    index: int
    #: One part per operation; several only for ``combined_operations`` destinations.
    parts: list[_Part]

    @property
    def removes(self) -> bool:
        return any(operation.removes for operation, _ in self.parts)

    @property
    def size(self) -> int:
        return sum(len(rows) for _, rows in self.parts)


@dataclass(frozen=True)
class _Prepared:
    """A change row ready for the wire, with what the commit keeps about it."""

    row: OutboundRow
    mapped: MappedRow
    identity: str
    payload_hash: str
    payload_fields: list[str]

    def record(self) -> dict[str, Any]:
        return {"identity": self.identity, "payload_hash": self.payload_hash, "payload_fields": self.payload_fields}


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
        binding: Binding | None = None,
        rebind: bool = False,
        take_over_existing: bool = False,
        run_id: str | None = None,
        field_mapping: Mapping[str, str] | None = None,
        guards: Guards | None = None,
        dry_run: bool = False,
        dry_run_sample: int = 20,
        batch_size: int | None = None,
        send_nulls: bool = False,
        retry_rejected: bool = False,
        progress_interval: float = 10.0,
        memory_limit: str | None = None,
        warehouse_hook: DbApiHookLike | None = None,
    ) -> None:
        self.plan = plan
        self.destination = destination
        self.capabilities = destination.capabilities
        self.mode = mode
        self.table: OperationTable = _with_refresh(self.capabilities.operations_for(mode), plan.full_refresh)
        self.storage = storage
        self.pointer = pointer
        self.checkpoints = checkpoints
        self.binding = binding
        self.rebind = rebind
        self.take_over_existing = take_over_existing
        self.run_id = run_id
        self.guards = guards or Guards()
        self.dry_run = dry_run
        self.dry_run_sample = dry_run_sample
        #: Rows per batch for each operation this mode sends (a combined batch takes ``batch_size``).
        self.batch_size = _batch_size(batch_size, self.capabilities.batch_size, self.capabilities.max_batch_size)
        self.batch_sizes = {
            op: _batch_size(
                batch_size, self.capabilities.batch_size_for(op), self.capabilities.max_batch_size_for(op), op
            )
            for op in set(self.table.values())
        }
        self.send_nulls = send_nulls
        self.retry_rejected = retry_rejected
        self.progress_interval = progress_interval
        self.memory_limit = memory_limit or DELIVERY_MEMORY_LIMIT
        self.mapping = resolve_mapping(
            field_mapping,
            source_columns=plan.source_columns,
            default_fields=self.capabilities.default_fields,
            required_fields=self.capabilities.required_fields,
            destination=self.capabilities.name,
            accepts_any_field=self.capabilities.accepts_any_field,
        )
        self._check_identity()
        #: The warehouse holding the committed state, when the diff ran there (``diff_in="warehouse"``).
        self.warehouse: WarehouseState | None = None
        if plan.warehouse is not None:
            if warehouse_hook is None:
                raise ConfigurationError(
                    f"Plan {plan.plan_id} of sync {plan.sync_id!r} keeps its state in the warehouse of connection "
                    f"{plan.warehouse.conn_id!r}; the delivery needs that connection's hook to commit there."
                )
            self.warehouse = WarehouseState.of_plan(warehouse_hook, plan.warehouse, plan.sync_id)
        self.ownership = OwnershipLog(storage, binding.target_key() if binding else _UNBOUND_TARGET)
        #: True when the baseline belongs to another target and ``rebind`` starts this one afresh.
        self.rebinding = False
        self.changes_path = ""
        #: The local copy of this run's rejected-rows file, while the task runs (None: no rejected rows).
        self.rejected_rows_path: str | None = None
        self.verdicts: dict[int, tuple[Outcome, str]] = {}
        self.attempted: set[str] = set()
        #: Identities of rows this run removes: a current row with one of them takes over a record that
        #: is this sync's own (say, the same email under a new spelling), so "already there" is done.
        self.handed_over: set[str] = set()
        #: Records at the target that a take-over mirror removes (the source lacks them).
        self.takeover: list[dict[str, Any]] = []
        #: Creates this sync sent, never saw confirmed, and whose rows have left the source (key, payload).
        self.unconfirmed: list[dict[str, Any]] = []
        #: One past the highest batch index cut so far (the outcome files to look for after a stop).
        self.batches_cut = 0

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

    def _check_binding(self) -> bool:
        """Refuse a baseline delivered to another target; with ``rebind``, start this target afresh."""
        base = self.plan.base
        if self.binding is None or base is None or base.binding is None:
            return False
        differences = base.binding.differences(self.binding)
        if not differences:
            return False
        if self.rebind:
            log.warning(
                "Sync %r: rebinding. Its baseline was delivered to %s; this task delivers to %s. Every current row is "
                "sent as new (a full refresh that removes nothing), and the baseline is bound to this task.",
                self.plan.sync_id, base.binding.describe(), self.binding.describe(),
            )
            return True
        raise BindingError(
            f"Sync {self.plan.sync_id!r} has a baseline that was delivered to {base.binding.describe()}, but this task "
            f"delivers to {self.binding.describe()} (different: {', '.join(differences)}). That baseline says nothing "
            "about what this target holds, so nothing was sent. If this is a second sync, give its diff task its own "
            "sync_id (one sync_id per destination). If the target really changed, pass rebind=True to this task once: "
            "every current row is sent to the new target as new, nothing is removed, and the baseline is bound to it."
        )

    # -- the run -----------------------------------------------------------------------------------
    def run(self) -> SyncResult:
        started = time.monotonic()
        self.rebinding = self._check_binding()
        if self.pointer is not None:
            self.pointer.check(self.plan)  # a stale plan sends nothing
        if self.warehouse is not None and self._takes_over:
            raise ConfigurationError(
                "take_over_existing=True reads every identity of the source and the baseline, which a diff in the "
                "warehouse keeps there; use diff_in='worker' for a take-over mirror, or remove take_over_existing."
            )
        self.changes_path, counts = self._changes()
        removals = sum(counts[change.value] for change, op in self.table.items() if op.removes)
        selected = sum(counts[change.value] for change in self.table)
        not_acted_on = sum(counts[c.value] for c in Change if c not in self.table)
        if self._takes_over:
            self.destination.prepare(dry_run=self.dry_run)  # the target exists before it is read
            self.takeover = self._takeover_records()
        elif self._removes_unconfirmed:
            self.unconfirmed = self._unconfirmed_records()
        self.guards.check(self.plan, removals + len(self.takeover) + len(self.unconfirmed))
        log.info(
            "%s %s=%s: %d rows to send (%s); %d changes this mode does not act on are committed as seen%s%s%s",
            self.capabilities.name,
            self.capabilities.mode_argument,
            self.mode,
            selected + len(self.takeover) + len(self.unconfirmed),
            ", ".join(f"{counts[c.value]} {c.value} as {op.value}" for c, op in self.table.items()),
            not_acted_on,
            f"; take_over_existing: {len(self.takeover)} records at the target that the source lacks are removed"
            if self._takes_over else "",
            f"; {len(self.unconfirmed)} records this sync created without a confirming answer, whose rows left the "
            "source, are removed" if self.unconfirmed else "",
            " (dry run: nothing is sent or committed)" if self.dry_run else "",
        )
        if self.pointer is not None and self.binding is not None and not self.dry_run:
            self.pointer.claim(self.plan, self.binding)
        if selected and not self._takes_over:
            self.destination.prepare(dry_run=self.dry_run)
        selected += len(self.takeover) + len(self.unconfirmed)
        self.verdicts = self._identity_verdicts()
        if self.dry_run:
            return self._dry_run(selected, not_acted_on, counts, started)

        self.attempted = self.ownership.load()  # before this try records anything of its own
        checkpoint = self._checkpoint()
        if checkpoint.next_batch or checkpoint.done:
            log.info(
                "Resuming plan %s after batch %d%s (checkpoint of an earlier try)", self.plan.plan_id,
                checkpoint.next_batch, f", and batches {sorted(checkpoint.done)} done" if checkpoint.done else "",
            )
        with Progress(self.capabilities.name, selected, self.progress_interval) as progress:
            try:
                with _collector_frozen(), self._answers_kept():
                    asyncio.run(self._deliver_all(checkpoint, progress))
            except BaseException:
                self._commit_after_failure(self.batches_cut)
                raise
            progress.log()
        batches = self.batches_cut
        paths = self._outcome_paths(batches)
        committed = self._commit(paths)
        return self._result(paths, batches, checkpoint.next_batch, not_acted_on, counts, committed, started)

    async def _deliver_all(self, checkpoint: _Checkpoint, progress: Progress) -> None:
        """Every batch not acknowledged by an earlier try, up to ``batches_in_flight`` at once.

        Batches are cut in order while earlier ones are still in flight, so an async destination's
        requests never wait for a batch end; each batch's outcomes are written as it completes, and the
        checkpoint records every completed batch, so a retry skips exactly those.
        """
        window = max(1, self.capabilities.batches_in_flight) if self.destination.is_async else 1
        running: dict[asyncio.Task[list[RowOutcome]], _Batch] = {}
        done = set(checkpoint.done)
        next_batch = checkpoint.next_batch

        async def reap(until: int) -> None:
            nonlocal next_batch
            while len(running) > until:
                finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                errors: list[BaseException] = []
                for task in sorted(finished, key=lambda t: running[t].index):
                    batch = running.pop(task)
                    if task.exception() is not None:
                        errors.append(task.exception())  # type: ignore[arg-type]
                        continue
                    progress.add(task.result())
                    done.add(batch.index)
                while next_batch in done:
                    done.discard(next_batch)
                    next_batch += 1
                self._save_checkpoint(next_batch, done)
                if errors:
                    raise errors[0]

        try:
            for batch in self._batches():
                self.batches_cut = batch.index + 1
                if batch.index < checkpoint.next_batch or batch.index in checkpoint.done:
                    progress.done += batch.size  # delivered by an earlier try
                    continue
                await reap(window - 1)
                running[asyncio.create_task(self._run_batch(batch))] = batch
            await reap(0)
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            if self.destination.is_async:
                await self.destination.aclose()

    @cached_property
    def answers(self) -> AnswerJournal:
        """Answers of the batches in flight, kept as they come: a retry after a kill skips those rows."""
        return AnswerJournal(self.storage.local_dir(self.storage.plan_uri(self.plan.plan_id, "delivery")))

    @contextmanager
    def _answers_kept(self) -> Iterator[None]:
        """Let the destination report each row's answer into the journal while the delivery runs."""
        self.destination.on_answer = self.answers.add
        try:
            yield
        finally:
            self.destination.on_answer = None

    async def _run_batch(self, batch: _Batch) -> list[RowOutcome]:
        prepared = [(operation, [self._prepare(raw) for raw in rows], rows) for operation, rows in batch.parts]
        items = [item for _, part, _ in prepared for item in part]
        row_ids = [item.row.row_id for item in items]
        earlier = self.answers.earlier(batch.index)
        self.answers.open(batch.index, row_ids)
        try:
            outcomes = await self._deliver_batch(batch, prepared, earlier)
        except _BatchStopped as stopped:
            self._write_outcomes(batch, stopped.outcomes, items)
            raise stopped.error from None
        finally:
            self.answers.close(batch.index, row_ids)
        self._write_outcomes(batch, outcomes, items)
        self.answers.discard(batch.index)  # its outcomes are written: the answers are no longer needed
        return outcomes

    # -- what to send ------------------------------------------------------------------------------
    def _changes(self) -> tuple[str, dict[str, int]]:
        """The changes file to deliver and its counts per kind: the plan's, or on a rebind every row as new."""
        if not self.rebinding:
            return self.storage.fetch(self.plan.changes_uri), self.plan.counts.model_dump()
        path = self.storage.to_local(self.storage.plan_uri(self.plan.plan_id, "delivery", "rebind_changes.parquet"))
        if self.warehouse is not None:
            rows = self.warehouse.rebind_changes(
                changes_path=self.storage.fetch(self.plan.changes_uri),
                hashes_path=self._hashes_path,
                names=self.plan.source_columns,
                primary_key=self.plan.primary_key,
                out_path=path,
            )
        else:
            rows = _refresh_changes(
                self.storage.fetch(self.plan.snapshot_uri), self.plan.primary_key, path, self.memory_limit
            )
        counts = {change.value: 0 for change in Change}
        counts[Change.REFRESH.value] = rows
        return path, counts

    @property
    def _base_snapshot(self) -> str | None:
        """The baseline this delivery moves forward: none when the target is new (rebind), or kept in the warehouse."""
        base = self.plan.base
        if base is None or self.rebinding or self.warehouse is not None:
            return None
        return self.storage.fetch(base.snapshot_uri)

    @property
    def _hashes_path(self) -> str:
        """The row hashes of a warehouse plan's changes (of the rebind's changes on a rebind)."""
        assert self.plan.warehouse is not None
        hashes = self.storage.fetch(self.plan.warehouse.hashes_uri)
        if self.rebinding and self.changes_path:
            return self.changes_path.removesuffix(".parquet") + ".hashes.parquet"
        return hashes

    def _committed_with_identities(self, identities: Iterator[str] | set[str], name: str) -> str | None:
        """The warehouse's committed rows holding one of ``identities`` (none on a rebind: the target is new)."""
        if self.warehouse is None or self.plan.base is None or self.rebinding:
            return None
        folder = self.storage.local_dir(self.storage.plan_uri(self.plan.plan_id, "delivery"))
        return self.warehouse.rows_with_identities(identities, self.plan.primary_key, os.path.join(folder, name))

    def _batches(self) -> Iterator[_Batch]:
        """Selected changes, removals first, each operation in row-id order, cut at its batch size.

        A ``combined_operations`` destination gets batches cut across operations (``batch_size`` rows
        of any operations, still removals first), so one write carries them all. Records a take-over
        removes lead its removal operation. The changes file is written in row-id order and read back
        in that order (insertion order kept), so no sort runs here and memory stays at one batch
        whatever the file's size.
        """
        combined = self.capabilities.combined_operations
        index = 0
        parts: list[_Part] = []
        filled = 0
        with self._duckdb() as con:
            for operation in OPERATION_ORDER:
                kinds = [change.value for change, op in self.table.items() if op == operation]
                if not kinds:
                    continue
                size = self.batch_size if combined else self.batch_sizes[operation]
                placeholders = ", ".join("?" * len(kinds))
                reader = con.sql(
                    f"SELECT * FROM read_parquet(?) WHERE {quote_identifier(CHANGE_COLUMN)} IN ({placeholders})",
                    params=[self.changes_path, *kinds],
                ).to_arrow_reader(size)
                taken_over = self._takeover_rows() if operation is self._takeover_operation else []
                current: list[dict[str, Any]] = []
                parts.append((operation, current))
                for rows in itertools.chain([taken_over], (batch.to_pylist() for batch in reader)):
                    for raw in rows:
                        current.append(raw)
                        filled += 1
                        if filled == size:
                            yield _Batch(index, [part for part in parts if part[1]])
                            index += 1
                            current, filled = [], 0
                            parts = [(operation, current)]
                if not combined:
                    if filled:
                        yield _Batch(index, [part for part in parts if part[1]])
                        index += 1
                    parts, filled = [], 0
        if filled:
            yield _Batch(index, [part for part in parts if part[1]])

    def _duckdb(self) -> AbstractContextManager[duckdb.DuckDBPyConnection]:
        """A DuckDB connection under the task's memory limit, spilling beside the plan's delivery files."""
        folder = self.storage.local_dir(self.storage.plan_uri(self.plan.plan_id, "delivery"))
        return scratch_duckdb(folder, memory_limit=self.memory_limit)

    def _prepare(self, raw: dict[str, Any]) -> _Prepared:
        """Map one change row; work out its identity, payload fingerprint, and whether its record is ours."""
        record = raw.get(_TARGET_RECORD)
        if record is not None:
            return self._prepare_takeover(int(raw[ROW_ID_COLUMN]), record, raw.get(_TARGET_KEY))
        change = Change(raw[CHANGE_COLUMN])
        delivered = raw.get(PAYLOAD_FIELDS_COLUMN) or () if change is not Change.ADDED else ()
        mapped = apply_mapping(self.mapping, raw, send_nulls=self.send_nulls, delivered_fields=delivered)
        row = OutboundRow(
            row_id=int(raw[ROW_ID_COLUMN]),
            change=change,
            key={k: raw.get(k) for k in self.plan.primary_key},
            payload=mapped.payload,
        )
        identity = self._identity(row)
        ours = (
            (change is not Change.ADDED and not self.rebinding)
            or identity in self.attempted
            or identity in self.handed_over
            or self.take_over_existing
        )
        payload_hash, fields = payload_fingerprint(row.payload)
        return _Prepared(replace(row, ours=ours), mapped, identity, payload_hash, fields)

    def _identity(self, row: OutboundRow) -> str:
        """The record a row becomes; by default its primary key (as JSON)."""
        identity = self.destination.identity(row)
        return identity if identity is not None else _key_text(row)

    def _identity_verdicts(self) -> dict[int, tuple[Outcome, str]]:
        """Rows two of which would become one record (rejected), and removals of a record still wanted."""
        def identities() -> Iterator[IdentityCheck]:
            with self._duckdb() as con:
                reader = con.sql(
                    f"SELECT * FROM read_parquet(?) WHERE {quote_identifier(CHANGE_COLUMN)} IN "
                    f"({', '.join(quote_literal(c.value) for c in self.table)})",
                    params=[self.changes_path],
                ).to_arrow_reader(10_000)
                for record_batch in reader:
                    for raw in record_batch.to_pylist():
                        prepared = self._prepare(raw)
                        if prepared.row.change is Change.REMOVED and not self.rebinding:
                            self.handed_over.add(prepared.identity)
                        yield IdentityCheck(prepared.row.row_id, prepared.row.change.value,
                                            prepared.identity, _key_text(prepared.row))

        folder = self.storage.local_dir(self.storage.plan_uri(self.plan.plan_id, "delivery"))
        def held(ids_path: str) -> str | None:
            with self._duckdb() as con:
                reader = con.sql(
                    'SELECT DISTINCT "identity" FROM read_parquet(?) WHERE "kind" <> ?',
                    params=[ids_path, Change.REMOVED.value],
                ).to_arrow_reader(10_000)
                wanted = (value for batch in reader for value in batch.column(0).to_pylist())
                return self._committed_with_identities(wanted, "committed_identities.parquet")

        verdicts = identity_verdicts(
            identities(),
            held_rows=held if self.warehouse is not None else None,
            base_snapshot=self._base_snapshot,
            changes_path=self.changes_path,
            primary_key=self.plan.primary_key,
            work_dir=folder,
            memory_limit=self.memory_limit,
        )
        if verdicts:
            log.warning("%d rows share their identity with another row or keep a record another row still has; "
                        "see the rejected-rows file", len(verdicts))
        return verdicts

    def _rejection(self, operation: Operation, item: _Prepared) -> str | None:
        row = item.row
        if not operation.removes:  # a removal needs the identity only, not every value to be sendable
            if item.mapped.problems:
                return "; ".join(item.mapped.problems)
            missing = [f for f in self.capabilities.required_fields if row.payload.get(f) in (None, "")]
            if missing:
                sources = ", ".join(f"{f} <- {self.mapping[f]}" for f in missing)
                return f"missing required field(s) {missing} (mapped from: {sources})"
        return self.destination.validate(operation, row)

    def _local_outcome(self, operation: Operation, item: _Prepared, raw_hash: Any) -> RowOutcome | None:
        """The outcome of a row that needs no request, or None to send it."""
        row = item.row
        verdict = self.verdicts.get(row.row_id)
        if verdict is not None and verdict[0] is Outcome.REJECTED:
            return RowOutcome.rejected(row, verdict[1])
        reason = self._rejection(operation, item)
        if reason:  # checked every run (it costs no request), so a fix in the settings takes effect
            return RowOutcome.rejected(row, reason)
        known = None if self.retry_rejected else self._rejections.get(fingerprint(operation, row))
        if known:
            return RowOutcome.rejected(row, known["reason"], permanent=True)
        if verdict is not None:
            return RowOutcome(row.row_id, verdict[0], verdict[1])
        if row.change is Change.CHANGED and not operation.removes and raw_hash == item.payload_hash:
            return RowOutcome(row.row_id, Outcome.UNCHANGED_PAYLOAD, "the payload equals the one delivered")
        return None

    async def _deliver_batch(
        self,
        batch: _Batch,
        prepared: list[tuple[Operation, list[_Prepared], list[dict[str, Any]]]],
        earlier: Mapping[int, RowOutcome],
    ) -> list[RowOutcome]:
        """Send the batch's rows, less those decided locally and those an earlier try of this task had answers
        for (``earlier``): those answers stand, and only the rows without one go out again."""
        outcomes: list[RowOutcome] = []
        sendable: _Parts = []
        for operation, items, raws in prepared:
            rows: list[OutboundRow] = []
            for raw, item in zip(raws, items):
                local = self._local_outcome(operation, item, raw.get(PAYLOAD_HASH_COLUMN))
                if local is not None:
                    outcomes.append(local)
                else:
                    rows.append(item.row)
            if rows:
                sendable.append((operation, rows))
        creates = {row.row_id for operation, rows in sendable if not operation.removes for row in rows}
        if creates:
            sent = ((item.identity, item.row.key, item.row.payload)
                    for _, items, _ in prepared for item in items if item.row.row_id in creates)
            self.ownership.record(self.plan.plan_id, batch.index, sent)
        if earlier:
            answered = [row.row_id for _, rows in sendable for row in rows if row.row_id in earlier]
            outcomes += [earlier[row_id] for row_id in answered]
            sendable = [(operation, left) for operation, rows in sendable
                        if (left := [row for row in rows if row.row_id not in earlier])]
            log.info("Batch %d: %d rows answered before the earlier try stopped are not sent again", batch.index,
                     len(answered))
        try:
            return outcomes + await self._deliver(sendable)
        except DeliveryStopped as stopped:
            raise _BatchStopped(stopped.error, outcomes + stopped.outcomes) from None

    @cached_property
    def _rejections(self) -> dict[str, dict[str, Any]]:
        """Rows an earlier run found invalid, by fingerprint: not sent again until they change."""
        base = self.plan.base
        if base is None or not base.rejected_uri or not self.storage.exists(base.rejected_uri):
            return {}
        return load_remembered(self.storage.fetch(base.rejected_uri))

    async def _deliver(self, parts: _Parts) -> list[RowOutcome]:
        """Send; when the API refuses a whole batch, halve it until the rows at fault stand alone.

        A destination whose batch is one whole write (``split_refused_batches=False``) is not split:
        every row of the refused batch is rejected with the reason, to be sent again next run.
        """
        rows = [row for _, part in parts for row in part]
        if not rows:
            return []
        try:
            outcomes = await self._send(parts)
        except BatchRefused as refused:
            if len(rows) == 1:
                return [RowOutcome.rejected(rows[0], refused.reason, permanent=refused.permanent)]
            operations = "/".join(operation.value for operation, _ in parts)
            if not self.capabilities.split_refused_batches:
                log.warning(
                    "%s refused a batch of %d %s operations as a whole (%s); the write is whole or nothing, so "
                    "every row of it is rejected and sent again next run",
                    self.capabilities.name, len(rows), operations, refused.reason,
                )
                return [RowOutcome.rejected(row, refused.reason) for row in rows]
            log.info(
                "%s refused a batch of %d %s operations (%s); splitting it to isolate the rows at fault",
                self.capabilities.name, len(rows), operations, refused.reason,
            )
            first, second = _halves(parts)
            return await self._deliver(first) + await self._deliver(second)
        return _complete(rows, outcomes)

    async def _send(self, parts: _Parts) -> list[RowOutcome]:
        if self.capabilities.combined_operations:
            return self.destination.send_combined(parts)
        ((operation, rows),) = parts
        if self.destination.is_async:
            return await self.destination.asend(operation, rows)
        return self.destination.send(operation, rows)

    # -- take over: the target ends equal to the source --------------------------------------------
    @property
    def _takeover_operation(self) -> Operation | None:
        """The operation that removes a record the source lacks, in a mirror; None in other modes."""
        removal = self.table.get(Change.REMOVED)
        added = self.table.get(Change.ADDED)
        if removal is None or not removal.removes or added is None or added.removes:
            return None
        return removal

    @property
    def _takes_over(self) -> bool:
        """A mirror with ``take_over_existing``: what the target holds from elsewhere is removed too.

        Not on a rebind, which never removes.
        """
        return self.take_over_existing and not self.rebinding and self._takeover_operation is not None

    def _takeover_records(self) -> list[dict[str, Any]]:
        """The records at the target that neither the source nor the baseline has: read once per plan.

        Written beside the plan, so a retried task cuts the same batches and resumes; the baseline's
        records are left out because the plan's own removals already cover those the source dropped.
        """
        uri = self.storage.plan_uri(self.plan.plan_id, "delivery", "take_over.jsonl")
        if self.storage.exists(uri):
            return self._read_records(uri)
        records = self.destination.existing_records()
        if records is None:
            raise ConfigurationError(
                f"{self.capabilities.name} cannot list what its target holds, so take_over_existing=True cannot make "
                "it equal the source. Remove take_over_existing (mirror then removes only what this sync delivered)."
            )
        wanted = set(self._identities_of(self.storage.fetch(self.plan.snapshot_uri)))
        if self._base_snapshot is not None:
            wanted.update(self._identities_of(self._base_snapshot))
        foreign: list[dict[str, Any]] = []
        seen: set[str] = set()
        for record in records:
            row = self._takeover_row(0, record)
            if self.destination.identity(row) is None and len(row.key) < len(self.plan.primary_key):
                raise ConfigurationError(
                    f"{self.capabilities.name} listed a record that no column of the primary key maps to: {record!r}"
                )
            identity = self._identity(row)
            if identity not in wanted and identity not in seen:
                seen.add(identity)
                foreign.append(dict(record))
        self._write_records(uri, foreign)
        log.info("take_over_existing: %d records at the target are not in the source and will be removed", len(foreign))
        return foreign

    def _identities_of(self, snapshot_path: str) -> Iterator[str]:
        """The identities a snapshot's rows have at the destination (from the columns mapped to them), streamed."""
        fields = {f: self.mapping[f] for f in self.capabilities.identity_fields if f in self.mapping}
        columns = sorted(set(fields.values()) | set(self.plan.primary_key))
        with self._duckdb() as con:
            reader = con.sql(
                f"SELECT {', '.join(quote_identifier(c) for c in columns)} FROM read_parquet(?)", params=[snapshot_path]
            ).to_arrow_reader(10_000)
            for batch in reader:
                for raw in batch.to_pylist():
                    row = OutboundRow(
                        row_id=0,
                        change=Change.ADDED,
                        key={k: raw.get(k) for k in self.plan.primary_key},
                        payload={f: raw.get(c) for f, c in fields.items()},
                    )
                    yield self._identity(row)

    @property
    def _removes_unconfirmed(self) -> bool:
        """A mirror removes what it may have created unconfirmed, once the row leaves the source.

        Not on a rebind (the target is new), nor with ``take_over_existing``, which removes them anyway.
        """
        return self._takeover_operation is not None and not self.rebinding and not self._takes_over

    def _unconfirmed_records(self) -> list[dict[str, Any]]:
        """Rows this sync sent as creates, never saw confirmed, and the source no longer has: read once per plan.

        A create whose every answer was lost may have landed. Its row is not in the baseline (only confirmed
        rows are), so when the row leaves the source no diff removes it; the ownership records still hold it as
        this sync's, with the key and payload it was sent with. Removing it is what the mirror owes; a target
        that answers "not found" had never got it. Written beside the plan, so a retried task cuts the same
        batches.
        """
        uri = self.storage.plan_uri(self.plan.plan_id, "delivery", "unconfirmed.jsonl")
        if self.storage.exists(uri):
            return self._read_records(uri)
        candidates = self.ownership.unconfirmed_identities()
        if candidates and self._base_snapshot is not None:
            candidates.difference_update(self._identities_of(self._base_snapshot))
        if candidates and self.warehouse is not None:
            log.warning(
                "%d records this sync sent as creates were never confirmed (no answer: lost, a kill, an outage), and "
                "a diff in the warehouse cannot tell whether the source still has them, so they are left at the "
                "target; a diff on the worker (diff_in='worker') removes those whose rows have left the source",
                len(candidates),
            )
            return []
        if candidates:
            candidates.difference_update(self._identities_of(self.storage.fetch(self.plan.snapshot_uri)))
        sent = self.ownership.rows_sent(candidates) if candidates else {}
        records = [sent[identity] for identity in sorted(sent)]
        self._write_records(uri, records)
        if records:
            log.info("%d records this sync sent as creates were never confirmed and their rows have left the source: "
                     "the mirror removes them (\"not found\" means they never landed)", len(records))
        return records

    def _write_records(self, uri: str, records: Sequence[Mapping[str, Any]]) -> None:
        """A plan's reading of the target, kept whole for a retried task: written beside, then renamed."""
        with written_whole(self.storage.to_local(uri)) as partial, open(partial, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, default=str, ensure_ascii=False) + "\n")
        self.storage.publish(uri)

    def _read_records(self, uri: str) -> list[dict[str, Any]]:
        with open(self.storage.fetch(uri), encoding="utf-8") as handle:
            return [json.loads(line) for line in handle]

    def _takeover_rows(self) -> list[dict[str, Any]]:
        """Records removed beyond the plan's removals, as raw rows numbered below zero (no change row has them)."""
        listed = [{_TARGET_RECORD: record} for record in self.takeover]
        sent = [{_TARGET_RECORD: row["payload"], _TARGET_KEY: row["key"]} for row in self.unconfirmed]
        return [
            {ROW_ID_COLUMN: -1 - i, CHANGE_COLUMN: Change.REMOVED.value, **extra}
            for i, extra in enumerate(listed + sent)
        ]

    def _takeover_row(
        self, row_id: int, record: Mapping[str, Any], key: Mapping[str, Any] | None = None
    ) -> OutboundRow:
        if key is None:
            key = {
                column: record.get(field)
                for field, column in self.mapping.items()
                if column in self.plan.primary_key and field in record
            }
        return OutboundRow(row_id=row_id, change=Change.REMOVED, key=dict(key), payload=dict(record), ours=True)

    def _prepare_takeover(
        self, row_id: int, record: Mapping[str, Any], key: Mapping[str, Any] | None = None
    ) -> _Prepared:
        """A record removed beyond the plan's removals: as the destination listed it, or as this sync sent it."""
        row = self._takeover_row(row_id, record, key)
        payload_hash, fields = payload_fingerprint(row.payload)
        return _Prepared(row, MappedRow(row.payload, []), self._identity(row), payload_hash, fields)

    # -- files, checkpoints, commit ----------------------------------------------------------------
    def _outcomes_uri(self, index: int) -> str:
        return self.storage.plan_uri(self.plan.plan_id, "delivery", f"outcomes-{index:06d}.parquet")

    def _write_outcomes(self, batch: _Batch, outcomes: Sequence[RowOutcome], prepared: Sequence[_Prepared]) -> None:
        uri = self._outcomes_uri(batch.index)
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        by_id = {item.row.row_id: item for item in prepared}
        operation_of = {int(raw[ROW_ID_COLUMN]): operation for operation, rows in batch.parts for raw in rows}
        records: list[dict[str, Any]] = []
        for outcome in outcomes:
            item = by_id[outcome.row_id]
            operation = operation_of[outcome.row_id]
            record: dict[str, Any] = {
                "row_id": outcome.row_id,
                "outcome": outcome.outcome.value,
                "operation": operation.value,
                "reason": outcome.reason,
                **item.record(),
            }
            if outcome.permanent:
                fingerprint_ = fingerprint(operation, item.row)
                record["fingerprint"] = fingerprint_
                record["since"] = self._rejections.get(fingerprint_, {}).get("since", now)
            records.append(record)
        write_outcome_file(self.storage.to_local(uri), records)
        self.storage.publish(uri)

    @property
    def _checkpoint_key(self) -> str:
        return CHECKPOINT_PREFIX + self.plan.plan_id

    def _checkpoint(self) -> _Checkpoint:
        value = (self.checkpoints.get(self._checkpoint_key) if self.checkpoints is not None else None) or {}
        if not isinstance(value, dict):
            return _Checkpoint(0, frozenset())
        return _Checkpoint(int(value.get("next_batch", 0)), frozenset(int(i) for i in value.get("done", ())))

    def _save_checkpoint(self, next_batch: int, done: set[int]) -> None:
        """Every batch below ``next_batch`` is acknowledged, and so are the ones in ``done`` (out of order)."""
        if self.checkpoints is not None:
            self.checkpoints.set(
                self._checkpoint_key, {"next_batch": next_batch, "done": sorted(done), "plan_id": self.plan.plan_id}
            )

    def _outcome_paths(self, batches: int) -> list[str]:
        uris = [self._outcomes_uri(i) for i in range(batches)]
        return [self.storage.fetch(uri) for uri in uris if self.storage.exists(uri)]

    def _commit(self, outcome_paths: list[str]) -> CommittedState | None:
        """Move the baseline forward by acknowledged rows (and rows this mode does not act on)."""
        plan = self.plan
        if self.pointer is None:
            return None
        nothing = not (plan.counts.added or plan.counts.changed or plan.counts.removed or plan.counts.refresh)
        # Unconfirmed records removed: the commit folds their outcomes into the ownership records.
        nothing = nothing and not self.unconfirmed
        if nothing and not self.rebinding and (plan.base is None or plan.base.binding is not None or not self.binding):
            log.info("Nothing changed since the committed snapshot; the baseline stays as it is")
            return plan.base
        snapshot_id = f"{plan.plan_id}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}"
        if self.warehouse is not None:
            return self._commit_in_warehouse(outcome_paths, snapshot_id)
        uri = self.storage.committed_uri(snapshot_id)
        local = self.storage.to_local(uri)
        rows = commit_snapshot(
            base_snapshot=self._base_snapshot,
            changes_path=self.changes_path,
            outcome_paths=outcome_paths,
            acted_on={change.value for change in self.table},
            primary_key=plan.primary_key,
            out_path=local,
            memory_limit=self.memory_limit,
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
            binding=self.binding,
            run_id=self.run_id,
            mode=self.mode,
        )
        self.pointer.compare_and_set(plan, state)
        log.info("Committed snapshot %s of sync %r: %d rows", snapshot_id, plan.sync_id, rows)
        # Every batch's outcomes, those of an earlier try included: removals and rows left alone drop records.
        self.ownership.compact(
            snapshot_path=local, outcome_paths=outcome_paths, plan_id=plan.plan_id, snapshot_id=snapshot_id,
            memory_limit=self.memory_limit,
        )
        keep = {snapshot_id} | ({plan.base.snapshot_id} if plan.base else set())
        if removed := self.storage.prune(keep_plan=plan.plan_id, keep_snapshots=keep):
            log.info("Removed %d old plan folders and snapshots of sync %r", len(removed), plan.sync_id)
        return state

    def _commit_in_warehouse(self, outcome_paths: list[str], snapshot_id: str) -> CommittedState:
        """The warehouse merges the acknowledged rows and moves its version row; the pointer names a marker.

        The marker file (where the state is, its version) sits where a snapshot would, so the pointer, the
        binding, pruning and the rejected-rows memory work as they do for a diff on the worker.
        """
        plan, warehouse = self.plan, self.warehouse
        assert warehouse is not None and plan.warehouse is not None
        folder = self.storage.local_dir(self.storage.plan_uri(plan.plan_id, "delivery"))
        rows, version = warehouse.commit(
            plan_id=plan.plan_id,
            base_version=plan.warehouse.base_version,
            changes_path=self.changes_path,
            hashes_path=self._hashes_path,
            outcome_paths=outcome_paths,
            acted_on={change.value for change in self.table},
            primary_key=plan.primary_key,
            replace_all=self.rebinding,
            work_dir=folder,
            memory_limit=self.memory_limit,
        )
        uri = self.storage.committed_uri(snapshot_id).removesuffix(".parquet") + WAREHOUSE_MARKER_SUFFIX
        with open(self.storage.to_local(uri), "w", encoding="utf-8") as handle:
            json.dump(warehouse_marker(plan.warehouse, version, rows), handle)
        self.storage.publish(uri)
        state = CommittedState(
            snapshot_id=snapshot_id,
            snapshot_uri=uri,
            plan_id=plan.plan_id,
            rows=rows,
            committed_at=datetime.now(timezone.utc),
            primary_key=plan.primary_key,
            rejected_uri=self._write_rejections(snapshot_id, outcome_paths),
            binding=self.binding,
            run_id=self.run_id,
            mode=self.mode,
        )
        self.pointer.compare_and_set(plan, state)  # type: ignore[union-attr]
        log.info("Committed version %d of sync %r in the warehouse (%s): %d rows", version, plan.sync_id,
                 warehouse.where, rows)
        held = warehouse.rows_with_identities(
            self.ownership.load(), plan.primary_key, os.path.join(folder, "owned_identities.parquet")
        )
        self.ownership.compact(
            snapshot_path=held, outcome_paths=outcome_paths, plan_id=plan.plan_id, snapshot_id=snapshot_id,
            memory_limit=self.memory_limit,
        )
        keep = {snapshot_id} | ({plan.base.snapshot_id} if plan.base else set())
        self.storage.prune(keep_plan=plan.plan_id, keep_snapshots=keep)
        return state

    def _write_rejections(self, snapshot_id: str, paths: list[str]) -> str | None:
        """Remember this run's invalid rows beside the committed snapshot (see ``_rejections``)."""
        if not paths:
            return None
        uri = self.storage.committed_uri(snapshot_id).removesuffix(".parquet") + ".rejected.jsonl"
        write_remembered(paths, self.storage.to_local(uri), self.memory_limit)
        self.storage.publish(uri)
        return uri

    def _commit_after_failure(self, batches: int) -> None:
        """Keep what was acknowledged before the stop, so a later run does not send it again.

        The checkpoint stays, so a retry of this task resumes at the unfinished batch and commits again.
        When every row answered so far failed (the destination down for the whole run), nothing is
        committed: the baseline, its binding and the ownership records stay exactly as they were.
        """
        try:
            paths = self._outcome_paths(batches)
            answered = count_outcomes(paths, self.memory_limit) if paths else {}
            if all(outcome == Outcome.FAILED.value for counts in answered.values() for outcome in counts):
                log.error("Delivery stopped during batch %d; no row was acknowledged, so nothing is committed",
                          batches)
                return
            log.error("Delivery stopped during batch %d; committing the rows acknowledged before it", batches)
            self._commit(paths)
        except Exception:  # the original error matters more; this one is logged
            log.exception("Could not commit the acknowledged rows after the failure")

    # -- results -----------------------------------------------------------------------------------
    def _result(
        self,
        paths: list[str],
        batches: int,
        resumed_from: int,
        not_acted_on: int,
        counts: Mapping[str, int],
        committed: CommittedState | None,
        started: float,
    ) -> SyncResult:
        per_operation = count_outcomes(paths, self.memory_limit) if paths else {}
        operations = {
            op: OperationCounts(selected=sum(by_outcome.values()), **{o.value: by_outcome.get(o.value, 0) for o in Outcome})
            for op, by_outcome in per_operation.items()
        }
        rejected_uri = self.storage.plan_uri(self.plan.plan_id, "rejected_rows.jsonl")
        bad = (
            write_rejected_rows(
                changes_path=self.changes_path,
                outcome_paths=paths,
                primary_key=self.plan.primary_key,
                out_path=self.storage.to_local(rejected_uri),
                memory_limit=self.memory_limit,
                removed_beyond_plan={
                    int(raw[ROW_ID_COLUMN]): self._takeover_row(
                        int(raw[ROW_ID_COLUMN]), raw[_TARGET_RECORD], raw.get(_TARGET_KEY)
                    ).key
                    for raw in self._takeover_rows()
                },
            )
            if paths
            else 0
        )
        if bad:
            self.storage.publish(rejected_uri)
            self.rejected_rows_path = self.storage.to_local(rejected_uri)
        totals = {o.value: sum(getattr(c, o.value) for c in operations.values()) for o in Outcome}
        result = SyncResult(
            sync_id=self.plan.sync_id,
            plan_id=self.plan.plan_id,
            destination=self.capabilities.name,
            mode=self.mode,
            operations=operations,
            **totals,
            refreshed=counts.get(Change.REFRESH.value, 0) if Change.REFRESH in self.table else 0,
            rebound=self.rebinding,
            taken_over_removals=len(self.takeover),
            unconfirmed_removals=len(self.unconfirmed),
            not_acted_on=not_acted_on,
            rejected_rows_uri=rejected_uri if bad else None,
            committed=committed,
            batches=batches,
            resumed_from_batch=resumed_from,
            duration_seconds=round(time.monotonic() - started, 3),
        )
        log.info(
            "%s done: %d succeeded, %d unchanged payload (not sent), %d rejected, %d failed, %d left alone, "
            "%d removals not sent (identity still wanted) in %d batches (%.1f s)%s",
            self.capabilities.name,
            result.succeeded,
            result.unchanged_payload,
            result.rejected,
            result.failed,
            result.skipped,
            result.identity_kept,
            batches,
            result.duration_seconds,
            f"; rejected and failed rows with reasons: {rejected_uri}" if bad else "",
        )
        return result

    def summary(self, result: SyncResult) -> list[str]:
        """The lines that end the task's log (``sync/summary.py``); call it before the storage is cleaned up."""
        return summary_lines(result, self.rejected_rows_path)

    def _dry_run(self, selected: int, not_acted_on: int, counts: Mapping[str, int], started: float) -> SyncResult:
        """Everything up to the wire: mapping, validation, batching. The first payloads go to a file."""
        uri = self.storage.plan_uri(self.plan.plan_id, "dry_run_payloads.jsonl")
        per_operation: dict[str, dict[str, int]] = {}
        written = 0
        batches = 0
        with open(self.storage.to_local(uri), "w", encoding="utf-8") as handle:
            for batch in self._batches():
                batches += 1
                for operation, raw in ((op, raw) for op, rows in batch.parts for raw in rows):
                    tally = per_operation.setdefault(operation.value, {"selected": 0, "rejected": 0})
                    item = self._prepare(raw)
                    tally["selected"] += 1
                    verdict = self.verdicts.get(item.row.row_id)
                    reason = verdict[1] if verdict and verdict[0] is Outcome.REJECTED else self._rejection(operation, item)
                    tally["rejected"] += bool(reason)
                    if written < self.dry_run_sample:
                        record = {"operation": operation.value, "change": item.row.change.value,
                                  "key": item.row.key, "payload": item.row.payload, "would_reject": reason}
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
            refreshed=counts.get(Change.REFRESH.value, 0) if Change.REFRESH in self.table else 0,
            rebound=self.rebinding,
            not_acted_on=not_acted_on,
            dry_run_payloads_uri=uri,
            committed=self.plan.base,
            batches=batches,
            duration_seconds=round(time.monotonic() - started, 3),
        )


def _refresh_changes(snapshot_path: str, primary_key: Sequence[str], out_path: str, memory_limit: str) -> int:
    """Every row of a snapshot as a 'refresh' change, numbered in key order: a target that is new gets all.

    Written once per plan to a fixed name, so a retried task cuts the same batches and resumes.
    """
    if os.path.exists(out_path):
        return pq.ParquetFile(out_path).metadata.num_rows
    keys = ", ".join(quote_identifier(c) for c in primary_key)
    nothing_delivered = ", ".join(f"CAST(NULL AS {t}) AS {quote_identifier(c)}" for c, t in DELIVERY_TYPES.items())
    folder = os.path.dirname(out_path)
    os.makedirs(folder, exist_ok=True)
    with scratch_duckdb(folder, memory_limit=memory_limit) as con, written_whole(out_path) as partial:
        (rows,) = con.execute(
            f"""COPY (
                SELECT *, {nothing_delivered},
                       '{Change.REFRESH.value}' AS {quote_identifier(CHANGE_COLUMN)},
                       row_number() OVER (ORDER BY {keys}) - 1 AS {quote_identifier(ROW_ID_COLUMN)}
                FROM {parquet_relation([snapshot_path])}
                ORDER BY {quote_identifier(ROW_ID_COLUMN)}
            ) TO {quote_literal(partial)} (FORMAT parquet)"""
        ).fetchone() or (0,)
    return int(rows)


def _with_refresh(table: OperationTable, full_refresh: bool) -> OperationTable:
    """On a full refresh every current row goes out through the mode's create or add operation.

    A changed row too, in a mode that does not act on changes (insert, add): the destination is being
    rebuilt, and a row left out would be committed as seen and never arrive.
    """
    if not full_refresh or Change.REFRESH not in table:
        return table
    return {**table, Change.CHANGED: table.get(Change.CHANGED, table[Change.REFRESH])}


def _key_text(row: OutboundRow) -> str:
    """A row's primary key as JSON: its identity where the destination has none, and its name in messages."""
    return json.dumps(dict(row.key), sort_keys=True, default=str)


def _complete(rows: Sequence[OutboundRow], outcomes: Sequence[RowOutcome]) -> list[RowOutcome]:
    """Every row gets exactly one outcome; a row the destination said nothing about did not land."""
    by_id = {outcome.row_id: outcome for outcome in outcomes}
    return [by_id.get(row.row_id) or RowOutcome.failed(row, "the destination returned no outcome for this row") for row in rows]


def _halves(parts: _Parts) -> tuple[_Parts, _Parts]:
    """A refused batch in two, each half keeping its rows' operations in order."""
    flat = [(operation, row) for operation, rows in parts for row in rows]
    middle = len(flat) // 2

    def regroup(items: list[tuple[Operation, OutboundRow]]) -> _Parts:
        grouped: _Parts = []
        for operation, row in items:
            if grouped and grouped[-1][0] is operation:
                grouped[-1][1].append(row)
            else:
                grouped.append((operation, [row]))
        return grouped

    return regroup(flat[:middle]), regroup(flat[middle:])


@dataclass(frozen=True)
class _Checkpoint:
    #: Every batch below this one is acknowledged.
    next_batch: int
    #: Batches above it acknowledged out of order (several were in flight).
    done: frozenset[int]


def _batch_size(requested: int | None, default: int, maximum: int, operation: Operation | None = None) -> int:
    size = default if requested is None else requested
    if not isinstance(size, int) or size < 1 or size > maximum:
        what = f" {operation.value} operations of" if operation is not None else ""
        raise ConfigurationError(
            f"batch_size must be an integer from 1 to {maximum} for{what} this destination, got {requested!r}."
        )
    return size
