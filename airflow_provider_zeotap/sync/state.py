"""The committed-snapshot pointer, kept in the Airflow metadata store (asset state store).

One Asset per sync (``zeotap-sync://<sync_id>``) holds a small JSON pointer; the rows stay in the
snapshot files. The diff task declares the asset as an inlet (it reads the pointer), the destination
task as an outlet (it moves the pointer), so other DAGs can be scheduled on a finished sync.
"""

from __future__ import annotations

from typing import Any, Protocol

from airflow.sdk import Asset

from airflow_provider_zeotap.errors import StaleBaseError, ZeotapProviderError
from airflow_provider_zeotap.sync.models import CommittedState, Plan
from airflow_provider_zeotap.sync.storage import validate_sync_id

ASSET_SCHEME = "zeotap-sync"
POINTER_KEY = "committed"


class KeyValueStore(Protocol):
    """What the engine needs of Airflow's state store accessors (and what tests can stand in for)."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def set(self, key: str, value: Any) -> None: ...


def sync_asset(sync_id: str) -> Asset:
    uri = f"{ASSET_SCHEME}://{validate_sync_id(sync_id)}"
    return Asset(name=uri, uri=uri, group="zeotap-sync")


def asset_store(context: Any, sync_id: str) -> KeyValueStore:
    """The asset state store accessor of this sync, from a task's context."""
    try:
        return context["asset_state_store"][sync_asset(sync_id)]
    except KeyError:
        raise ZeotapProviderError(
            f"This task cannot reach the state of sync {sync_id!r}: it must declare the asset "
            f"{ASSET_SCHEME}://{sync_id} as an inlet or outlet (the provider's operators do this themselves)."
        ) from None


class CommittedPointer:
    def __init__(self, store: KeyValueStore) -> None:
        self.store = store

    def read(self) -> CommittedState | None:
        value = self.store.get(POINTER_KEY)
        return CommittedState.model_validate(value) if value else None

    def compare_and_set(self, plan: Plan, new: CommittedState) -> None:
        """Move the pointer only if it still is the plan's base, or a commit of this same plan.

        The second case lets a retried sync task commit its plan again with more acknowledged rows: the
        new snapshot is computed from the plan's base either way, so nothing is applied twice.

        The asset state store has no atomic swap, so this is a check just before the write: it catches a
        run that committed while this one delivered, not two commits in the same instant. Sync DAGs keep
        ``max_active_runs=1`` for that.
        """
        current = self.read()
        base_id = plan.base.snapshot_id if plan.base else None
        current_id = current.snapshot_id if current else None
        if current_id != base_id and not (current and current.plan_id == plan.plan_id):
            raise StaleBaseError(
                f"Sync {plan.sync_id!r}: the committed state moved since plan {plan.plan_id} was computed "
                f"(expected base {base_id!r}, found {current_id!r}, written by plan "
                f"{current.plan_id if current else None!r}). Another run committed in between; nothing was "
                "overwritten. Re-run the DAG so the diff starts from the new base, and keep max_active_runs=1 "
                "for sync DAGs."
            )
        self.store.set(POINTER_KEY, new.model_dump(mode="json"))
