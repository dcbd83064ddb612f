"""PersonyzeSyncOperator: user profiles, list members, product and article catalogs, and interactions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from airflow_provider_zeotap.destinations.personyze import PersonyzeListMembers, PersonyzeUsers
from airflow_provider_zeotap.destinations.personyze_catalog import (
    PersonyzeArticles,
    PersonyzeCatalog,
    PersonyzeProducts,
    alias_conflicts,
)
from airflow_provider_zeotap.destinations.personyze_do import PersonyzeUsersDo
from airflow_provider_zeotap.destinations.personyze_events import (
    USER_KEYS,
    PersonyzeArticleInteractions,
    PersonyzeProductInteractions,
)
from airflow_provider_zeotap.errors import ConfigurationError
from airflow_provider_zeotap.hooks.personyze import PersonyzeHook
from airflow_provider_zeotap.operators.base import BaseSyncOperator, _load_plan
from airflow_provider_zeotap.sync.destination import Capabilities, Destination

OBJECT_TYPES = ("users", "user_list_members", "products", "articles", "product_interactions", "article_interactions")
CATALOGS: dict[str, type[PersonyzeCatalog]] = {"products": PersonyzeProducts, "articles": PersonyzeArticles}
EVENTS = {"product_interactions": PersonyzeProductInteractions, "article_interactions": PersonyzeArticleInteractions}
USERS_WRITES = ("do", "per_row")


class PersonyzeSyncOperator(BaseSyncOperator):
    """Sync a plan into Personyze.

    * ``object_type="users"`` with ``sync_mode`` upsert | insert | update. Upsert writes batches of
      ``"User profile"`` commands through ``POST /rest/do`` (``users_write="do"``, the default); insert and
      update need create-only or update-only semantics that ``do`` cannot give, so they take
      ``users_write="per_row"``: one ``POST /rest/users`` (merging on email/internal_id) or ``PUT`` by email
      per row, one at a time per account.
    * ``object_type="user_list_members"`` with ``list_id`` and ``audience_mode`` add | remove | mirror.
    * ``object_type="products"`` / ``"articles"`` with ``sync_mode`` upsert | update | mirror, keyed by
      ``internal_id``. Insert is refused: ``POST`` patches an existing internal_id, so it cannot be create-only.
    * ``object_type="product_interactions"`` / ``"article_interactions"`` with ``sync_mode="insert"``: each
      new row becomes one interaction; events are append-only.

    :param users_write: ``"do"`` or ``"per_row"``; default ``"do"`` for upsert, ``"per_row"`` otherwise.
    :param normalize_email: strip and lowercase emails before sending (Personyze matches case-sensitively,
        so mixed-case duplicates otherwise become separate users).
    :param max_in_flight: per-row calls in flight at once for list members, catalogs and interaction look-ups
        (users POSTs are always one at a time; the connection's own ``max_in_flight`` caps every call).
    """

    template_fields: Sequence[str] = (*BaseSyncOperator.template_fields, "list_id")

    def __init__(
        self,
        *,
        plan: Any,
        object_type: Literal[
            "users", "user_list_members", "products", "articles", "product_interactions", "article_interactions"
        ],
        sync_mode: str | None = None,
        audience_mode: str | None = None,
        list_id: int | str | None = None,
        users_write: Literal["do", "per_row"] | None = None,
        normalize_email: bool = False,
        max_in_flight: int = 4,
        personyze_conn_id: str = PersonyzeHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(plan=plan, **kwargs)
        if object_type not in OBJECT_TYPES:
            raise ConfigurationError(f"{self.task_id}: object_type must be one of {OBJECT_TYPES}, got {object_type!r}.")
        self.object_type = object_type
        self.sync_mode = sync_mode
        self.audience_mode = audience_mode
        self.list_id = list_id
        self.normalize_email = normalize_email
        self.max_in_flight = max_in_flight
        self.personyze_conn_id = personyze_conn_id
        self.users_write = self._check_object_settings(users_write)
        if list_id is not None and "{{" not in str(list_id):
            _list_id(list_id)
        self.check_settings()
        #: The diff's primary key, read from the plan when the task runs (it picks the ``do`` key type).
        self._primary_key: list[str] = []

    def _check_object_settings(self, users_write: str | None) -> str | None:
        """Each object type's own arguments, refused when the DAG is parsed with the fix in the message."""
        task, kind = self.task_id, self.object_type
        if kind == "user_list_members":
            if self.sync_mode is not None:
                raise ConfigurationError(
                    f"{task}: user_list_members take audience_mode (add, remove, mirror), not sync_mode."
                )
            if self.audience_mode is None:
                raise ConfigurationError(f"{task}: object_type='user_list_members' needs audience_mode.")
            if self.list_id is None:
                raise ConfigurationError(
                    f"{task}: object_type='user_list_members' needs list_id, the numeric id of a Personyze "
                    "user list (create the list in Personyze first)."
                )
        else:
            if self.audience_mode is not None or self.list_id is not None:
                raise ConfigurationError(
                    f"{task}: {kind} take sync_mode, not audience_mode/list_id; for list membership use "
                    "object_type='user_list_members'."
                )
            if self.sync_mode is None:
                modes = sorted(self._capabilities_for(users_write).modes)
                raise ConfigurationError(f"{task}: object_type={kind!r} needs sync_mode: one of {modes}.")
        if users_write is not None and kind != "users":
            raise ConfigurationError(f"{task}: users_write applies to object_type='users' only.")
        if kind in CATALOGS and self.sync_mode == "insert":
            raise ConfigurationError(
                f"{task}: {kind} cannot take sync_mode='insert': Personyze's POST patches an item whose internal_id "
                "already exists, so it cannot be create-only. Use sync_mode='upsert' (or 'mirror')."
            )
        if kind in EVENTS and self.sync_mode != "insert":
            raise ConfigurationError(
                f"{task}: {kind} are events, append-only: use sync_mode='insert' (changed and removed rows are "
                f"committed as seen), not {self.sync_mode!r}."
            )
        if isinstance(self.field_mapping, Mapping):
            self._check_mapping(self.field_mapping)
        if kind != "users":
            return None
        if users_write is None:
            return "do" if self.sync_mode == "upsert" else "per_row"
        if users_write not in USERS_WRITES:
            raise ConfigurationError(f"{task}: users_write must be 'do' or 'per_row', got {users_write!r}.")
        if users_write == "do" and self.sync_mode != "upsert":
            raise ConfigurationError(
                f"{task}: users_write='do' supports sync_mode='upsert' only: 'do' creates a user who does not exist, "
                f"so it can be neither create-only (insert) nor update-only (update). Use users_write='per_row' for "
                f"sync_mode={self.sync_mode!r}."
            )
        return users_write

    def _check_mapping(self, mapping: Mapping[str, Any]) -> None:
        if self.object_type in CATALOGS and (conflicts := alias_conflicts(mapping)):
            raise ConfigurationError(
                f"{self.task_id}: field_mapping maps {', '.join(conflicts)}, which are one Personyze column; keep one."
            )
        if self.object_type in EVENTS and not any(field in mapping for field in USER_KEYS):
            raise ConfigurationError(
                f"{self.task_id}: field_mapping must map the user of each interaction: one of {list(USER_KEYS)}."
            )

    @property
    def connection_id(self) -> str:
        return self.personyze_conn_id

    @property
    def mode(self) -> str:
        return str(self.audience_mode if self.object_type == "user_list_members" else self.sync_mode)

    def _capabilities_for(self, users_write: str | None) -> Capabilities:
        if self.object_type == "users":
            return PersonyzeUsersDo.capabilities if users_write == "do" else PersonyzeUsers.capabilities
        if self.object_type == "user_list_members":
            return PersonyzeListMembers.capabilities
        return (CATALOGS.get(self.object_type) or EVENTS[self.object_type]).capabilities

    def capabilities(self) -> Capabilities:
        return self._capabilities_for(self.users_write)

    def execute(self, context: Any) -> dict[str, Any]:
        if self.object_type == "users" and self.users_write == "do":
            self._primary_key = list(_load_plan(self.plan).primary_key)
        if isinstance(self.field_mapping, Mapping):
            self._check_mapping(self.field_mapping)  # a templated mapping is checked once rendered
        return super().execute(context)

    def user_key(self) -> str:
        """``internal_id`` when the diff's key column is the one mapped to internal_id, else ``email``."""
        mapping = self.field_mapping if isinstance(self.field_mapping, Mapping) else None
        internal_id_column = mapping.get("internal_id") if mapping is not None else "internal_id"
        return "internal_id" if internal_id_column and self._primary_key == [internal_id_column] else "email"

    def make_destination(self) -> Destination:
        hook = PersonyzeHook(self.personyze_conn_id)
        kind = self.object_type
        if kind == "users":
            if self.users_write == "do":
                key = self.user_key()
                return PersonyzeUsersDo(hook, user_key=key, normalize_email=self.normalize_email)  # type: ignore[arg-type]
            return PersonyzeUsers(hook, normalize_email=self.normalize_email)
        if kind in CATALOGS:
            mirror = self.sync_mode == "mirror"
            return CATALOGS[kind](hook, max_in_flight=self.max_in_flight, leave_foreign_items=mirror)
        if kind in EVENTS:
            return EVENTS[kind](hook, max_in_flight=self.max_in_flight)
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
