"""The fault matrix: every destination and object type, in real Airflow runs, against emulators that misbehave.

Each vendor's object types run as the tasks of one DAG (a diff and a sync each), twice, over a changing
warehouse, while the emulator answers 15% of requests 503, cuts 3% of connections after the write applied,
throttles 2% with 429 + Retry-After and delays 5% by 300 ms, all drawn from one seeded generator. After the
second run each target holds exactly the source (nothing lost; no create or event, which the API would
keep twice, landed twice) and each sync's committed baseline is that source.

Then the worst cases: a destination down for a whole run (every request 503, or the port refusing
connections) and an emulator restarted in the middle of a delivery (connections cut, state kept).

The scenarios live in ``tests/support/fault_matrix.py``; each test's sync state is under its ``tmp_path``.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.integration.test_engine_guarantees_a import pointer
from tests.support.fault_matrix import (
    FAULTS,
    PATIENT_RETRIES,
    RETRIES,
    SCENARIOS,
    WRITES,
    RestartAfterWrites,
    Scenario,
    configured_secrets,
    connections,
    dag_source,
    landed,
)
from tests.support.reliability import reliability_case
from tests.support.secrets_scan import assert_no_secrets

pytestmark = [pytest.mark.slow, pytest.mark.integration]

FAULT_CASE = "15% 503, 3% dropped connections, 2% 429 with Retry-After, 5% 300 ms spikes (seeded)"
CONVERGES = "exact end state and committed state within two runs; no row lost"
ONCE = "; each {what} landed once"
DOWN_503 = "down for a whole run: every request 503"
DOWN_REFUSED = "down for a whole run: connection refused"
DOWN_OUTCOME = ("the task fails with the API error as its last line; nothing committed (not even an empty baseline); "
                "the next run delivers all")
RESTART = "emulator restarted mid-run (connections cut, state kept)"
RESTART_OUTCOME = "exact end state and committed state within two runs; nothing lost, no create or event landed twice"
#: Chosen so that, in the order these scenarios send, a create of Optimizely and of Permutive loses its answer.
SEED = 74


class Matrix:
    """Emulators as Airflow connections, the warehouse, and one DAG per test over the chosen scenarios."""

    def __init__(self, dag_runner: Any, warehouse: Any, monkeypatch: Any, tmp_path: Any, emulators: dict[str, Any]):
        self.dag_runner, self.warehouse, self.emulators = dag_runner, warehouse, emulators
        self.prefix = f"fm_{uuid.uuid4().hex[:6]}"
        #: The sync state of this test's runs (plans, snapshots, rejected rows), under its tmp_path.
        self.state_dir = tmp_path / "sync_state"
        monkeypatch.setenv("AIRFLOW__ZEOTAP_SYNC__STATE_URI", f"file://{self.state_dir}")
        self.monkeypatch = monkeypatch
        self.rows_by_run: dict[str, list[list[dict[str, Any]]]] = {}
        #: Every secret the connections carry: what a scan of this test's logs, XCom and state must not find.
        self.secrets = configured_secrets(emulators)
        self.connect()

    def connect(self, **retries: Any) -> None:
        """The emulators as Airflow connections, with the matrix's retries (or the ones given)."""
        for name, value in connections(self.emulators, retries or RETRIES).items():
            self.monkeypatch.setenv(name, value)

    def dag(self, scenarios: list[Scenario]) -> str:
        for scenario in scenarios:
            scenario.prepare(self.emulators[scenario.vendor])
        return self.dag_runner.write(dag_source(f"{self.prefix}_dag", self.prefix, scenarios))

    def run(self, dag: str, scenarios: list[Scenario], source: int) -> Any:
        """Run the DAG over each scenario's source number ``source`` (1: the first rows, 2: their changes)."""
        for scenario in scenarios:
            rows = scenario.load(self.warehouse, self.prefix, source)
            self.rows_by_run.setdefault(scenario.key, []).append(rows)
        return self.dag_runner.run(dag)

    def check(self, scenarios: list[Scenario], result: Any) -> None:
        """Each target holds exactly its source and nothing twice; each sync committed exactly its source."""
        for scenario in scenarios:
            scenario.check(self.emulators[scenario.vendor], self.rows_by_run[scenario.key])
            synced = result.result(f"sync_{scenario.key}")
            assert (synced["failed"], synced["rejected"]) == (0, 0), (scenario.key, synced)
            committed = pointer(scenario.sync_id(self.prefix))
            assert committed == synced["committed"]
            source = self.rows_by_run[scenario.key][-1]
            snapshot = pq.read_table(committed["snapshot_uri"].removeprefix("file://")).to_pylist()
            key = scenario.primary_key
            assert sorted(str(r[key]) for r in snapshot) == sorted(str(r[key]) for r in source), scenario.key


