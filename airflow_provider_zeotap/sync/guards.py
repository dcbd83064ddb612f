"""Guards: refuse a run that looks like a broken source before it empties an audience."""

from __future__ import annotations

from dataclasses import dataclass

from airflow_provider_zeotap.errors import GuardError
from airflow_provider_zeotap.sync.models import Plan


@dataclass(frozen=True)
class Guards:
    """Refuse a run that looks like a broken source before it empties an audience."""

    max_removals: int | None = None
    max_removal_ratio: float | None = 0.5
    #: The ratio guard only applies once the committed state holds this many rows.
    min_rows_for_ratio: int = 100
    allow_empty_source: bool = False

    def check(self, plan: Plan, removals: int) -> None:
        committed = plan.base.rows if plan.base else 0
        valid = plan.counts.total - plan.counts.invalid
        if valid == 0 and committed > 0 and not self.allow_empty_source:
            found = f"no rows ({plan.counts.invalid} with a null or duplicate key)" if plan.counts.invalid else "no rows"
            raise GuardError(
                f"Sync {plan.sync_id!r}: the source returned {found} but {committed} are committed; refusing to "
                "treat that as 'everything was removed'. If the source really is empty, set allow_empty_source=True."
            )
        if self.max_removals is not None and removals > self.max_removals:
            raise GuardError(
                f"Sync {plan.sync_id!r} would remove {removals} rows, more than max_removals={self.max_removals}. "
                "Check the source; if the removals are intended, raise max_removals (or set it to None)."
            )
        if (
            self.max_removal_ratio is not None
            and committed >= self.min_rows_for_ratio
            and removals > self.max_removal_ratio * committed
        ):
            raise GuardError(
                f"Sync {plan.sync_id!r} would remove {removals} of {committed} committed rows "
                f"({removals / committed:.0%}), more than max_removal_ratio={self.max_removal_ratio}. Check the "
                "source; if the removals are intended, raise max_removal_ratio (or set it to None)."
            )
