"""The fault-knob tables in docs/testing.md and the README are rendered from ``FaultConfig``'s fields."""

from __future__ import annotations

from airflow_provider_zeotap.testing.faults import FaultConfig
from tests.support import fault_knobs


def test_every_knob_is_described() -> None:
    for name, field in FaultConfig.model_fields.items():
        assert field.description and field.title, f"FaultConfig.{name} needs a title and a description"


def test_the_knob_tables_are_current() -> None:
    stale = "run `python -m tests.support.fault_knobs --write`"
    assert fault_knobs.current_block(fault_knobs.TESTING_DOC.read_text()) == fault_knobs.render_full(), stale
    assert fault_knobs.current_block(fault_knobs.README.read_text()) == fault_knobs.render_compact(), stale


def test_the_tables_name_every_knob_once() -> None:
    for table in (fault_knobs.render_full(), fault_knobs.render_compact()):
        names = [row.split("|")[1].strip().strip("`") for row in table.splitlines()[2:]]
        assert names == list(FaultConfig.model_fields)
