"""PermutiveSyncOperator: rows become segments of an import (audience_mode add | remove | mirror | upsert)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from airflow_provider_zeotap.sync.destination import Capabilities, Destination
from airflow_provider_zeotap.destinations.permutive import PermutiveSegments
from airflow_provider_zeotap.hooks.permutive import PermutiveHook
from airflow_provider_zeotap.errors import ConfigurationError
from airflow_provider_zeotap.operators.base import BaseSyncOperator


class PermutiveSyncOperator(BaseSyncOperator):
    """Sync a plan into the segments of a Permutive import through the batch Taxonomy API.

    Rows map to ``segment_code`` (a blank one is generated from the name, stably), ``segment_name`` and
    ``description``. add creates added rows; upsert and mirror create added rows and update changed ones;
    remove deletes the plan's rows; mirror also deletes removed rows, and only ever segments that are the
    sync's own: in its baseline, recorded by it before sending, or claimed with ``take_over_existing=True``.

    :param import_id: the UUID of the import (Audience Platform > Imports).
    :param segment_name: default name for rows without one.
    """

    template_fields: Sequence[str] = (*BaseSyncOperator.template_fields, "import_id", "segment_name")

    def __init__(
        self,
        *,
        plan: Any,
        import_id: str,
        audience_mode: str,
        segment_name: str | None = None,
        permutive_conn_id: str = PermutiveHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(plan=plan, **kwargs)
        if "{{" not in str(import_id):
            _import_id(import_id)
        self.import_id = import_id
        self.audience_mode = audience_mode
        self.segment_name = segment_name
        self.permutive_conn_id = permutive_conn_id
        self.check_settings()

    @property
    def connection_id(self) -> str:
        return self.permutive_conn_id

    @property
    def mode(self) -> str:
        return self.audience_mode

    def capabilities(self) -> Capabilities:
        return PermutiveSegments.capabilities

    def make_destination(self) -> Destination:
        return PermutiveSegments(
            PermutiveHook(self.permutive_conn_id), import_id=_import_id(self.import_id), segment_name=self.segment_name
        )


def _import_id(value: Any) -> str:
    try:
        return str(uuid.UUID(str(value).strip()))
    except ValueError:
        raise ConfigurationError(
            f"import_id must be the UUID of a Permutive import (e.g. 32f8e031-c532-41bb-b25e-65bdb677a96f, from "
            f"Audience Platform > Imports), got {value!r}."
        ) from None
