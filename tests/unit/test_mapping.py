import datetime as dt
import decimal

import pytest

from airflow_provider_zeotap.http.errors import ConfigurationError
from airflow_provider_zeotap.sync.mapping import apply_mapping, resolve_mapping, to_json_value


def resolve(mapping, columns=("id", "email", "first_name"), required=("email",)):
    return resolve_mapping(
        mapping, source_columns=list(columns), default_fields=("email", "first_name", "phone"),
        required_fields=required, destination="Personyze users",
    )


def test_default_mapping_takes_default_fields_present_in_the_source():
    assert resolve(None) == {"email": "email", "first_name": "first_name"}


def test_missing_required_field_names_the_field_and_the_fix():
    with pytest.raises(ConfigurationError, match=r"requires the field\(s\) \['email'\].*field_mapping"):
        resolve({"first_name": "first_name"})


def test_unknown_source_column_is_named():
    with pytest.raises(ConfigurationError, match="'email' <- 'mail'"):
        resolve({"email": "mail"})


def test_nothing_to_send_is_an_error():
    with pytest.raises(ConfigurationError, match="Nothing would be sent"):
        resolve(None, columns=("id",), required=())


def test_apply_mapping_drops_nulls_unless_asked():
    mapping = {"email": "mail", "phone": "tel"}
    row = {"mail": "a@x.com", "tel": None}
    assert apply_mapping(mapping, row, send_nulls=False).payload == {"email": "a@x.com"}
    assert apply_mapping(mapping, row, send_nulls=True).payload == {"email": "a@x.com", "phone": None}


def test_a_null_in_a_field_that_was_delivered_is_a_clear_even_without_send_nulls():
    mapping = {"email": "mail", "phone": "tel", "plan": "plan"}
    row = {"mail": "a@x.com", "tel": None, "plan": None}
    mapped = apply_mapping(mapping, row, send_nulls=False, delivered_fields=["email", "phone"])
    assert mapped.payload == {"email": "a@x.com", "phone": None}  # plan was never delivered: left out


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), decimal.Decimal("NaN"),
                                   [1.0, float("nan")], decimal.Decimal("1.23456789012345678901")])
def test_values_without_a_faithful_json_form_reject_the_row_naming_field_and_column(value):
    mapped = apply_mapping({"score": "raw_score", "email": "mail"}, {"raw_score": value, "mail": "a@x.com"},
                           send_nulls=False)
    assert mapped.payload == {"email": "a@x.com"}
    assert len(mapped.problems) == 1 and mapped.problems[0].startswith("field 'score' (from column 'raw_score'): ")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (decimal.Decimal("12.00"), 12),
        (decimal.Decimal("12.5"), 12.5),
        (dt.date(2026, 1, 2), "2026-01-02"),
        (dt.datetime(2026, 1, 2, 3, 4, 5), "2026-01-02T03:04:05"),
        (decimal.Decimal("12345.125"), 12345.125),
        (dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc), "2026-01-02T03:04:05+00:00"),
        (dt.timedelta(minutes=1, milliseconds=500), 60.5),
        (b"\x00\x01", "AAE="),
        ({"a": [dt.date(2026, 1, 1)]}, {"a": ["2026-01-01"]}),
    ],
)
def test_warehouse_types_become_json_values(value, expected):
    assert to_json_value(value) == expected


def test_a_destination_with_fixed_fields_refuses_unknown_ones():
    with pytest.raises(ConfigurationError, match=r"has no field\(s\) \['segment_nme'\]"):
        resolve_mapping({"segment_code": "code", "segment_nme": "name"}, source_columns=["code", "name"],
                        default_fields=("segment_code", "segment_name", "description"), required_fields=(),
                        destination="Permutive segments", accepts_any_field=False)
