"""Reverse ETL for Apache Airflow: sync warehouse rows into marketing and personalization APIs.

Only what changed since the last acknowledged delivery is sent; the baseline lives in the Airflow
metadata store and moves forward only by rows the destination acknowledged.
"""

__version__ = "0.1.0"
