"""Write-ahead ownership: which records this sync may have created at a target.

"Ours" is decided by what this sync recorded before sending, never inferred from what the target
holds. Before a batch goes out, the identities it may create are written to a file beside the sync's
state, so the record survives a kill, a lost answer and the next DAG run (a task state store would
only survive a retry). When a later send meets "already there", the adapter counts it as done only
for an identity recorded here, or one in the committed baseline; anything else is someone else's.

At each commit the records are folded into one file, less what the new baseline now holds (it is
ours by the baseline) and what this run removed for good. What is left are creates this sync sent and
never saw confirmed. Each keeps the row as it was sent (its key and payload) and whether an attempt may
have landed (``unconfirmed``: true unless every attempt was refused, ``rejected``, which means it did
not land). Once the row leaves the source, a mirror removes a record that may have landed although no
answer said so.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from airflow_provider_zeotap.sync.commit import final_outcomes_sql
from airflow_provider_zeotap.sync.diff import fetch_row, quote_literal, scratch_duckdb
from airflow_provider_zeotap.sync.models import APPLIED_OUTCOMES, IDENTITY_COLUMN, Outcome
from airflow_provider_zeotap.sync.storage import SyncStorage, written_whole

log = logging.getLogger(__name__)


class OwnershipLog:
    def __init__(self, storage: SyncStorage, target_key: str) -> None:
        self.storage = storage
        self.target_key = target_key
        self.folder = storage.attempted_uri(target_key)

    def load(self) -> set[str]:
        """Identities recorded as attempted by earlier tries and runs (read once, before this try sends)."""
        identities: set[str] = set()
        for path in self._paths():
            identities.update(pq.read_table(path, columns=["identity"]).column(0).to_pylist())
        return identities

    def unconfirmed_identities(self) -> set[str]:
        """Recorded identities that may have landed.

        A record not yet folded has no answer on file (its run never committed): it may have landed.
        """
        identities: set[str] = set()
        for path in self._paths():
            table = pq.read_table(path, columns=["identity", "unconfirmed"]).to_pydict()
            identities.update(identity for identity, unconfirmed in zip(table["identity"], table["unconfirmed"])
                              if identity is not None and unconfirmed is not False)
        return identities

    def rows_sent(self, identities: set[str]) -> dict[str, dict[str, Any]]:
        """The row each of ``identities`` was last recorded with (``key``, ``payload``): a removal sends it.

        Only these rows are parsed; a large log of a run that never committed costs its identities alone.
        """
        rows: dict[str, dict[str, Any]] = {}
        for path in self._paths():
            table = pq.read_table(path, columns=["identity", "row"]).to_pydict()
            for identity, row in zip(table["identity"], table["row"]):
                if identity in identities and row is not None:
                    rows[identity] = json.loads(row)
        return rows

    def record(
        self, plan_id: str, batch_index: int, sent: Iterable[tuple[str, Mapping[str, Any], Mapping[str, Any]]]
    ) -> None:
        """Durably note the records a batch may create (identity, key, payload), before it is sent."""
        entries = list(sent)
        if not entries:
            return
        uri = self.storage.attempted_uri(self.target_key, f"{plan_id}-{batch_index:06d}.parquet")
        path = self.storage.to_local(uri)
        rows = [json.dumps({"key": dict(key), "payload": dict(payload)}, default=str, ensure_ascii=False)
                for _, key, payload in entries]
        table = pa.table({"identity": pa.array([identity for identity, _, _ in entries], type=pa.string()),
                          "row": pa.array(rows, type=pa.string()),
                          "unconfirmed": pa.nulls(len(entries), type=pa.bool_())})  # no answer yet
        with written_whole(path, durable=True) as partial:  # on disk before the batch goes out
            pq.write_table(table, partial)
        self.storage.publish(uri)

    def compact(
        self,
        *,
        snapshot_path: str,
        outcome_paths: Sequence[str],
        plan_id: str,
        snapshot_id: str,
        memory_limit: str | None = None,
    ) -> int:
        """Fold the records into one file, less what the baseline holds and what was removed; return its size.

        An identity sent more than once keeps one of its rows: any serves, as a removal needs only the key
        and the identity.

        ``outcome_paths``: the run's outcome files (an earlier try's too); only removals and rows left alone
        drop records. A record stays ``unconfirmed`` (may have landed) unless every attempt at it was refused:
        ``outcome_paths`` answer for the attempts of plan ``plan_id``; an attempt of another plan that was never
        folded had no answer on file (its run never committed).

        It reads the whole new baseline's identities and every outcome, so it runs under the task's
        ``memory_limit`` like the commit, with anti-joins and a grouping that spill to disk past it
        (``NOT IN`` would not).
        """
        every = self.storage.list_names(self.folder)
        names = [name for name in every if name.endswith(".parquet")]
        if not names:
            return 0

        def listed(chosen: list[str]) -> str:
            return "[" + ", ".join(quote_literal(self._path(name)) for name in chosen) + "]"

        answered = [name for name in names if name.startswith(f"{plan_id}-")]
        earlier = [name for name in names if name not in answered]
        uri = self.storage.attempted_uri(self.target_key, f"compacted-{snapshot_id}.parquet")
        out = self.storage.to_local(uri)
        records = " UNION ALL ".join(
            ([f'''SELECT "identity", "row", coalesce("unconfirmed", true) AS "unconfirmed"
                  FROM read_parquet({listed(earlier)})'''] if earlier else [])
            + ([f'''SELECT "identity", "row", "refused_identity" IS NULL AS "unconfirmed"
                    FROM read_parquet({listed(answered)}) AS "a"
                    LEFT JOIN ({_refused_identities_sql(outcome_paths)}) AS "refused"
                      ON "a"."identity" = "refused"."refused_identity"'''] if answered else [])
        )
        removed = _removed_identities_sql(outcome_paths)
        work = os.path.dirname(out)
        with scratch_duckdb(work, memory_limit=memory_limit) as con, written_whole(out) as partial:
            (rows,) = fetch_row(
                con,
                f"""
                COPY (
                    SELECT "identity", any_value("row") AS "row", bool_or("unconfirmed") AS "unconfirmed"
                    FROM ({records}) AS "a"
                    ANTI JOIN (SELECT "{IDENTITY_COLUMN}" AS "identity" FROM read_parquet({quote_literal(snapshot_path)})
                               WHERE "{IDENTITY_COLUMN}" IS NOT NULL) AS "held" USING ("identity")
                    ANTI JOIN ({removed}) AS "gone" USING ("identity")
                    WHERE "identity" IS NOT NULL
                    GROUP BY "identity"
                ) TO {quote_literal(partial)} (FORMAT parquet)
                """,
            )
        if rows:
            self.storage.publish(uri)
        elif os.path.exists(out):
            os.remove(out)
        leftovers = [name for name in every if name.endswith(".partial")]
        for name in names + leftovers:  # leftovers: records half-written by a killed task, never read
            if name != os.path.basename(out):
                self.storage.remove(self.storage.attempted_uri(self.target_key, name))
        log.info("Ownership records of this target: %d identities attempted but not in the baseline", rows)
        return int(rows)

    def _paths(self) -> Iterator[str]:
        for name in self._files():
            yield self._path(name)

    def _path(self, name: str) -> str:
        return self.storage.fetch(self.storage.attempted_uri(self.target_key, name))

    def _files(self) -> list[str]:
        return [name for name in self.storage.list_names(self.folder) if name.endswith(".parquet")]


def _refused_identities_sql(outcome_paths: Sequence[str]) -> str:
    """Identities whose create this run's destination refused: that attempt did not land."""
    return f"""SELECT DISTINCT "identity" AS "refused_identity" FROM ({final_outcomes_sql(outcome_paths)})
               WHERE "identity" IS NOT NULL AND "operation" NOT IN ('delete', 'remove')
                 AND "outcome" = {quote_literal(Outcome.REJECTED.value)}"""


def _removed_identities_sql(outcome_paths: Sequence[str]) -> str:
    """Identities this run removed for good (no longer anyone's at the target), and those it left alone.

    A row left alone (``skipped``) met a record that was at the target before this sync sent anything: it is
    someone else's, so the record written before the send must not make a later run take it for the sync's own.
    """
    applied = ", ".join(quote_literal(outcome.value) for outcome in APPLIED_OUTCOMES)
    return f"""SELECT "identity" FROM ({final_outcomes_sql(outcome_paths)})
               WHERE "identity" IS NOT NULL AND (
                   ("operation" IN ('delete', 'remove') AND "outcome" IN ({applied}))
                   OR ("operation" NOT IN ('delete', 'remove') AND "outcome" = {quote_literal(Outcome.SKIPPED.value)}))"""
