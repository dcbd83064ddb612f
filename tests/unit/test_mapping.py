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
    assert apply_mapping(mapping, row, send_nulls=False) == {"email": "a@x.com"}
    assert apply_mapping(mapping, row, send_nulls=True) == {"email": "a@x.com", "phone": None}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (decimal.Decimal("12.00"), 12),
        (decimal.Decimal("12.5"), 12.5),
        (dt.date(2026, 1, 2), "2026-01-02"),
        (dt.datetime(2026, 1, 2, 3, 4, 5), "2026-01-02T03:04:05"),
        (float("nan"), None),
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
