"""The operators as guests of an Airflow deployment: lineage, pools, executors, opt-in fixtures, strict plans."""

from __future__ import annotations

import importlib.metadata
import logging
from datetime import datetime, timezone

import pytest
from airflow.sdk import Asset

from airflow_provider_zeotap.errors import ConfigurationError
from airflow_provider_zeotap.operators.diff import SyncDiffOperator
from airflow_provider_zeotap.operators.permutive import PermutiveSyncOperator
from airflow_provider_zeotap.operators.personyze import PersonyzeSyncOperator
from airflow_provider_zeotap.sync.models import CommittedState, Plan, PlanCounts
from airflow_provider_zeotap.sync.state import sync_asset
from airflow_provider_zeotap.sync.storage import new_plan_id, validate_sync_id
from tests.support.sync_harness import DictStore

IMPORT_ID = "32f8e031-c532-41bb-b25e-65bdb677a96f"


class AssetStores:
    """``context["asset_state_store"][asset]``: one store per asset, as Airflow gives it."""

    def __init__(self) -> None:
        self.stores: dict[str, DictStore] = {}

    def __getitem__(self, asset) -> DictStore:
        return self.stores.setdefault(asset.name, DictStore())


# --- Lineage -------------------------------------------------------------------------------------------------


def test_author_outlets_and_inlets_keep_the_sync_asset_once():
    from airflow.sdk import DAG

    export = Asset("s3://bucket/exports/customers")
    with DAG(dag_id="lineage", schedule=None):
        diff = SyncDiffOperator(task_id="diff", sync_id="lineage", rows=[], primary_key="id",
                                inlets=[Asset("warehouse://customers")])
        sync = PersonyzeSyncOperator(task_id="sync", plan=diff.output, object_type="users", sync_mode="upsert",
                                     outlets=export)
    assert [a.name for a in diff.inlets] == ["warehouse://customers", "zeotap-sync://lineage"]
    assert [a.name for a in sync.outlets] == ["s3://bucket/exports/customers", "zeotap-sync://lineage"]

    # The author named the sync asset already: it is not added twice.
    again = SyncDiffOperator(task_id="diff2", sync_id="lineage2", rows=[], primary_key="id",
                             inlets=[sync_asset("lineage2"), Asset("warehouse://x")])
    assert [a.name for a in again.inlets] == ["zeotap-sync://lineage2", "warehouse://x"]


# --- Pools ---------------------------------------------------------------------------------------------------


def test_connection_pools_default_the_pool_per_connection_only_when_on_and_not_given(monkeypatch):
    plan = {"sync_id": "pooled"}

    def personyze(**kwargs):
        return PersonyzeSyncOperator(task_id="p", plan=plan, sync_id="pooled", object_type="users",
                                     sync_mode="upsert", **kwargs)

    assert personyze().pool == "default_pool"  # the option is off by default: nothing changes
    monkeypatch.setenv("AIRFLOW__ZEOTAP_SYNC__CONNECTION_POOLS", "True")
    assert personyze().pool == "zeotap_sync__personyze_default"
    assert personyze(personyze_conn_id="personyze_eu").pool == "zeotap_sync__personyze_eu"
    assert personyze(pool="my_pool").pool == "my_pool"  # the author's pool wins
    permutive = PermutiveSyncOperator(task_id="q", plan=plan, sync_id="pooled", import_id=IMPORT_ID,
                                      audience_mode="mirror", permutive_conn_id="permutive_prod")
    assert permutive.pool == "zeotap_sync__permutive_prod"
    # The diff task calls no API: it never takes a connection's slot.
    assert SyncDiffOperator(task_id="d", sync_id="pooled", rows=[], primary_key="id").pool == "default_pool"


def test_the_provider_declares_its_config_options():
    from airflow_provider_zeotap.get_provider_info import get_provider_info

    options = get_provider_info()["config"]["zeotap_sync"]["options"]
    assert options["connection_pools"]["type"] == "boolean"
    assert options["connection_pools"]["default"] == "False"
    assert "state_uri" in options


# --- Executors and local state -------------------------------------------------------------------------------


