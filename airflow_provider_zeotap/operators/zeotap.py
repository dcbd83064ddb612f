"""Zeotap Profile API operators: sync profiles from a plan, delete profiles, fetch profiles to a file."""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperator

from airflow_provider_zeotap.destinations.zeotap import (
    SYNC_MODES,
    DeletionList,
    ZeotapProfiles,
    check_field_mapping,
)
from airflow_provider_zeotap.errors import ConfigurationError
from airflow_provider_zeotap.hooks.zeotap import ZeotapProfileHook
from airflow_provider_zeotap.operators.base import BaseSyncOperator
from airflow_provider_zeotap.operators.id_lists import check_one_source
from airflow_provider_zeotap.sync.destination import Capabilities, Destination
from airflow_provider_zeotap.sync.models import Plan

#: Files of the fetch and deletion runs go under ``state_uri/<LISTS_FOLDER>/`` unless the task names a place.
LISTS_FOLDER = "zeotap_lists"


def _check_id_type(task_id: str, id_type: Any) -> None:
    if not isinstance(id_type, str) or not id_type.strip():
        raise ConfigurationError(
            f"{task_id}: id_type must name the Zeotap id type of the ids (e.g. 'email', 'user_id'), got {id_type!r}."
        )


def _single_key(task_id: str, plan: Plan) -> str:
    if len(plan.primary_key) != 1:
        raise ConfigurationError(
            f"{task_id}: a Zeotap profile is keyed by one id, so the diff's primary_key must be one column (its value "
            f"is the id); got {plan.primary_key}."
        )
    return plan.primary_key[0]