@pytest.fixture
def emulators(personyze_emulator, permutive_emulator, optimizely_emulator, zeotap_emulator) -> dict[str, Any]:
    # Keys of this test alone: the secrets scan after it must find nothing another test legitimately stored.
    personyze_emulator.api_key = f"pz-{uuid.uuid4().hex}"
    permutive_emulator.write_key = f"pm-{uuid.uuid4().hex}"
    optimizely_emulator.token = f"op-{uuid.uuid4().hex}"
    zeotap_emulator.api_key = f"zt-{uuid.uuid4().hex}"
    return {"personyze": personyze_emulator, "permutive": permutive_emulator, "optimizely": optimizely_emulator,
            "zeotap": zeotap_emulator}


@pytest.fixture
def matrix(dag_runner, warehouse, monkeypatch, tmp_path, emulators, capsys) -> Iterator[Matrix]:
    """The matrix, then the secrets scan of what its runs left: the metadata DB (XCom, rendered fields, the
    asset and task state stores), the task logs, the sync state (outcomes, rejected rows, snapshots) and the
    runs' output the test did not read itself."""
    matrix = Matrix(dag_runner, warehouse, monkeypatch, tmp_path, emulators)
    yield matrix
    assert_no_secrets(secrets=matrix.secrets, airflow_home=os.environ["AIRFLOW_HOME"],
                      state_dirs=[matrix.state_dir], texts={"output": capsys.readouterr().out})


def injected(emulator: Any) -> dict[str, int]:
    faults = [r.fault for r in emulator.requests]
    return {kind: faults.count(kind) for kind in ("error", "rate_limited", "dropped")}


@reliability_case("fault", "Personyze users (POST /rest/do)", FAULT_CASE, CONVERGES, param="personyze")
@reliability_case("fault", "Personyze users (per row)", FAULT_CASE, CONVERGES, param="personyze")
@reliability_case("fault", "Personyze list members", FAULT_CASE,
                  CONVERGES + "; an add is sent again only after its answer was lost", param="personyze")
@reliability_case("fault", "Personyze products catalog", FAULT_CASE, CONVERGES, param="personyze")
@reliability_case("fault", "Personyze product interactions", FAULT_CASE, CONVERGES + ONCE.format(what="interaction"),
                  param="personyze")
@reliability_case("fault", "Personyze articles catalog", FAULT_CASE, CONVERGES, param="personyze")
@reliability_case("fault", "Personyze article interactions", FAULT_CASE,
                  "every interaction logged within two runs; one logged twice only where an answer was lost (no API "
                  "reads them back, so nothing can be looked up: documented)", param="personyze")
@reliability_case("fault", "Permutive segments", FAULT_CASE, CONVERGES + ONCE.format(what="create"),
                  param="permutive")
@reliability_case("fault", "Optimizely list attributes", FAULT_CASE, CONVERGES, param="optimizely")
@reliability_case("fault", "Optimizely audiences", FAULT_CASE, CONVERGES + ONCE.format(what="create"),
                  param="optimizely")
@reliability_case("fault", "Optimizely attributes", FAULT_CASE, CONVERGES + ONCE.format(what="create"),
                  param="optimizely")
@reliability_case("fault", "Optimizely custom events", FAULT_CASE, CONVERGES + ONCE.format(what="create"),
                  param="optimizely")