@pytest.fixture
def recorded_log(monkeypatch, caplog):
    """The operators' ``self.log`` as a plain logger that caplog sees (Airflow's own goes through structlog)."""
    logger = logging.getLogger("tests.airflow_citizen")
    monkeypatch.setattr(SyncDiffOperator, "log", property(lambda self: logger))
    caplog.set_level(logging.INFO, logger="tests.airflow_citizen")
    return caplog


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize(
    ("executor", "state", "warned"),
    [
        ("CeleryExecutor", "local", True),
        ("airflow.providers.cncf.kubernetes.executors.kubernetes_executor.KubernetesExecutor", "local", True),
        ("LocalExecutor", "local", False),
        ("CeleryExecutor", "remote", False),
    ],
)
def test_a_local_state_uri_on_a_distributed_executor_is_warned_about_at_start(
    tmp_path, monkeypatch, recorded_log, executor, state, warned
):
    from airflow.sdk.io import attach
    import fsspec

    attach(protocol="memory", fs=fsspec.filesystem("memory"))
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", executor)
    state_uri = f"file://{tmp_path}/state" if state == "local" else "memory://bucket/citizen_state"
    diff = SyncDiffOperator(task_id="diff", sync_id="exec_warn", rows=[{"id": 1}], primary_key="id",
                            state_uri=state_uri)
    diff.execute({"asset_state_store": AssetStores()})
    found = [m for m in warnings_of(recorded_log) if "local disk" in m]
    assert bool(found) is warned, warnings_of(recorded_log)
    if warned:
        assert executor.rsplit(".", 1)[-1] in found[0]
        assert "[zeotap_sync] state_uri" in found[0] and "s3://" in found[0]


def test_the_task_executor_overrides_the_default_one(tmp_path, monkeypatch, recorded_log):
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "LocalExecutor,CeleryExecutor")
    for executor, warned in ((None, False), ("CeleryExecutor", True)):
        recorded_log.clear()
        diff = SyncDiffOperator(task_id="diff", sync_id="exec_task", rows=[{"id": 1}], primary_key="id",
                                state_uri=f"file://{tmp_path}/state", executor=executor)
        diff.execute({"asset_state_store": AssetStores()})
        assert any("local disk" in m for m in warnings_of(recorded_log)) is warned


# --- Opt-in fixtures -----------------------------------------------------------------------------------------


def test_installing_the_provider_registers_no_pytest_plugin():
    ours = [
        entry for entry in importlib.metadata.entry_points(group="pytest11")
        if entry.dist is not None and entry.dist.metadata["Name"] == "airflow-provider-zeotap"
        or entry.value.startswith("airflow_provider_zeotap")
    ]
    assert ours == []
    # The distribution is installed (so the check above looked at real metadata).
    assert importlib.metadata.distribution("airflow-provider-zeotap").entry_points.select(group="pytest11") == ()


def test_this_suite_loads_the_fixtures_by_opting_in(request):
    assert request.config.pluginmanager.has_plugin("airflow_provider_zeotap.testing.pytest_plugin")


# --- Strict inputs -------------------------------------------------------------------------------------------


def test_a_sync_id_with_a_trailing_newline_is_refused():
    assert validate_sync_id("users") == "users"
    for bad in ("users\n", "users\n\n", "../users", "users/x", ".users"):
        with pytest.raises(ConfigurationError, match="sync_id"):
            validate_sync_id(bad)
    with pytest.raises(ConfigurationError, match="sync_id"):
        SyncDiffOperator(task_id="diff", sync_id="users\n", rows=[], primary_key="id")


STATE = "file:///srv/zeotap_sync_state"


def good_plan(**overrides) -> dict:
    """A plan as the diff task writes it, on its second run (with a base), as plain JSON."""
    plan_id = new_plan_id()
    base_plan = new_plan_id()
    snapshot_id = f"{base_plan}-20260101T000000000000"
    folder = f"{STATE}/users/plans/{plan_id}"
    plan = Plan(
        sync_id="users", plan_id=plan_id, primary_key=["id"], columns=["id"], source_columns=["id"],
        counts=PlanCounts(), state_uri=STATE, snapshot_uri=f"{folder}/snapshot.parquet",
        changes_uri=f"{folder}/changes.parquet", invalid_uri=f"{folder}/invalid.parquet",
        base=CommittedState(
            snapshot_id=snapshot_id, snapshot_uri=f"{STATE}/users/committed/{snapshot_id}.parquet",
            plan_id=base_plan, rows=1, committed_at=datetime.now(timezone.utc), primary_key=["id"],
            rejected_uri=f"{STATE}/users/committed/{snapshot_id}.rejected.jsonl",
        ),
        created_at=datetime.now(timezone.utc),
    ).model_dump(mode="json")
    for dotted, value in overrides.items():
        target = plan
        *path, last = dotted.split(".")
        for name in path:
            target = target[name]
        target[last] = value(plan) if callable(value) else value
    return plan


