"""The README's Optimizely troubleshooting quotes the messages the code raises: each is produced here, for real.

One quote per troubleshooting entry of the Optimizely source document (authentication, project not found,
rate limits, list attribute not found, invalid audience conditions, custom events, mirror removing users).
Each is matched (``...`` is any text, ``N`` a number) against what the code path it describes says, over real
sockets against the emulator.
"""

from __future__ import annotations

import json

import pytest

from airflow_provider_zeotap.destinations.optimizely_lists import OptimizelyListAttribute
from airflow_provider_zeotap.destinations.optimizely_objects import OptimizelyObjects
from airflow_provider_zeotap.hooks.optimizely import OptimizelyHook
from airflow_provider_zeotap.sync.destination import OutboundRow
from airflow_provider_zeotap.sync.models import Change
from airflow_provider_zeotap.sync.modes import Operation
from airflow_provider_zeotap.testing import OptimizelyEmulator
from tests.integration.test_readme_messages import as_pattern, quotes

pytestmark = pytest.mark.integration


def use(monkeypatch, emulator: OptimizelyEmulator, token: str, **extra) -> OptimizelyHook:
    value = {"conn_type": "optimizely", "host": emulator.url, "password": token,
             "extra": {"backoff_initial": 0.01, "backoff_max": 0.05, **extra}}
    monkeypatch.setenv("AIRFLOW_CONN_OPTIMIZELY_DEFAULT", json.dumps(value))
    return OptimizelyHook()


def row(row_id: int, **payload) -> OutboundRow:
    return OutboundRow(row_id=row_id, change=Change.ADDED, key={"id": row_id}, payload=payload)


def raised(call) -> str:
    with pytest.raises(Exception) as caught:
        call()
    return str(caught.value)


def optimizely_messages(monkeypatch) -> list[str]:
    from airflow_provider_zeotap.operators.optimizely import OptimizelySyncOperator

    messages: list[str] = []
    with OptimizelyEmulator() as emulator:
        project = emulator.create_project("Web")
        # Authentication failed: the connection test and every sync say the same.
        messages.append(use(monkeypatch, emulator, "sdk-key-not-a-token").test_connection()[1])
        hook = use(monkeypatch, emulator, emulator.token)
        # Project not found: a name is refused when the DAG is parsed; an unknown number by the API.
        messages.append(raised(lambda: OptimizelySyncOperator(
            task_id="t", plan={}, sync_id="s", object_type="custom_events", sync_mode="insert", project_id="Web")))
        messages.append(raised(lambda: hook.get_project("12345")))
        # List attribute not found: checked before any write.
        lists = OptimizelyListAttribute(hook, project_id=project, list_attribute_id=999)
        messages.append(raised(lambda: lists.prepare(dry_run=False)))
        # Audience conditions invalid: rejected per row, before sending.
        audiences = OptimizelyObjects(hook, object_type="audiences", project_id=project)
        messages.append(audiences.validate(Operation.UPSERT, row(1, name="A", conditions='["and", {"value": "es"}]')))
        # Custom events: a key that exists already, in insert mode.
        emulator.create_object("custom_events", project, key="signup")
        events = OptimizelyObjects(hook, object_type="custom_events", project_id=project)
        messages += [o.reason for o in events.send(Operation.CREATE, [row(2, key="signup")]) if o.reason]
        # Mirror: an id that was in the list before the sync is left alone (and never removed) unless taken over.
        list_id = emulator.create_list_attribute(project, "vips", ["u1"])
        mirror = OptimizelyListAttribute(hook, project_id=project, list_attribute_id=list_id, leave_foreign_members=True)
        messages += [o.reason for o in mirror.send(Operation.ADD, [row(3, user_id="u1")]) if o.reason]
        # Another writer changes the list at every read: the task stops without writing.
        emulator.change_list_after_get(list_id, add=["other-{n}"], times=100)
        busy = OptimizelyListAttribute(hook, project_id=project, list_attribute_id=list_id)
        messages.append(raised(lambda: busy.send(Operation.ADD, [row(4, user_id="u2")])))
        hook.close()
        # Rate limit errors: another client on the same token takes the limit; retrying gives up in the end.
        emulator.set_faults(rate_per_second=1, rate_per_minute=None)
        greedy = use(monkeypatch, emulator, emulator.token, rate_per_second=50, max_retry_seconds=0)
        greedy.get_project(project)
        messages.append(raised(lambda: greedy.get_project(project)))
        greedy.close()
    return messages


def test_every_optimizely_troubleshooting_quote_is_what_the_code_says(monkeypatch):
    entries = quotes("Optimizely", "**Troubleshooting.**")
    assert len(entries) >= 7  # one per troubleshooting entry of the source document, at least
    produced = optimizely_messages(monkeypatch)
    missing = [q for q in entries if not any(as_pattern(q).search(m or "") for m in produced)]
    assert missing == [], f"not produced: {missing}; produced: {json.dumps(produced, indent=1)}"