@reliability_case("fault", "Zeotap profiles", FAULT_CASE, CONVERGES, param="zeotap")
@pytest.mark.parametrize("vendor", ["personyze", "permutive", "optimizely", "zeotap"])
def test_every_object_type_reaches_its_exact_end_state_under_faults_within_two_runs(matrix, vendor):
    scenarios = SCENARIOS[vendor]()
    emulator = matrix.emulators[vendor]
    dag = matrix.dag(scenarios)
    emulator.set_faults(**FAULTS, seed=SEED)
    first = matrix.run(dag, scenarios, 1)
    assert first.state == "success", first.task_states
    # Every source row is valid: a rejection would be a fault mistaken for a refusal (failed rows may wait a run).
    assert {s.key: first.result(f"sync_{s.key}")["rejected"] for s in scenarios} == {s.key: 0 for s in scenarios}
    second = matrix.run(dag, scenarios, 2)
    assert second.state == "success", second.task_states
    matrix.check(scenarios, second)
    assert min(injected(emulator).values()) >= 1, injected(emulator)  # each fault was there to survive


DOWN = {"personyze": ("users_do", "503"), "permutive": ("segments", "refused"),
        "optimizely": ("custom_events", "503"), "zeotap": ("profiles", "refused")}


@reliability_case("fault", "Personyze users (POST /rest/do)", DOWN_503, DOWN_OUTCOME)
@reliability_case("fault", "Optimizely custom events", DOWN_503, DOWN_OUTCOME)
@reliability_case("fault", "Permutive segments", DOWN_REFUSED, DOWN_OUTCOME)
@reliability_case("fault", "Zeotap profiles", DOWN_REFUSED, DOWN_OUTCOME)
def test_a_destination_down_for_a_whole_run_fails_cleanly_commits_nothing_and_the_next_run_delivers_all(
    matrix, capsys
):
    scenarios = [s for vendor, (key, _) in DOWN.items() for s in SCENARIOS[vendor]() if s.key == key]
    dag = matrix.dag(scenarios)
    for vendor, (_, how) in DOWN.items():
        if how == "503":
            matrix.emulators[vendor].set_faults(error_rate=1.0, error_status=503)
        else:
            matrix.emulators[vendor].stop()  # the port refuses connections
    capsys.readouterr()
    down = matrix.run(dag, scenarios, 1)
    out = capsys.readouterr().out
    for scenario in scenarios:
        task = f"sync_{scenario.key}"
        assert down.task_states[task] == "failed" and down.task_states[f"diff_{scenario.key}"] == "success"
        assert pointer(scenario.sync_id(matrix.prefix)) is None  # nothing committed, not even an empty baseline
    # One exception per failed task, the API's error as its last line: no chain of wrapped errors, no library's type.
    blocks = tracebacks(out)
    assert len(blocks) == len(scenarios), blocks
    assert not [b for b in blocks if "During handling of the above exception" in b or "direct cause" in b]
    last_lines = [[line for line in b.splitlines() if line.strip()][-1] for b in blocks]
    for scenario in scenarios:
        vendor = scenario.vendor.capitalize()
        cause = "failed (HTTP 503): Service Unavailable" if DOWN[scenario.vendor][1] == "503" else (
            "failed (no response): ConnectError")
        # A refused connection leads with what to fix (the host field), then the request that failed.
        advice = rf"(Could not reach {vendor} at \S+: check the host field of connection .*\()?"
        pattern = (rf"airflow_provider_zeotap\.http\.errors\.(ServerError|ApiConnectionError): {advice}{vendor} "
                   rf"(GET|POST) http://127\.0\.0\.1:\d+/\S+ {re.escape(cause)}.*"
                   rf"\[gave up after 10 attempts in [\d.]+ s\]\)?")
        assert [line for line in last_lines if re.fullmatch(pattern, line)], (vendor, last_lines)
    for vendor, (_, how) in DOWN.items():
        emulator = matrix.emulators[vendor]
        if how == "503":
            assert not [r for r in emulator.requests if r.method in WRITES and landed(r)]
            assert all(r.status == 503 for r in emulator.requests)
            emulator.set_faults()
        else:
            emulator.start()
            assert emulator.requests == []

    again = matrix.run(dag, scenarios, 1)  # the same source: everything the down run did not deliver
    assert again.state == "success", again.task_states
    matrix.check(scenarios, again)


