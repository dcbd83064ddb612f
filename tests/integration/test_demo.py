"""The README's first command: the demo runs, its report is what the emulators hold, and the README shows it.

The demo runs in a fresh process, as a user runs it. After each run it dumps, beside its report, what each
emulator holds and the requests it received (the emulators' own records, not the report's). This test reads
those dumps on its own terms and checks every number of the report against them, and the final state
against the warehouse's last audience. The report is deterministic, so the README's copy must equal it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^  (?P<name>\w+) +received (?P<received>.*?); (?P<rejected>rejected .*?); (?P<holds>.*)$")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[str, Path]:
    workdir = tmp_path_factory.mktemp("demo") / "demo"
    done = subprocess.run([sys.executable, str(ROOT / "dags_examples" / "run_demo.py"), "--workdir", str(workdir)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout, workdir


def runs(output: str) -> list[dict[str, re.Match]]:
    """The report's lines, by run and destination."""
    found: list[dict[str, re.Match]] = []
    for line in output.splitlines():
        if line.startswith("== Run "):
            found.append({})
        elif found and (match := LINE.match(line)):
            found[-1][match["name"]] = match
    return found


def count(items: list, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def ok(requests: list[dict], method: str, path: str) -> list[dict]:
    return [r for r in requests if r["method"] == method and r["path"].startswith(path) and 200 <= r["status"] < 300]


def personyze_members(state: dict) -> set[str]:
    emails = {u["user_id"]: u.get("email") for u in state["users"]}
    (vip_list,) = state["user_lists"]
    return {emails[m["user_id"]] for m in state["user_list_users"] if m["user_list_id"] == vip_list["id"]}


def ids(list_content: str) -> list[str]:
    return [i for i in list_content.split(",") if i.strip()]


def optimizely_members(state: dict) -> set[str]:
    (vip_list,) = state["list_attributes"]
    return set(ids(vip_list.get("list_content") or ""))


def test_the_demo_report_matches_what_the_emulators_received_and_hold(demo):
    output, workdir = demo
    report = runs(output)
    assert len(report) == 3
    for number, lines in enumerate(report, start=1):
        dumped = json.loads((workdir / "emulators" / f"run-{number}.json").read_text())
        assert set(lines) == set(dumped)

        personyze = dumped["personyze"]
        adds = ok(personyze["requests"], "POST", "/rest/user_list_users")
        removals = ok(personyze["requests"], "DELETE", "/rest/user_list_users/")
        line = lines["personyze"]
        expected = f"{count(adds, 'member add')}, {count(removals, 'member removal')}" if adds or removals else "nothing"
        assert line["received"] == expected
        assert line["holds"] == f"list holds {len(personyze_members(personyze['state']))} members"

        zeotap = dumped["zeotap"]
        writes = [r for r in ok(zeotap["requests"], "POST", "/cdp/v1/users") if r["path"] == "/cdp/v1/users"]
        assert lines["zeotap"]["received"] == (count(writes, "profile write") if writes else "nothing")
        profiles = zeotap["state"]["profiles"]
        assert lines["zeotap"]["holds"] == f"holds {len(profiles)} profile{'' if len(profiles) == 1 else 's'}"

        optimizely = dumped["optimizely"]
        writes = ok(optimizely["requests"], "PATCH", "/v2/list_attributes/")
        sizes = ", ".join(str(len(ids(w["json"]["list_content"]))) for w in writes)
        expected = f"{count(writes, 'whole-list write')} ({sizes} ids)" if writes else "nothing"
        assert lines["optimizely"]["received"] == expected
        assert lines["optimizely"]["holds"] == f"list attribute holds {len(optimizely_members(optimizely['state']))} ids"

    # What the destinations hold at the end is the warehouse's last audience, the fixed row included.
    final = json.loads((workdir / "emulators" / "run-3.json").read_text())
    vips = {f"customer{i}@example.com" for i in (1, 7, 9, 11, 13)} | {"customer5@new.example.com"}
    assert personyze_members(final["personyze"]["state"]) == vips
    # Zeotap takes the audience by upsert: customer 3 left the audience but keeps the profile it was given.
    profiles = {p["ids"]["user_id"]: p["profile"] for p in final["zeotap"]["state"]["profiles"]}
    assert set(profiles) == {str(i) for i in (1, 3, 5, 7, 9, 11, 13)}
    assert profiles["1"] == {"first_name": "Renamed1", "audience": "vip"}
    assert optimizely_members(final["optimizely"]["state"]) == {f"customer-{i}" for i in (1, 5, 7, 9, 11, 13)}


def test_the_bad_row_is_rejected_with_its_reason_until_it_is_fixed(demo):
    output, _ = demo
    report = runs(output)
    for number in (1, 2):
        rejected = report[number - 1]["personyze"]["rejected"]
        assert rejected == "rejected 1 (email='customer7.example.com': not an email address: 'customer7.example.com')"
    assert report[2]["personyze"]["rejected"] == "rejected none"
    # The fixed row is the only thing the third run sends.
    assert report[2]["personyze"]["received"] == "1 member add, 0 member removals"
    assert report[2]["zeotap"]["received"] == "nothing"  # its rows never had the bad email
    assert report[1]["zeotap"]["received"] == "2 profile writes"  # the one who joined, the one renamed
    assert report[2]["optimizely"]["received"] == "nothing"  # its ids never had the bad email


def test_the_readme_shows_the_demo_output_as_it_is(demo):
    output, _ = demo
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```\n(== .*?)```", readme, flags=re.S)
    assert blocks, "the README has no demo-output block (a fenced block starting with '== ')"
    assert blocks[0].strip() == output.strip()


def test_zeotaps_deletion_requests_and_fetch_run_after_the_fan_out_and_report_what_zeotap_holds(demo):
    output, workdir = demo
    then = output.split("\n== Then:", 1)[1].split("\n== Done.", 1)[0].splitlines()
    (deletion,) = [line for line in then if line.startswith("  zeotap_profiles_delete ")]
    (fetch,) = [line for line in then if line.startswith("  zeotap_profiles_fetch ")]
    held = {p["ids"]["user_id"]: p["profile"] for p in
            json.loads((workdir / "emulators" / "zeotap-after.json").read_text())["profiles"]}
    # Customer 3 (who had a profile from run 1) is deleted; 99 never had one; the others keep theirs.
    assert set(held) == {str(i) for i in (1, 5, 7, 9, 11, 13)}
    assert deletion.endswith(f"deleted 1 profile, 1 id not found; holds {len(held)} profiles")
    # The fetch asks for every customer in the warehouse (12: customer 3 left it) and writes what Zeotap holds.
    (name,) = [p.name for p in (workdir / "profiles").iterdir()]
    fetched = pq.read_table(workdir / "profiles" / name).to_pylist()
    assert {json.loads(row["ids"])["user_id"]: json.loads(row["profile"]) for row in fetched} == held
    assert fetch.endswith(f"fetched {len(fetched)} profiles for 12 customers ({12 - len(fetched)} not found) "
                          f"into {name}; holds {len(held)} profiles")
