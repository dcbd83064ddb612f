"""Personyze catalogs: ``products`` and ``articles``, keyed by ``internal_id`` (the SKU, the slug), one row per request.

``POST`` patches the row with the same ``internal_id`` (so it is an upsert and cannot be create-only: insert
mode is refused), ``PUT .../where/internal_id=`` updates (0 rows: no such item), ``DELETE`` by the same
``where`` removes. The ``is_in_stock`` / ``is_published`` columns take ``'yes'``/``'no'``, not booleans.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import MappingProxyType
from typing import Any, ClassVar

from airflow_provider_zeotap.destinations.base import asend_each
from airflow_provider_zeotap.hooks.personyze import PersonyzeHook
from airflow_provider_zeotap.sync.destination import Capabilities, Destination, OutboundRow, RowOutcome
from airflow_provider_zeotap.sync.modes import RECORD_MODES, Operation

#: ``image_1``..``image_3`` are inputs Personyze stores under other names; either spelling may be mapped.
IMAGE_ALIASES = {"image_1": "image_big_url", "image_2": "image_medium_url", "image_3": "image_small_url"}
_COMMON = ("internal_id", "title", "description_short", "description_long", "image_big_url", "image_medium_url",
           "image_small_url", "category", "rank")
PRODUCT_FIELDS = (*_COMMON, "price", "sale_price", "cart_url", "brand", "manufacturer", "inventory",
                  "expiration_date", "size", "color", "is_new", "is_in_stock", "age_from", "age_to",
                  "available_location", "not_available_location", *IMAGE_ALIASES)
ARTICLE_FIELDS = (*_COMMON, "author", "publish_date", "tags", "is_published", *IMAGE_ALIASES)
CATALOG_MODES = MappingProxyType({m: RECORD_MODES[m] for m in ("upsert", "update", "mirror")})
_YES = {True: "yes", False: "no", 1: "yes", 0: "no", "1": "yes", "0": "no", "yes": "yes", "no": "no", "true": "yes",
        "false": "no"}


def yes_no(field: str, value: Any) -> str:
    """Personyze's enum words for a boolean; ``""`` clears. Anything else is refused, never guessed at."""
    if value is None or value == "":
        return ""
    key = value.strip().lower() if isinstance(value, str) else value
    try:
        return _YES[key]
    except (KeyError, TypeError):
        raise ValueError(f"{field} must be a boolean (or 'yes'/'no'), got {value!r}") from None


def alias_conflicts(fields: Iterable[str]) -> list[str]:
    """Pairs of mapped fields that are one Personyze column (``image_1`` and ``image_big_url``)."""
    names = set(fields)
    return [f"{alias} and {stored}" for alias, stored in IMAGE_ALIASES.items() if alias in names and stored in names]


class PersonyzeCatalog(Destination):
    """One catalog object; ``PersonyzeProducts`` and ``PersonyzeArticles`` name it."""

    object_name: ClassVar[str]
    noun: ClassVar[str]
    enum_field: ClassVar[str]

    def __init__(self, hook: PersonyzeHook, *, max_in_flight: int = 4, leave_foreign_items: bool = False) -> None:
        self.hook = hook
        self.max_in_flight = max_in_flight
        #: Mirror: an item already in the catalog that this sync did not create is someone else's.
        self.leave_foreign_items = leave_foreign_items

    @staticmethod
    def _capabilities(name: str, fields: Sequence[str]) -> Capabilities:
        return Capabilities(
            name=name,
            mode_argument="sync_mode",
            modes=CATALOG_MODES,
            batch_size=100,
            max_batch_size=1000,
            required_fields=("internal_id",),
            default_fields=tuple(fields),
            accepts_any_field=True,  # catalog columns are dynamic: other fields pass through
            identity_fields=("internal_id",),
            clears_with="empty string",
            batches_in_flight=2,  # rows flow across batch ends; the hook's max_in_flight caps the requests
        )

    def prepare(self, *, dry_run: bool) -> None:
        self.hook.get_account()

    def validate(self, operation: Operation, row: OutboundRow) -> str | None:
        if operation.removes:
            return None
        conflicts = alias_conflicts(row.payload)
        if conflicts:
            return f"{', '.join(conflicts)} are one Personyze column: map only one of them in field_mapping"
        try:
            self.wire_fields(row)
        except ValueError as problem:
            return str(problem)
        return None

    def identity(self, row: OutboundRow) -> str | None:
        value = row.payload.get("internal_id")
        return None if value in (None, "") else str(value)

    def target(self) -> dict[str, Any]:
        return {"object": self.object_name}

    def wire_fields(self, row: OutboundRow) -> dict[str, Any]:
        """The row as the API takes it: a clear as ``""``, the yes/no enum as words."""
        fields = {name: "" if value is None else value for name, value in row.payload.items()}
        if self.enum_field in row.payload:
            fields[self.enum_field] = yes_no(self.enum_field, row.payload[self.enum_field])
        fields["internal_id"] = str(row.payload["internal_id"])
        return fields

    def existing_records(self) -> list[dict[str, Any]]:
        """Every item of the catalog, for ``take_over_existing=True`` in a mirror."""
        return [{"internal_id": internal_id} for internal_id in self.hook.catalog_internal_ids(self.object_name)]

    async def asend(self, operation: Operation, rows: Sequence[OutboundRow]) -> list[RowOutcome]:
        return await asend_each(rows, lambda row: self._send_one(operation, row), max_in_flight=self.max_in_flight)

    async def _send_one(self, operation: Operation, row: OutboundRow) -> RowOutcome:
        internal_id = str(row.payload["internal_id"])
        if operation is Operation.DELETE:
            await self.hook.delete_catalog_item(self.object_name, internal_id)  # 0 rows: already gone, as asked
            return RowOutcome.ok(row)
        fields = self.wire_fields(row)
        if operation is Operation.UPDATE:
            changes = {name: value for name, value in fields.items() if name != "internal_id"}
            if changes and await self.hook.update_catalog_item(self.object_name, internal_id, changes) == 0:
                return RowOutcome.rejected(
                    row, f"no such {self.noun}: {internal_id!r} is not in the Personyze {self.object_name} catalog "
                    "(update mode never creates; use sync_mode='upsert')"
                )
            return RowOutcome.ok(row)
        foreign = self.leave_foreign_items and not row.ours
        if foreign and await self.hook.catalog_item_exists(self.object_name, internal_id):
            return RowOutcome.skipped(
                row, f"{self.noun} {internal_id!r} is already in the catalog and this sync did not create it: mirror "
                "leaves it alone and will never delete it (take_over_existing=True claims such items)"
            )
        await self.hook.upsert_catalog_item(self.object_name, fields)  # patches an existing internal_id
        return RowOutcome.ok(row)

    def close(self) -> None:
        self.hook.close()

    async def aclose(self) -> None:
        await self.hook.aclose()


class PersonyzeProducts(PersonyzeCatalog):
    object_name = "products"
    noun = "product"
    enum_field = "is_in_stock"
    capabilities = PersonyzeCatalog._capabilities("Personyze products", PRODUCT_FIELDS)


class PersonyzeArticles(PersonyzeCatalog):
    object_name = "articles"
    noun = "article"
    enum_field = "is_published"
    capabilities = PersonyzeCatalog._capabilities("Personyze articles", ARTICLE_FIELDS)
