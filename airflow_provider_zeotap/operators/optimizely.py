"""OptimizelySyncOperator: audiences, custom events, attributes (sync_mode) or a list attribute's members (audience_mode)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from airflow_provider_zeotap.destinations.optimizely_lists import OptimizelyListAttribute
from airflow_provider_zeotap.destinations.optimizely_objects import OBJECT_TYPES, OptimizelyObjects
from airflow_provider_zeotap.errors import ConfigurationError
from airflow_provider_zeotap.hooks.optimizely import OptimizelyHook, check_project_id
from airflow_provider_zeotap.operators.base import BaseSyncOperator
from airflow_provider_zeotap.sync.destination import Capabilities, Destination

LIST_ATTRIBUTES = "list_attributes"
ALL_OBJECT_TYPES = (*OBJECT_TYPES, LIST_ATTRIBUTES)


class OptimizelySyncOperator(BaseSyncOperator):
    """Sync a plan into one Optimizely project.

    ``object_type`` "audiences", "custom_events" or "attributes" with ``sync_mode`` upsert | insert: each row
    becomes one object (upsert updates an object whose key, or an audience's name, is already there; insert
    only creates and rejects a key that exists). ``object_type="list_attributes"`` with ``list_attribute_id``
    and ``audience_mode`` add | remove | mirror: rows are the members (``user_id``) of the list attribute,
    written as one whole-list update per batch (by default one per run).

    :param project_id: the numeric project id (Settings > Project); default: the connection's ``project_id`` extra.
    :param audience_name: audiences: the name of rows that have none (the seed's single-audience case).
    :param list_attribute_id: list attributes: the numeric id of the list attribute (create it in Optimizely first).
    """

    template_fields: Sequence[str] = (*BaseSyncOperator.template_fields, "project_id", "list_attribute_id", "audience_name")

    def __init__(
        self,
        *,
        plan: Any,
        object_type: Literal["audiences", "custom_events", "attributes", "list_attributes"],
        project_id: str | int | None = None,
        sync_mode: str | None = None,
        audience_mode: str | None = None,
        list_attribute_id: str | int | None = None,
        audience_name: str | None = None,
        optimizely_conn_id: str = OptimizelyHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(plan=plan, **kwargs)
        if object_type not in ALL_OBJECT_TYPES:
            raise ConfigurationError(f"{self.task_id}: object_type must be one of {ALL_OBJECT_TYPES}, got {object_type!r}.")
        if object_type == LIST_ATTRIBUTES:
            if sync_mode is not None or audience_name is not None:
                raise ConfigurationError(
                    f"{self.task_id}: list_attributes take audience_mode (add, remove, mirror) and list_attribute_id, "
                    "not sync_mode or audience_name."
                )
            if audience_mode is None or list_attribute_id is None:
                raise ConfigurationError(
                    f"{self.task_id}: object_type='list_attributes' needs audience_mode (add, remove, mirror) and "
                    "list_attribute_id, the numeric id of a list attribute created in Optimizely (Audiences > Attributes)."
                )
            if "{{" not in str(list_attribute_id):
                _list_attribute_id(list_attribute_id)
        else:
            if audience_mode is not None or list_attribute_id is not None:
                raise ConfigurationError(
                    f"{self.task_id}: {object_type} take sync_mode (upsert, insert), not audience_mode/list_attribute_id; "
                    "for a list of users use object_type='list_attributes'."
                )
            if sync_mode is None:
                raise ConfigurationError(f"{self.task_id}: object_type={object_type!r} needs sync_mode: upsert or insert.")
            if audience_name is not None and object_type != "audiences":
                raise ConfigurationError(f"{self.task_id}: audience_name is for object_type='audiences' only.")
        if project_id is not None and "{{" not in str(project_id):
            check_project_id(project_id)
        self.object_type = object_type
        self.project_id = project_id
        self.sync_mode = sync_mode
        self.audience_mode = audience_mode
        self.list_attribute_id = list_attribute_id
        self.audience_name = audience_name
        self.optimizely_conn_id = optimizely_conn_id
        self.check_settings()

    @property
    def connection_id(self) -> str:
        return self.optimizely_conn_id

    @property
    def mode(self) -> str:
        return str(self.audience_mode if self.object_type == LIST_ATTRIBUTES else self.sync_mode)

    def capabilities(self) -> Capabilities:
        if self.object_type == LIST_ATTRIBUTES:
            return OptimizelyListAttribute.capabilities
        return OBJECT_TYPES[self.object_type][0]

    def make_destination(self) -> Destination:
        hook = OptimizelyHook(self.optimizely_conn_id)
        project_id = hook.project_id(self.project_id)
        if self.object_type == LIST_ATTRIBUTES:
            return OptimizelyListAttribute(
                hook,
                project_id=project_id,
                list_attribute_id=_list_attribute_id(self.list_attribute_id),
                # An id someone else put in the list is never recorded as delivered by this sync, in add as in
                # mirror: a later mirror of the same sync_id could otherwise remove it.
                leave_foreign_members=self.audience_mode in ("add", "mirror"),
            )
        return OptimizelyObjects(hook, object_type=self.object_type, project_id=project_id, audience_name=self.audience_name)


def _list_attribute_id(value: Any) -> int:
    text = str(value).strip()
    if not text.isdigit():
        raise ConfigurationError(
            f"list_attribute_id must be the numeric id of an Optimizely list attribute (Audiences > Attributes), "
            f"not its name; got {value!r}."
        )
    return int(text)
