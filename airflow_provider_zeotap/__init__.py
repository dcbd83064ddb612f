"""Reverse ETL for Apache Airflow: sync warehouse rows into marketing and personalization APIs.

Only what changed since the last acknowledged delivery is sent; the baseline lives in the Airflow
metadata store and moves forward only by rows the destination acknowledged.
"""

#: The one place the version is written: pyproject.toml reads it, get_provider_info() reports it, and
#: CHANGELOG.md's first entry must name it (tests/unit/test_version.py).
__version__ = "0.1.0"