class ZeotapProfileSyncOperator(BaseSyncOperator):
    """Sync a plan into Zeotap profiles: one ``POST /users`` per added or changed row, paced at the API's limit.

    The key column's value is the profile's id of type ``id_type``. ``field_mapping`` targets name the
    section: ``{"profile.first_name": "first_name", "consent.gdpr_advertising": "gdpr_ok",
    "mkt_preferences.sms_optin": "sms"}``; a target without a section goes to ``profile``. Without a
    ``field_mapping``, every non-key column goes to ``profile`` under its own name.

    :param id_type: the Zeotap id type of the key column's values (``email``, ``user_id``, a custom id).
    :param sync_mode: ``upsert`` writes added and changed rows; ``mirror`` also deletes the profiles of removed
        rows, 400 ids a call, and only profiles this sync delivered: a profile that existed before this sync
        wrote to it is left alone (reported as skipped), never updated or deleted by a mirror. The removal guards
        apply. The API cannot list an organisation's profiles, so ``take_over_existing`` is refused in a mirror.
    :param region: the data region (EU, UK, US...); default: the connection's ``region`` extra.
    :param org_id: the organisation id; default: the connection's ``org_id`` extra.
    """

    template_fields: Sequence[str] = (*BaseSyncOperator.template_fields, "id_type", "region", "org_id")

    def __init__(
        self,
        *,
        plan: Any,
        id_type: str,
        sync_mode: str = "upsert",
        region: str | None = None,
        org_id: int | str | None = None,
        zeotap_conn_id: str = ZeotapProfileHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(plan=plan, **kwargs)
        if sync_mode not in SYNC_MODES:
            raise ConfigurationError(
                f"{self.task_id}: Zeotap profiles take sync_mode 'upsert' or 'mirror', got {sync_mode!r} (deletion "
                "requests go through ZeotapProfileDeleteOperator)."
            )
        _check_id_type(self.task_id, id_type)
        try:
            check_field_mapping(self.field_mapping)
        except ConfigurationError as error:
            raise ConfigurationError(f"{self.task_id}: {error}") from None
        self.id_type = id_type
        self.sync_mode = sync_mode
        self.region = region
        self.org_id = org_id
        self.zeotap_conn_id = zeotap_conn_id
        self.check_settings()

    @property
    def connection_id(self) -> str:
        return self.zeotap_conn_id

    @property
    def mode(self) -> str:
        return self.sync_mode

    def capabilities(self) -> Capabilities:
        return ZeotapProfiles.capabilities

    def field_mapping_for(self, plan: Plan) -> Mapping[str, str] | None:
        key = _single_key(self.task_id, plan)
        if self.field_mapping is not None:
            return self.field_mapping
        return {column: column for column in plan.source_columns if column != key}

    def make_destination(self) -> Destination:
        return ZeotapProfiles(
            ZeotapProfileHook(self.zeotap_conn_id),
            id_type=self.id_type,
            region=self.region,
            org_id=self.org_id,
            leave_foreign_profiles=self.sync_mode == "mirror",
        )


class ZeotapProfileDeleteOperator(BaseSyncOperator):
    """Delete Zeotap profiles (right-to-be-forgotten lists), 400 ids a call.

    Give one source: ``ids`` (a list), ``source_uri`` (Parquet, CSV or JSON lines at any ObjectStoragePath URI;
    the column ``id_column``, else the one named like ``id_type``, else the only one) or ``plan`` (a
    ``SyncDiffOperator`` output over a table of deletion requests: its added rows are deleted and committed, so
    each request is sent once; removed rows are left alone). The result counts deleted and not-found ids, and
    ``output_uri`` (default under the state folder) lists each id as JSON lines
    ``{"id", "result": "deleted" | "not_found"}``. Empty ids are counted and left out.

    With a plan the sync settings apply, but the removal guards are off by default (``max_removal_ratio=None``,
    ``allow_empty_source=True``): every new row is a deletion request, which is what the table is for.
    """

    template_fields: Sequence[str] = (
        *BaseSyncOperator.template_fields, "ids", "source_uri", "output_uri", "id_type", "region", "org_id",
    )

    def __init__(
        self,
        *,
        id_type: str,
        ids: Sequence[Any] | str | None = None,
        source_uri: str | None = None,
        source_format: str | None = None,
        id_column: str | None = None,
        plan: Any = None,
        output_uri: str | None = None,
        region: str | None = None,
        org_id: int | str | None = None,
        zeotap_conn_id: str = ZeotapProfileHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        check_one_source(str(kwargs.get("task_id")), given={"ids": ids, "source_uri": source_uri, "plan": plan},
                         sql=None, conn_id=None)
        if plan is not None:
            kwargs.setdefault("max_removal_ratio", None)
            kwargs.setdefault("allow_empty_source", True)
            super().__init__(plan=plan, **kwargs)
        else:  # a list: no sync state, no baseline; the sync settings do not apply
            BaseOperator.__init__(self, **kwargs)
            self.plan = None
            self.field_mapping = None
        _check_id_type(self.task_id, id_type)
        self.id_type = id_type
        self.ids = ids
        self.source_uri = source_uri
        self.source_format = source_format
        self.id_column = id_column
        self.output_uri = output_uri
        self.region = region
        self.org_id = org_id
        self.zeotap_conn_id = zeotap_conn_id
        self._deletions: DeletionList | None = None
        if plan is not None:
            self.check_settings()

    @property
    def connection_id(self) -> str:
        return self.zeotap_conn_id

    @property
    def mode(self) -> str:
        return "delete"

    def capabilities(self) -> Capabilities:
        return ZeotapProfiles.capabilities

    def field_mapping_for(self, plan: Plan) -> Mapping[str, str] | None:
        key = _single_key(self.task_id, plan)
        return {key: key}  # a deletion sends the id alone; the mapping only has to name something

    def make_destination(self) -> Destination:
        return ZeotapProfiles(ZeotapProfileHook(self.zeotap_conn_id), id_type=self.id_type, region=self.region,
                              org_id=self.org_id, deletions=self._deletions)

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_provider_zeotap.destinations.zeotap_lists import delete_by_ids
        from airflow_provider_zeotap.operators.id_lists import id_chunks
        from airflow_provider_zeotap.sync.storage import SyncStorage, default_state_uri

        output_uri = self.output_uri or _list_uri(context, self.task_id, "deletions.jsonl")
        storage = SyncStorage(default_state_uri(), LISTS_FOLDER)
        try:
            with open(storage.to_local(output_uri), "w", encoding="utf-8") as handle:
                self._deletions = DeletionList(handle)
                if self.plan is not None:
                    result = super().execute(context)
                else:
                    with tempfile.TemporaryDirectory(prefix="zeotap-delete-") as work:
                        counts = asyncio.run(delete_by_ids(
                            ZeotapProfileHook(self.zeotap_conn_id), self.id_type,
                            id_chunks(ids=self.ids, source_uri=self.source_uri, source_format=self.source_format,
                                      id_column=self.id_column, id_type=self.id_type, work_dir=work,
                                      storage=storage),
                            self._deletions, region=self.region, org_id=self.org_id))
                    result = {"ids": counts.ids, "empty_ids": counts.empty_ids, "requests": counts.requests}
                deleted, not_found = self._deletions.deleted, self._deletions.not_found
            storage.publish(output_uri)
        finally:
            storage.cleanup()
        self.log.info("Zeotap deletion: %d profiles deleted, %d ids not found; each id listed in %s",
                      deleted, not_found, output_uri)
        return {**result, "deleted": deleted, "not_found": not_found, "deletions_uri": output_uri}


class ZeotapProfileFetchOperator(BaseOperator):
    """Fetch Zeotap profiles, 5 ids a call, concurrently and paced, streaming them to Parquet or JSON lines.

    Give one source of ids: ``ids`` (a list), ``source_uri`` (a file, as for the deletion operator) or ``sql`` +
    ``conn_id`` (any Airflow SQL connection). ``output_uri`` is any ObjectStoragePath (``s3://...``,
    ``file://...``); its suffix (``.parquet`` or ``.jsonl``) or ``output_format`` picks the format. XCom gets the
    counts and the location, never the profiles.
    """

    template_fields: Sequence[str] = (
        "ids", "source_uri", "sql", "parameters", "output_uri", "id_type", "region", "org_id",
    )
    template_ext: Sequence[str] = (".sql",)
    template_fields_renderers = {"sql": "sql"}

    def __init__(
        self,
        *,
        id_type: str,
        output_uri: str,
        ids: Sequence[Any] | str | None = None,
        source_uri: str | None = None,
        source_format: str | None = None,
        sql: str | None = None,
        conn_id: str | None = None,
        parameters: Any = None,
        id_column: str | None = None,
        output_format: str | None = None,
        region: str | None = None,
        org_id: int | str | None = None,
        zeotap_conn_id: str = ZeotapProfileHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_one_source(self.task_id, given={"ids": ids, "source_uri": source_uri, "sql": sql}, sql=sql,
                         conn_id=conn_id)
        _check_id_type(self.task_id, id_type)
        if "{{" not in str(output_uri):
            from airflow_provider_zeotap.operators.profile_files import output_format as check_format

            check_format(output_uri, output_format)
        self.id_type = id_type
        self.output_uri = output_uri
        self.ids = ids
        self.source_uri = source_uri
        self.source_format = source_format
        self.sql = sql
        self.conn_id = conn_id
        self.parameters = parameters
        self.id_column = id_column
        self.output_format = output_format
        self.region = region
        self.org_id = org_id
        self.zeotap_conn_id = zeotap_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_provider_zeotap.destinations.zeotap_lists import fetch_by_ids
        from airflow_provider_zeotap.operators.diff import sql_hook
        from airflow_provider_zeotap.operators.id_lists import id_chunks
        from airflow_provider_zeotap.operators.profile_files import ProfileWriter, output_format
        from airflow_provider_zeotap.sync.storage import SyncStorage, default_state_uri

        kind = output_format(self.output_uri, self.output_format)
        storage = SyncStorage(default_state_uri(), LISTS_FOLDER)
        try:
            writer = ProfileWriter(storage.to_local(self.output_uri), kind)
            try:
                with tempfile.TemporaryDirectory(prefix="zeotap-fetch-") as work:
                    chunks = id_chunks(
                        ids=self.ids, source_uri=self.source_uri, source_format=self.source_format, sql=self.sql,
                        sql_hook=sql_hook(str(self.conn_id)) if self.sql is not None else None,
                        parameters=self.parameters, id_column=self.id_column, id_type=self.id_type,
                        work_dir=os.path.join(work, "ids"), storage=storage,
                    )
                    counts = asyncio.run(fetch_by_ids(ZeotapProfileHook(self.zeotap_conn_id), self.id_type, chunks,
                                                      writer.write, region=self.region, org_id=self.org_id))
            finally:
                writer.close()
            storage.publish(self.output_uri)
        finally:
            storage.cleanup()
        self.log.info("Zeotap fetch: %d ids, %d profiles found, %d not found, %d empty ids left out, in %d calls; "
                      "written to %s", counts.ids, counts.found, counts.not_found, counts.empty_ids, counts.requests,
                      self.output_uri)
        return {
            "output_uri": self.output_uri,
            "format": kind,
            "ids": counts.ids,
            "found": counts.found,
            "not_found": counts.not_found,
            "empty_ids": counts.empty_ids,
            "profiles": writer.rows,
            "requests": counts.requests,
        }


def _list_uri(context: Any, task_id: str, name: str) -> str:
    """``state_uri/zeotap_lists/<dag>/<run>/<task>/<name>``: one file per task run."""
    from airflow_provider_zeotap.sync.storage import default_state_uri, join

    def safe(value: Any) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(value))

    dag_id = getattr(context.get("dag"), "dag_id", None) or "dag"
    return join(default_state_uri(), LISTS_FOLDER, safe(dag_id), safe(context.get("run_id", "run")), safe(task_id),
                name)