def tracebacks(out: str) -> list[str]:
    """Each failed task's traceback up to its exception line, as dag.test prints them (the task log's last lines)."""
    blocks = []
    for part in out.split("Traceback (most recent call last):")[1:]:
        blocks.append(part.split("::group::Post Execute")[0].rsplit("\n", 1)[0])
    return blocks


RESTARTED = {"personyze": ("purchases", 1), "permutive": ("segments", 2), "optimizely": ("custom_events", 3),
             "zeotap": ("profiles", 10)}


@reliability_case("fault", "Personyze product interactions", RESTART, RESTART_OUTCOME)
@reliability_case("fault", "Permutive segments", RESTART, RESTART_OUTCOME)
@reliability_case("fault", "Optimizely custom events", RESTART, RESTART_OUTCOME)
@reliability_case("fault", "Zeotap profiles", RESTART, RESTART_OUTCOME)
def test_an_emulator_restarted_mid_run_is_survived_within_two_runs(matrix):
    scenarios = [s for vendor, (key, _) in RESTARTED.items() for s in SCENARIOS[vendor]() if s.key == key]
    matrix.connect(**PATIENT_RETRIES)
    dag = matrix.dag(scenarios)
    watchers = []
    for vendor, (_, writes) in RESTARTED.items():
        matrix.emulators[vendor].set_faults(latency_ms=80)  # requests are in flight when the connections are cut
        watchers.append(RestartAfterWrites(matrix.emulators[vendor], writes))
    for watcher in watchers:
        watcher.start()
    try:
        first = matrix.run(dag, scenarios, 1)
    finally:
        for watcher in watchers:
            watcher.stop()
    for watcher in watchers:
        assert watcher.restarted_after is not None, f"{watcher.emulator.name} was never restarted"
        after = watcher.emulator.requests[watcher.restarted_after:]
        assert [r for r in after if r.status is not None], f"{watcher.emulator.name}: not restarted mid-run"
    second = matrix.run(dag, scenarios, 1)  # what the first run left failed or unanswered is settled now
    assert second.state == "success", (first.task_states, second.task_states)
    matrix.check(scenarios, second)


@reliability_case("fault", "Permutive segments (mirror)",
                  "every answer to one create lost (it landed), then its row leaves the source",
                  "the create ends failed, uncommitted; the next mirror removes it from the ownership records' copy "
                  "of the row as sent (unconfirmed_removals 1); the target ends equal to the source")
def test_a_mirror_create_whose_answers_were_all_lost_is_removed_once_its_row_leaves_the_source(matrix):
    def rows(run: int) -> list[dict[str, Any]]:
        return [{"code": code, "name": code.title()} for code in (["fm-orphan", "fm-kept"] if run == 1 else ["fm-kept"])]

    scenario = Scenario("orphans", "permutive", "Permutive segments", "PermutiveSyncOperator", ["code", "name"], "code",
                        rows, "import_id='{import_id}', audience_mode='mirror', batch_size=1, "
                        "field_mapping={{'segment_code': 'code', 'segment_name': 'name'}}",
                        setup=lambda emulator: {"import_id": emulator.create_import("Orphans")})
    permutive = matrix.emulators["permutive"]
    dag = matrix.dag([scenario])
    # Every attempt at the first create lands (the first) or meets "already exists" (the rest), and every answer is cut.
    permutive.set_faults(drop_first=RETRIES["max_attempts"], method="PATCH", body_contains='"fm-orphan"')
    first = matrix.run(dag, [scenario], 1)
    assert first.result("sync_orphans")["failed"] == 1
    assert set(permutive.segments(scenario.context["import_id"])) == {"fm-orphan", "fm-kept"}
    permutive.set_faults()
    second = matrix.run(dag, [scenario], 2)
    assert second.state == "success" and second.result("sync_orphans")["unconfirmed_removals"] == 1
    assert set(permutive.segments(scenario.context["import_id"])) == {"fm-kept"}