def test_a_plan_as_the_diff_task_writes_it_passes():
    Plan.model_validate(good_plan()).check_paths({STATE})


MALICIOUS = {
    "dot-dot in changes_uri": ({"changes_uri": lambda p: p["changes_uri"].replace("/plans/", "/plans/../../../")},
                               "changes_uri"),
    "percent-encoded dot-dot": ({"snapshot_uri": lambda p: p["snapshot_uri"].replace("/plans/", "/%2e%2e/%2E%2E/")},
                                "snapshot_uri"),
    "another sync's folder": ({"changes_uri": lambda p: p["changes_uri"].replace("/users/", "/orders/")},
                              "changes_uri"),
    "file:///etc": ({"invalid_uri": "file:///etc/passwd"}, "invalid_uri"),
    "another host": ({"snapshot_uri": lambda p: p["snapshot_uri"].replace("file:///", "file://evil/")},
                     "snapshot_uri"),
    "query string": ({"changes_uri": lambda p: p["changes_uri"] + "?x=1"}, "changes_uri"),
    "base snapshot elsewhere": ({"base.snapshot_uri": "file:///etc/shadow"}, "base.snapshot_uri"),
    "base rejected of another sync": (
        {"base.rejected_uri": lambda p: p["base"]["rejected_uri"].replace("/users/", "/orders/")},
        "base.rejected_uri",
    ),
    "state_uri moved to /etc": (
        {"state_uri": "file:///etc",
         **{f: (lambda f: lambda p: p[f].replace(STATE, "file:///etc"))(f)
            for f in ("snapshot_uri", "changes_uri", "invalid_uri")}},
        "state_uri",
    ),
    "plan_id that is a path": ({"plan_id": "../../etc"}, "plan_id"),
    "plan_id with a newline": ({"plan_id": lambda p: p["plan_id"] + "\n"}, "plan_id"),
    "plan_id not made by the diff": ({"plan_id": "p1"}, "plan_id"),
    "sync_id with a newline": ({"sync_id": "users\n"}, "sync_id"),
    "base.snapshot_id not made by a commit": ({"base.snapshot_id": "x"}, "base.snapshot_id"),
}


@pytest.mark.parametrize("case", list(MALICIOUS), ids=list(MALICIOUS))
def test_a_hand_made_plan_is_refused_naming_the_field(case):
    overrides, field = MALICIOUS[case]
    with pytest.raises((ConfigurationError, ValueError)) as caught:
        Plan.model_validate(good_plan(**overrides)).check_paths({STATE})
    assert field in str(caught.value)



def test_a_sync_task_whose_plan_files_this_worker_cannot_see_names_the_fix(tmp_path, monkeypatch):
    """The first run on two workers: the diff wrote its plan on one machine, the sync task runs on another."""
    from tests.support.sync_harness import RecordingDestination
    from tests.unit.test_remote_state import RecordingSyncOperator

    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    context = {"asset_state_store": AssetStores(), "task_state_store": DictStore()}
    plan = SyncDiffOperator(task_id="diff", sync_id="two_workers", rows=[{"id": 1}], primary_key="id",
                            state_uri=f"file://{tmp_path}/state").execute(context)
    (tmp_path / plan["changes_uri"].removeprefix(f"file://{tmp_path}/")).unlink()
    destination = RecordingDestination()
    sync = RecordingSyncOperator(task_id="sync", plan=plan, sync_id="two_workers", destination=destination)
    with pytest.raises(ConfigurationError) as caught:
        sync.execute(context)
    message = str(caught.value)
    assert "plan's changes file" in message and "CeleryExecutor" in message
    assert "[zeotap_sync] state_uri" in message and "s3://bucket/zeotap_sync_state" in message
    assert destination.calls == []
