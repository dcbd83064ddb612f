"""The README's reliability table is rendered from the ``@reliability_case`` declarations on the tests."""

from __future__ import annotations

import pytest

from tests.support import reliability


def test_the_readme_reliability_table_is_current():
    rendered = reliability.render(reliability.collect())
    assert reliability.current_block(reliability.README.read_text()) == rendered, (
        "README.md's reliability table is out of date: run `python -m tests.support.reliability --write`"
    )


def test_a_case_declared_twice_by_different_tests_is_refused():
    def test_one():
        pass

    def test_two():
        pass

    test_one.__module__ = test_two.__module__ = __name__
    reliability.reliability_case("fault", "Nowhere", "declared twice", "refused")(test_one)
    with pytest.raises(ValueError, match="declared twice"):
        reliability.reliability_case("fault", "Nowhere", "declared twice", "refused")(test_two)
    reliability._REGISTRY.pop(("fault", "Nowhere", "declared twice"))


def test_an_outcome_that_would_break_the_table_is_refused():
    with pytest.raises(ValueError, match="one line of text"):
        reliability.reliability_case("bad input", "All", "pipe", "a | b")
