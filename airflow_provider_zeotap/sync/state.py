"""The committed-snapshot pointer, kept in the Airflow metadata store (asset state store).

One Asset per sync (``zeotap-sync://<sync_id>``) holds a small JSON pointer; the rows stay in the
snapshot files. The diff task declares the asset as an inlet (it reads the pointer), the destination
task as an outlet (it moves the pointer), so other DAGs can be scheduled on a finished sync.
"""

from __future__ import annotations

from typing import Any, Protocol

from airflow.sdk import Asset

from airflow_provider_zeotap.errors import ConfigurationError, StaleBaseError, ZeotapProviderError
from airflow_provider_zeotap.sync.models import Binding, CommittedState, Plan
from airflow_provider_zeotap.sync.storage import validate_sync_id

ASSET_SCHEME = "zeotap-sync"
POINTER_KEY = "committed"
#: Which sync task took which plan: one plan feeds exactly one sync task.
CLAIM_KEY = "plan_claim"


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

    def check(self, plan: Plan) -> CommittedState | None:
        """Refuse a plan whose base is no longer the committed state; return the current state.

        Runs before the first write as well as at commit: a cleared and re-run old sync task must not
        deliver a stale plan (its writes would never be recorded, and would undo the newer run's).
        A commit of this same plan (a retried task) is the plan's own and passes.
        """
        current = self.read()
        base_id = plan.base.snapshot_id if plan.base else None
        current_id = current.snapshot_id if current else None
        if current_id != base_id and not (current and current.plan_id == plan.plan_id):
            raise StaleBaseError(
                f"Sync {plan.sync_id!r}: plan {plan.plan_id} is stale. It was computed against "
                f"{_describe(plan.base)}, but since then {_describe(current)} was committed. Nothing was sent "
                "or overwritten. Run the DAG again (a new run diffs against the new baseline) instead of "
                "clearing an old sync task, and keep max_active_runs=1 for sync DAGs."
            )
        return current

    def compare_and_set(self, plan: Plan, new: CommittedState) -> None:
        """Move the pointer only if it still is the plan's base, or a commit of this same plan.

        The second case lets a retried sync task commit its plan again with more acknowledged rows: the
        new snapshot is computed from the plan's base either way, so nothing is applied twice.

        The asset state store has no atomic swap, so this is a check just before the write: it catches a
        run that committed while this one delivered, not two commits in the same instant. Sync DAGs keep
        ``max_active_runs=1`` for that.
        """
        self.check(plan)
        self.store.set(POINTER_KEY, new.model_dump(mode="json"))

    def claim(self, plan: Plan, binding: Binding) -> None:
        """Take the plan for this sync task; refuse if another task already took it.

        Two tasks delivering one plan would each commit their own outcomes over the other's: rows one
        of them failed would be recorded as delivered by the other's commit, and never sent again.
        """
        claim = self.store.get(CLAIM_KEY) or {}
        holder = claim.get("task") if isinstance(claim, dict) else None
        me = f"{binding.dag_id}.{binding.task_id}"
        if claim.get("plan_id") == plan.plan_id and holder and holder != me:
            raise ConfigurationError(
                f"Sync {plan.sync_id!r}: plan {plan.plan_id} is already delivered by task {holder}; one plan feeds "
                f"exactly one sync task, so {me} sends nothing. To send one source to several destinations, give "
                "each destination its own diff task with its own sync_id (see docs/how-a-sync-works.md, 'One source, "
                "several destinations')."
            )
        self.store.set(CLAIM_KEY, {"plan_id": plan.plan_id, "task": me})


def _describe(state: CommittedState | None) -> str:
    if state is None:
        return "no committed state (a first run)"
    who = ""
    if state.binding is not None:
        who = f" by DAG {state.binding.dag_id!r} task {state.binding.task_id!r}"
    if state.run_id:
        who += f" in run {state.run_id!r}"
    return f"snapshot {state.snapshot_id} (plan {state.plan_id}, committed{who} at {state.committed_at:%Y-%m-%d %H:%M:%S} UTC)"
