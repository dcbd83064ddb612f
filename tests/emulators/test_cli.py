"""``python -m airflow_provider_zeotap.testing`` serves the emulators and prints connection lines."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys

import httpx


def test_serves_and_prints_airflow_connections() -> None:
    command = [sys.executable, "-m", "airflow_provider_zeotap.testing", "--only", "personyze,zeotap"]
    command += ["--personyze-port", "0", "--zeotap-port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        lines = []
        while not (line := process.stdout.readline()).startswith("Serving"):
            assert line, process.stderr.read() if process.stderr else "no output"
            lines.append(line.rstrip("\n"))
        env = dict(line.split("=", 1) for line in lines if line.startswith("AIRFLOW_CONN_"))
        assert set(env) == {"AIRFLOW_CONN_PERSONYZE_DEFAULT", "AIRFLOW_CONN_ZEOTAP_DEFAULT"}
        personyze = json.loads(shlex.split(env["AIRFLOW_CONN_PERSONYZE_DEFAULT"])[0])
        assert personyze["conn_type"] == "personyze" and personyze["password"] == "personyze-test-key"
        assert "    list_id: 1" in lines
        account = httpx.get(f"{personyze['host']}/rest/account", auth=("api", personyze["password"]))
        assert account.status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_refuses_a_non_loopback_host() -> None:
    command = [sys.executable, "-m", "airflow_provider_zeotap.testing", "--host", "0.0.0.0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "loopback" in result.stderr
