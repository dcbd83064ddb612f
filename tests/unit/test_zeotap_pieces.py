"""Small Zeotap pieces: mapping targets and sections, parse-time checks of the operators, the profile file."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from airflow_provider_zeotap.destinations.zeotap import check_field_mapping, sections_of, split_target
from airflow_provider_zeotap.errors import ConfigurationError
from airflow_provider_zeotap.operators.profile_files import ProfileWriter, output_format


def test_targets_name_their_section_and_a_bare_name_is_profile():
    assert split_target("first_name") == ("profile", "first_name")
    assert split_target("consent.gdpr_advertising") == ("consent", "gdpr_advertising")
    assert split_target("mkt_preferences.sms.optin") == ("mkt_preferences", "sms.optin")
    with pytest.raises(ConfigurationError, match="'adress.city' names no Zeotap section"):
        split_target("adress.city")
    assert sections_of({"a": 1, "profile.b": None, "consent.c": True}) == {
        "profile": {"a": 1, "b": None}, "consent": {"c": True}, "mkt_preferences": {}}


def test_two_targets_for_one_field_are_refused():
    with pytest.raises(ConfigurationError, match="'first_name' and 'profile.first_name' both mean profile.first_name"):
        check_field_mapping({"first_name": "a", "profile.first_name": "b"})


def test_the_operators_refuse_bad_settings_when_the_dag_is_parsed():
    from airflow_provider_zeotap.operators.zeotap import (
        ZeotapProfileDeleteOperator,
        ZeotapProfileFetchOperator,
        ZeotapProfileSyncOperator,
    )

    with pytest.raises(ConfigurationError, match="take sync_mode 'upsert' or 'mirror', got 'delete'"):
        ZeotapProfileSyncOperator(task_id="a", plan={}, sync_id="s", id_type="email", sync_mode="delete")
    with pytest.raises(ConfigurationError, match="names no Zeotap section"):
        ZeotapProfileSyncOperator(task_id="b", plan={}, sync_id="s", id_type="email",
                                  field_mapping={"traits.tier": "tier"})
    with pytest.raises(ConfigurationError, match="id_type must name"):
        ZeotapProfileSyncOperator(task_id="c", plan={}, sync_id="s", id_type="")
    with pytest.raises(ConfigurationError, match="exactly one source of ids: ids, source_uri, plan; got"):
        ZeotapProfileDeleteOperator(task_id="d", id_type="email", ids=["a"], source_uri="file:///x.csv")
    with pytest.raises(ConfigurationError, match="sql needs conn_id"):
        ZeotapProfileFetchOperator(task_id="e", id_type="email", sql="SELECT 1", output_uri="file:///x.parquet")
    with pytest.raises(ConfigurationError, match="output_format must be one of"):
        ZeotapProfileFetchOperator(task_id="f", id_type="email", ids=["a"], output_uri="file:///x.csv")


def test_profiles_go_to_parquet_as_json_text_and_to_json_lines_as_answered(tmp_path):
    profile = {"ucid": "u1", "region": "EU", "ids": {"email": "a@x"}, "profile": {"n": 1, "tags": ["a"]},
               "consent": {}, "mkt_preferences": {"sms": True}, "created_ts": 1700000000000, "updated_ts": None}
    assert output_format("s3://b/p.jsonl", None) == "jsonl" and output_format("s3://b/p", "parquet") == "parquet"
    writer = ProfileWriter(str(tmp_path / "p.parquet"), "parquet")
    writer.write([profile])
    writer.close()
    (row,) = pq.read_table(tmp_path / "p.parquet").to_pylist()
    assert (row["ucid"], json.loads(row["profile"]), json.loads(row["created_ts"]), row["updated_ts"]) == (
        "u1", {"n": 1, "tags": ["a"]}, 1700000000000, None)
    lines = ProfileWriter(str(tmp_path / "p.jsonl"), "jsonl")
    lines.write([profile])
    lines.close()
    assert json.loads((tmp_path / "p.jsonl").read_text()) == profile


def test_the_zeotap_hook_paces_two_percent_under_the_published_minute():
    from airflow_provider_zeotap.hooks.zeotap import ZeotapProfileHook
    from airflow_provider_zeotap.http import Pacer

    pacer = Pacer(ZeotapProfileHook.default_limits)
    assert pacer.interval == pytest.approx(60 / 10_000 * 1.02)
    assert 60 / pacer.interval <= 10_000 and ZeotapProfileHook.default_limits.max_in_flight == 200


def test_rows_of_a_batch_build_their_requests_only_as_places_in_flight_free_up():
    """A new batch's rows wait at the gate; all 500 building at once held the loop 150 ms and cost 5% of the rate."""
    import asyncio
    from types import SimpleNamespace

    from airflow_provider_zeotap.destinations.zeotap import ZeotapProfiles
    from airflow_provider_zeotap.http import Limits
    from airflow_provider_zeotap.sync.diff import Change
    from airflow_provider_zeotap.sync.destination import Outcome, OutboundRow
    from airflow_provider_zeotap.sync.modes import Operation

    class Hook(SimpleNamespace):
        entered = 0
        peak = 0

        async def aupsert_profile(self, id_type, id, **sections):
            Hook.entered += 1
            Hook.peak = max(Hook.peak, Hook.entered)
            await asyncio.sleep(0.001)
            Hook.entered -= 1
            return []

        async def aclose(self):
            pass

    hook = Hook(limits=Limits(rate_per_minute=10_000, max_in_flight=4))
    adapter = ZeotapProfiles(hook, id_type="user_id")  # type: ignore[arg-type]
    rows = [OutboundRow(row_id=i, change=Change.ADDED, key={"user_id": f"u{i}"}, payload={"a": i}) for i in range(50)]

    async def two_batches():
        first, second = await asyncio.gather(adapter.asend(Operation.UPSERT, rows[:25]),
                                             adapter.asend(Operation.UPSERT, rows[25:]))
        await adapter.aclose()
        return first + second

    outcomes = asyncio.run(two_batches())
    assert [o.outcome for o in outcomes] == [Outcome.SUCCEEDED] * 50
    assert Hook.peak == 4  # the hook's max_in_flight, across both batches
    assert asyncio.run(two_batches()) and Hook.peak == 4  # a second delivery, on a new loop, gets a new gate
