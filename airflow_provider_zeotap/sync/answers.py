"""Answers a batch got before it ended, kept so that a task killed mid-batch re-sends only the rows without one.

The checkpoint marks whole batches. A destination that answers row by row within a batch (Zeotap: one
request per row, up to 200 in flight across two batches) would lose, at a kill, the answers of every row of
its unfinished batches, and the retry would send them all again: up to two batches, where only the rows in
flight had no answer. So each answer the destination reports (``Destination.answered``) is appended to its
batch's file as it comes, one ``write`` each: the operating system holds it once the call returns, so it
survives the task process's death (not the machine's). The file goes once the batch's outcomes are written.
A failed row had no answer worth keeping: it is sent again.

The files are local, beside the plan's delivery files: a retry on the same worker, or with the state on a
shared disk, finds them. A retry elsewhere, with the state in object storage, finds none and sends the
unfinished batches whole, which is safe (every retry re-checks what it sends), only slower.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from airflow_provider_zeotap.sync.destination import RowOutcome
from airflow_provider_zeotap.sync.models import Outcome


class AnswerJournal:
    """Per-batch files of row answers, in one local folder of the plan."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._files: dict[int, int] = {}  # batch index -> open descriptor, from its first answer
        self._batch_of: dict[int, int] = {}  # row id -> batch index, for the batches in flight

    def _path(self, batch_index: int) -> str:
        return os.path.join(self.folder, f"answers-{batch_index:06d}.jsonl")

    def earlier(self, batch_index: int) -> dict[int, RowOutcome]:
        """The answers an earlier try of this task got for the batch's rows, by row id."""
        answers: dict[int, RowOutcome] = {}
        try:
            with open(self._path(batch_index), encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except FileNotFoundError:
            return answers
        for line in lines:
            try:
                entry = json.loads(line)
                outcome = RowOutcome(int(entry["row_id"]), Outcome(entry["outcome"]), entry.get("reason"),
                                     bool(entry.get("permanent")))
            except (ValueError, KeyError, TypeError):
                continue  # the last line, cut by the kill: that row is sent again
            answers[outcome.row_id] = outcome
        return answers

    def open(self, batch_index: int, row_ids: Iterable[int]) -> None:
        """The batch is in flight: its rows' answers are kept from now on (after an earlier try's, if any)."""
        for row_id in row_ids:
            self._batch_of[row_id] = batch_index

    def add(self, outcome: RowOutcome) -> None:
        """Keep one answer of a batch in flight; failures and rows of no open batch are not kept."""
        if outcome.outcome is Outcome.FAILED:
            return
        batch_index = self._batch_of.get(outcome.row_id)
        if batch_index is None:
            return
        descriptor = self._files.get(batch_index)
        if descriptor is None:
            os.makedirs(self.folder, exist_ok=True)
            descriptor = os.open(self._path(batch_index), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._files[batch_index] = descriptor
        line = json.dumps({"row_id": outcome.row_id, "outcome": outcome.outcome.value, "reason": outcome.reason,
                           "permanent": outcome.permanent}, ensure_ascii=False)
        os.write(descriptor, (line + "\n").encode("utf-8"))

    def close(self, batch_index: int, row_ids: Iterable[int]) -> None:
        """The batch is no longer in flight: later answers of its rows are not kept."""
        descriptor = self._files.pop(batch_index, None)
        if descriptor is not None:
            os.close(descriptor)
        for row_id in row_ids:
            self._batch_of.pop(row_id, None)

    def discard(self, batch_index: int) -> None:
        """The batch's outcomes are written: its answers are no longer needed."""
        try:
            os.remove(self._path(batch_index))
        except FileNotFoundError:
            pass
