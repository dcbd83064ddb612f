"""How the provider's operators fit an Airflow deployment: lineage, pools, executors and where state may live.

Kept apart from the operators so the rules are in one place and each operator calls them in one line:
- the sync Asset joins whatever inlets/outlets the DAG author gave (without it a task cannot reach its state);
- ``[zeotap_sync] connection_pools`` puts every sync task on one connection into one Airflow pool, because
  each task paces its own requests and only a pool keeps two tasks on one API key from adding up;
- a local ``state_uri`` on an executor whose tasks run on several machines is warned about at start, and a
  committed snapshot that is not there fails with the fix instead of a raw DuckDB error;
- a plan's ``state_uri`` is trusted only when the deployment knows it for this sync.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from airflow.sdk import Asset

from airflow_provider_zeotap.errors import ConfigurationError
from airflow_provider_zeotap.sync.storage import default_state_uri, is_local

CONFIG_SECTION = "zeotap_sync"
POOL_PREFIX = "zeotap_sync__"
#: Executors that run every task on the scheduler's machine, so a local folder is seen by all of them.
LOCAL_EXECUTORS = frozenset({"LocalExecutor", "SequentialExecutor", "DebugExecutor"})
SHARED_STATE_EXAMPLE = "s3://bucket/zeotap_sync_state"


def with_sync_asset(given: Any, asset: Asset) -> list[Any]:
    """The author's inlets or outlets, plus the sync's Asset unless it is already there.

    ``setdefault`` would drop the sync Asset as soon as an author names an asset of their own, and the
    task then cannot reach the sync's state store at run time. Assets are matched by name, which is how
    Airflow keys ``context["asset_state_store"]``.
    """
    if given is None:
        items: list[Any] = []
    elif isinstance(given, (list, tuple)):
        items = list(given)
    else:
        items = [given]
    if not any(getattr(item, "name", None) == asset.name or getattr(item, "uri", None) == asset.uri for item in items):
        items.append(asset)
    return items


def connection_pool(conn_id: str) -> str:
    """The Airflow pool that the sync tasks of one connection share, with ``connection_pools`` on."""
    return f"{POOL_PREFIX}{conn_id}"


def connection_pools_enabled() -> bool:
    """``[zeotap_sync] connection_pools`` (default False: pools must exist before tasks can use them)."""
    from airflow.sdk.configuration import conf

    return conf.getboolean(CONFIG_SECTION, "connection_pools", fallback=False)


def default_pool(operator: Any, conn_id: str) -> None:
    """With ``connection_pools`` on, put a sync task without a pool of its own into its connection's pool.

    Each task paces itself to the API's whole limit; two tasks on one key at once would send twice that.
    A pool with one slot per connection lets the scheduler run one of them at a time. The option is off by
    default because a task in a pool that does not exist is never scheduled, and a DAG file cannot see the
    metadata DB's pools when it is parsed.
    """
    from airflow.sdk.bases.operator import DEFAULT_POOL_NAME

    if operator.pool == DEFAULT_POOL_NAME and connection_pools_enabled():
        operator.pool = connection_pool(conn_id)


def executor_of(task: Any) -> str:
    """The class name of the executor that runs ``task``: its own ``executor``, else Airflow's default one."""
    name = getattr(task, "executor", None)
    if not name:
        from airflow.sdk.configuration import conf

        name = (conf.get("core", "executor", fallback="") or "LocalExecutor").split(",")[0]
    return name.strip().rsplit(":", 1)[-1].rsplit(".", 1)[-1]


def warn_if_state_is_local(task: Any, state_uri: str, log: logging.Logger | Any) -> None:
    """Warn when a local ``state_uri`` meets an executor that may run the next task on another machine."""
    executor = executor_of(task)
    if is_local(state_uri) and executor not in LOCAL_EXECUTORS:
        log.warning(
            "Sync state is on a local disk (%s) but tasks run on the %s, so the next diff or sync may run on a "
            "machine that cannot see these files. Set [zeotap_sync] state_uri (or AIRFLOW__ZEOTAP_SYNC__STATE_URI) to "
            "shared object storage, e.g. %s, unless every worker mounts this path. See docs/deployment.md, 'State "
            "on shared storage'.",
            state_uri,
            executor,
            SHARED_STATE_EXAMPLE,
        )


def missing_state_error(task: Any, sync_id: str, what: str, uri: str, state_uri: str) -> ConfigurationError:
    """The error for a state file the pointer names but this worker cannot find, with the deployment fix."""
    executor = executor_of(task)
    if is_local(state_uri):
        cause = (
            f"The state_uri {state_uri} is a folder on this machine's disk. When tasks run on several machines "
            f"(a Celery or Kubernetes executor; this deployment's is the {executor}), the task that wrote the file "
            f"ran on another one. Set [zeotap_sync] state_uri (or AIRFLOW__ZEOTAP_SYNC__STATE_URI) to shared object "
            f"storage, e.g. {SHARED_STATE_EXAMPLE}, with the object-storage connection it needs (docs/deployment.md, "
            f"'State on shared storage')"
        )
    else:
        cause = f"Check that state_uri {state_uri} is the same for every worker and that nothing deletes its files"
    return ConfigurationError(
        f"Sync {sync_id!r}: the {what} {uri} is not there, although Airflow's metadata DB says it was written. "
        f"{cause}. Nothing was read or sent. If the files are really gone, start again with a new sync_id."
    )


def trusted_state_uris(author_state_uris: Iterable[str | None], render: Any) -> set[str]:
    """The state locations a plan for this task may name: the configured one, and the ones the DAG file gave.

    ``author_state_uris`` come from the DAG file (the diff task's ``state_uri``, a literal plan's); they may be
    templates, which ``render`` resolves in the running task's context.
    """
    trusted = {default_state_uri().rstrip("/")}
    for uri in author_state_uris:
        if uri:
            trusted.add(str(render(uri)).rstrip("/"))
    return trusted


def author_state_uris(plan: Any) -> tuple[str, ...]:
    """The state URIs the DAG file itself gives for ``plan``: the diff task's, or a plan written in the file.

    A plan rendered from a template (XCom, ``dag_run.conf``) is input; only the DAG file is the author's word.
    """
    diff_task = getattr(plan, "operator", None)
    if diff_task is not None:
        state_uri = getattr(diff_task, "state_uri", None)
        return (state_uri,) if isinstance(state_uri, str) else ()
    literal = plan.get("state_uri") if isinstance(plan, dict) else getattr(plan, "state_uri", None)
    if isinstance(literal, str) and "{{" not in literal:
        return (literal,)
    return ()


#: The result fields a finished sync puts on its Asset's event, for DAGs scheduled on the sync.
LANDING_FIELDS = ("sync_id", "destination", "mode", "dry_run", "succeeded", "rejected", "failed", "skipped",
                  "rejected_rows_uri")


def describe_landing(context: Any, sync_id: str, result: Any) -> None:
    """Put what the sync delivered on the event its Asset receives when the task succeeds.

    A DAG scheduled on the sync (lineage: "run this report once the audience landed") then reads the counts
    from the triggering or inlet event itself, with no XCom pull across DAGs, and the Asset's page in the UI
    shows them beside each event.
    """
    from airflow_provider_zeotap.sync.state import sync_asset

    events = context.get("outlet_events") if hasattr(context, "get") else None
    if events is None:
        return
    landed = result.model_dump(mode="json", include=set(LANDING_FIELDS))
    landed["plan_id"] = result.plan_id
    landed["snapshot_id"] = result.committed.snapshot_id if result.committed else None
    events[sync_asset(sync_id)].extra.update(landed)
