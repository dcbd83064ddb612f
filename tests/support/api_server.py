"""A real ``airflow api-server`` on a free port, over an existing AIRFLOW_HOME, with known users.

The simple auth manager reads its users from ``[core] simple_auth_manager_users`` and their passwords from
a JSON file; writing that file first gives each user a known password. Stopped (the process group) at exit.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ApiServer:
    def __init__(self, home: str, users: Mapping[str, tuple[str, str]], env: Mapping[str, str] | None = None) -> None:
        """``users``: name -> (role, password); a role of "" may log in and read nothing."""
        self.home = home
        self.users = dict(users)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(home, f"api-server-{self.port}.log")
        passwords = os.path.join(home, f"passwords-{self.port}.json")
        with open(passwords, "w") as handle:
            json.dump({name: password for name, (_, password) in self.users.items()}, handle)
        self.env = {
            **os.environ,
            **(env or {}),
            "AIRFLOW_HOME": home,
            "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{n}:{r}" for n, (r, _) in self.users.items()),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": passwords,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__API_AUTH__JWT_SECRET": "syncs-page-test-secret-not-for-production",
            "AIRFLOW__API__BASE_URL": self.url,
        }
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> ApiServer:
        log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "airflow", "api-server", "--port", str(self.port), "--host", "127.0.0.1",
             "--workers", "1", "--apps", "core"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"airflow api-server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/api/v2/monitor/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"airflow api-server did not answer within {timeout} s:\n{self.log()}")

    def token(self, user: str) -> str:
        response = httpx.post(f"{self.url}/auth/token", json={"username": user, "password": self.users[user][1]}, timeout=30)
        response.raise_for_status()
        return response.json()["access_token"]

    def log(self) -> str:
        try:
            with open(self.log_path) as handle:
                return handle.read()[-5000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
