"""An emulator in a child process, driven over its admin endpoints.

An in-process emulator shares the interpreter (and its GIL) with the client under test. For throughput
figures, and for tests whose time bound should measure the client, the server gets its own process: this
starts ``python -m airflow_provider_zeotap.testing --only <name>`` on a free port and reads its faults, request
log and state over ``/_emulator``, the same endpoints a person uses.
"""

from __future__ import annotations

import re
import subprocess
import sys
from types import TracebackType
from typing import Any

import httpx
from typing_extensions import Self

from airflow_provider_zeotap.testing.request_log import RecordedRequest, max_overlap
from airflow_provider_zeotap.testing.server import ADMIN_PREFIX

_URL = re.compile(r"^(\w+)\s+(https?://\S+)\s+\(API: (\S+)\)")
_START_LINES = 200


class EmulatorProcess:
    """``with EmulatorProcess("zeotap") as zeotap: zeotap.set_faults(latency_ms=50); ...``"""

    def __init__(self, name: str) -> None:
        self.name = name
        self.url = ""
        self.api_url = ""
        self.credentials: dict[str, str] = {}
        #: ``AIRFLOW_CONN_<NAME>_DEFAULT`` and its value, as the CLI printed it.
        self.airflow_env: dict[str, str] = {}
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> Self:
        command = [sys.executable, "-m", "airflow_provider_zeotap.testing", "--only", self.name,
                   f"--{self.name}-port", "0", "--no-seed"]
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self._process.stdout is not None
        for _ in range(_START_LINES):
            line = self._process.stdout.readline()
            if not line:
                break
            if match := _URL.match(line):
                self.url, self.api_url = match.group(2), match.group(3)
            elif line.startswith("    ") and ": " in line:
                key, _, value = line.strip().partition(": ")
                self.credentials[key] = value
            elif line.startswith("AIRFLOW_CONN_"):
                variable, _, value = line.strip().partition("=")
                self.airflow_env[variable] = value.strip("'")
            elif line.startswith("Serving"):
                return self
        self.stop()
        raise RuntimeError(f"the {self.name} emulator process did not start")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)
            if self._process.stdout is not None:
                self._process.stdout.close()
            self._process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _admin(self, method: str, path: str, **kwargs: Any) -> Any:
        response = httpx.request(method, f"{self.url}{ADMIN_PREFIX}{path}", timeout=60, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None

    def set_faults(self, **settings: Any) -> dict[str, Any]:
        return self._admin("POST", "/faults", json=settings)

    @property
    def requests(self) -> list[RecordedRequest]:
        return [RecordedRequest(**entry) for entry in self._admin("GET", "/requests")]

    def clear_requests(self) -> None:
        self._admin("DELETE", "/requests")

    def state(self) -> dict[str, Any]:
        return self._admin("GET", "/state")

    def reset(self) -> None:
        self._admin("POST", "/reset")

    def max_in_flight_seen(self, method: str | None = None, path_prefix: str | None = None) -> int:
        return max_overlap(
            (entry.started_at, entry.finished_at) for entry in self.requests
            if (method is None or entry.method == method.upper())
            and (path_prefix is None or entry.path.startswith(path_prefix))
        )
