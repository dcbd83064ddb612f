"""PersonyzeSyncOperator: user profiles (sync_mode) or user-list members (audience_mode)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from airflow_provider_zeotap.sync.destination import Capabilities, Destination
from airflow_provider_zeotap.destinations.personyze import PersonyzeListMembers, PersonyzeUsers
from airflow_provider_zeotap.hooks.personyze import PersonyzeHook
from airflow_provider_zeotap.errors import ConfigurationError
from airflow_provider_zeotap.operators.base import BaseSyncOperator

OBJECT_TYPES = ("users", "user_list_members")


class PersonyzeSyncOperator(BaseSyncOperator):
    """Sync a plan into Personyze.

    ``object_type="users"`` with ``sync_mode`` upsert | insert | update: upsert and insert POST each row
    to ``/rest/users`` (Personyze merges on email/internal_id), update PUTs by email and rejects unknown
    emails. ``object_type="user_list_members"`` with ``list_id`` and ``audience_mode`` add | remove | mirror.

    :param normalize_email: strip and lowercase emails before sending (Personyze matches case-sensitively,
        so mixed-case duplicates otherwise become separate users).
    :param max_in_flight: list-membership calls in flight at once (users POSTs are always one at a time).
    """

    template_fields: Sequence[str] = (*BaseSyncOperator.template_fields, "list_id")

    def __init__(
        self,
        *,
        plan: Any,
        object_type: Literal["users", "user_list_members"],
        sync_mode: str | None = None,
        audience_mode: str | None = None,
        list_id: int | str | None = None,
        normalize_email: bool = False,
        max_in_flight: int = 4,
        personyze_conn_id: str = PersonyzeHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(plan=plan, **kwargs)
        if object_type not in OBJECT_TYPES:
            raise ConfigurationError(f"{self.task_id}: object_type must be one of {OBJECT_TYPES}, got {object_type!r}.")
        if object_type == "users":
            if audience_mode is not None or list_id is not None:
                raise ConfigurationError(
                    f"{self.task_id}: users take sync_mode (upsert, insert, update), not audience_mode/list_id; "
                    "for list membership use object_type='user_list_members'."
                )
            if sync_mode is None:
                raise ConfigurationError(f"{self.task_id}: object_type='users' needs sync_mode: upsert, insert or update.")
        else:
            if sync_mode is not None:
                raise ConfigurationError(
                    f"{self.task_id}: user_list_members take audience_mode (add, remove, mirror), not sync_mode."
                )
            if audience_mode is None:
                raise ConfigurationError(f"{self.task_id}: object_type='user_list_members' needs audience_mode.")
            if list_id is None:
                raise ConfigurationError(
                    f"{self.task_id}: object_type='user_list_members' needs list_id, the numeric id of a Personyze "
                    "user list (create the list in Personyze first)."
                )
        self.object_type = object_type
        self.sync_mode = sync_mode
        self.audience_mode = audience_mode
        self.list_id = list_id
        self.normalize_email = normalize_email
        self.max_in_flight = max_in_flight
        self.personyze_conn_id = personyze_conn_id
        if list_id is not None and "{{" not in str(list_id):
            _list_id(list_id)
        self.check_settings()

    @property
    def connection_id(self) -> str:
        return self.personyze_conn_id

    @property
    def mode(self) -> str:
        return str(self.sync_mode if self.object_type == "users" else self.audience_mode)

    def capabilities(self) -> Capabilities:
        return (PersonyzeUsers if self.object_type == "users" else PersonyzeListMembers).capabilities

    def make_destination(self) -> Destination:
        hook = PersonyzeHook(self.personyze_conn_id)
        if self.object_type == "users":
            return PersonyzeUsers(hook, normalize_email=self.normalize_email)
        return PersonyzeListMembers(
            hook,
            list_id=_list_id(self.list_id),
            normalize_email=self.normalize_email,
            max_in_flight=self.max_in_flight,
            leave_foreign_members=self.audience_mode == "mirror",
        )


def _list_id(value: Any) -> int:
    text = str(value).strip()
    if not text.isdigit():
        raise ConfigurationError(
            f"list_id must be the numeric id of a Personyze user list, not its name; got {value!r}."
        )
    return int(text)
