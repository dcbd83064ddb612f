"""Where a sync's files live, and how the engine (which works on local paths) reaches them.

The state URI may be any ObjectStoragePath (``file://``, ``s3://``, ...). DuckDB reads and writes local
files, so for a remote URI files are staged in a local folder and copied up when written; for
``file://`` the engine works in place.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import cached_property
from urllib.parse import unquote, urlsplit

from airflow_provider_zeotap.errors import ConfigurationError

#: Matched with ``fullmatch``: ``$`` would let a trailing newline through into a folder name.
SYNC_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
#: What ``new_plan_id`` produces: UTC time to the microsecond, then 8 hex digits.
PLAN_ID_PATTERN = re.compile(r"\d{8}T\d{12}-[0-9a-f]{8}")
#: What the commit names a snapshot: its plan id, then the UTC time of the commit.
SNAPSHOT_ID_PATTERN = re.compile(r"\d{8}T\d{12}-[0-9a-f]{8}-\d{8}T\d{12}")
STATE_DIR_NAME = "zeotap_sync_state"


@contextmanager
def written_whole(path: str, *, durable: bool = False) -> Iterator[str]:
    """A path beside ``path`` to write; renamed onto ``path`` once the block ends (fsynced first if ``durable``).

    A task killed mid-write leaves the old file or none under ``path``, never half of one: a truncated
    Parquet file would stop every later run that reads the folder. The half-written ``<path>.partial`` ends in
    ``.partial``, which no reader lists.
    """
    partial = path + ".partial"
    try:
        yield partial
        if durable:
            descriptor = os.open(partial, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def validate_sync_id(sync_id: str) -> str:
    if not isinstance(sync_id, str) or not SYNC_ID_PATTERN.fullmatch(sync_id):
        raise ConfigurationError(
            f"sync_id {sync_id!r} is not valid: use 1-128 letters, digits, '_', '.' or '-', starting with a letter "
            "or digit. It names the sync's state folder and its Airflow asset, so keep it stable."
        )
    return sync_id


def new_plan_id() -> str:
    """Plan ids begin with their UTC time, so sorting them sorts the runs (pruning relies on it)."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}"


def default_state_uri() -> str:
    """``[zeotap_sync] state_uri`` if set, else ``file://$AIRFLOW_HOME/zeotap_sync_state``."""
    from airflow.sdk.configuration import conf

    configured = conf.get("zeotap_sync", "state_uri", fallback="") or ""
    if configured.strip():
        return configured.strip()
    home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
    return "file://" + os.path.join(os.path.abspath(home), STATE_DIR_NAME)


def is_local(uri: str) -> bool:
    scheme = urlsplit(uri).scheme
    return scheme in ("", "file")


def local_path(uri: str) -> str:
    """The local path of a ``file://`` URI (or a bare path)."""
    parts = urlsplit(uri)
    if parts.scheme not in ("", "file"):
        raise ValueError(f"{uri!r} is not a local path")
    return parts.path if parts.scheme == "file" else uri


def join(uri: str, *names: str) -> str:
    return "/".join([uri.rstrip("/"), *(n.strip("/") for n in names)])


def unsafe_uri_reason(uri: str) -> str | None:
    """Why ``uri`` cannot name a file of a sync's state, or None when it can.

    A ``..`` or ``.`` segment (also percent-encoded) could climb out of the folder a prefix check
    approved; a query, a fragment or a control character has no place in a state file's name.
    """
    if not isinstance(uri, str) or not uri:
        return "it is empty"
    if any(ord(char) < 32 or ord(char) == 127 for char in uri):
        return "it holds a control character (a newline?)"
    parts = urlsplit(uri)
    if parts.query or parts.fragment or "?" in uri or "#" in uri:
        return "it has a query or a fragment"
    for segment in parts.path.split("/"):
        if unquote(segment) in (".", ".."):
            return f"it has a {segment!r} segment"
    return None


def is_under(uri: str, folder: str) -> bool:
    """Whether ``uri`` names something strictly inside ``folder`` (same scheme and host, segment by segment)."""
    if unsafe_uri_reason(uri) or unsafe_uri_reason(folder):
        return False
    inner, outer = urlsplit(uri), urlsplit(folder.rstrip("/"))
    if (inner.scheme or "file") != (outer.scheme or "file") or inner.netloc != outer.netloc:
        return False
    inner_segments = inner.path.split("/")
    outer_segments = outer.path.split("/")
    return (
        len(inner_segments) > len(outer_segments)
        and inner_segments[: len(outer_segments)] == outer_segments
        and all(inner_segments[len(outer_segments):])
    )


class SyncStorage:
    """The folder tree of one sync: plans (per run) and committed snapshots."""

    def __init__(self, state_uri: str, sync_id: str) -> None:
        self.state_uri = state_uri.rstrip("/")
        self.sync_id = validate_sync_id(sync_id)
        self.root = join(self.state_uri, sync_id)

    def plan_uri(self, plan_id: str, *names: str) -> str:
        return join(self.root, "plans", plan_id, *names)

    def committed_uri(self, snapshot_id: str) -> str:
        return join(self.root, "committed", f"{snapshot_id}.parquet")

    def attempted_uri(self, target_key: str, *names: str) -> str:
        """Ownership records of one destination target (see ``sync/ownership.py``)."""
        return join(self.root, "attempted", target_key, *names)

    def list_names(self, uri: str) -> list[str]:
        """Names of the entries of the folder ``uri``, sorted; none if it does not exist."""
        return sorted(self._children(uri))

    def remove(self, uri: str) -> None:
        self._remove(uri)

    @cached_property
    def _staging(self) -> str:
        return tempfile.mkdtemp(prefix=f"zeotap-sync-{self.sync_id}-")

    def to_local(self, uri: str) -> str:
        """A local path to write ``uri`` at (call ``publish`` afterwards) or to read it from."""
        if is_local(uri):
            path = local_path(uri)
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            return path
        staged = os.path.join(self._staging, urlsplit(uri).path.lstrip("/"))
        os.makedirs(os.path.dirname(staged), exist_ok=True)
        return staged

    def local_dir(self, uri: str) -> str:
        """A local folder for the files under ``uri`` (the folder itself when local)."""
        path = local_path(uri) if is_local(uri) else os.path.join(self._staging, urlsplit(uri).path.lstrip("/"))
        os.makedirs(path, exist_ok=True)
        return path

    def fetch(self, uri: str) -> str:
        """A local copy of a file that exists at ``uri``."""
        path = self.to_local(uri)
        if not is_local(uri) and not os.path.exists(path):
            _copy(uri, path, upload=False)
        return path

    def publish(self, uri: str) -> None:
        """Copy a staged file up to its remote home (no-op for local URIs)."""
        if not is_local(uri):
            _copy(uri, self.to_local(uri), upload=True)

    def exists(self, uri: str) -> bool:
        if is_local(uri):
            return os.path.exists(local_path(uri))
        from airflow.sdk import ObjectStoragePath

        return ObjectStoragePath(uri).exists()

    def prune(self, *, keep_plan: str, keep_snapshots: set[str], keep_recent_plans: int = 5) -> list[str]:
        """Remove old plans and committed snapshots so the state folder does not grow with every run.

        Kept: the ``keep_recent_plans`` newest plans (plan ids begin with their UTC time) and ``keep_plan``;
        the committed snapshots named in ``keep_snapshots`` (the new baseline and the one before it).
        """
        removed: list[str] = []
        plans = sorted(self._children(join(self.root, "plans")))
        for name in plans[: max(0, len(plans) - keep_recent_plans)]:
            if name != keep_plan:
                self._remove(join(self.root, "plans", name))
                removed.append(f"plans/{name}")
        for name in self._children(join(self.root, "committed")):
            if name.split(".", 1)[0] not in keep_snapshots:
                self._remove(join(self.root, "committed", name))
                removed.append(f"committed/{name}")
        return removed

    def _children(self, uri: str) -> list[str]:
        if is_local(uri):
            path = local_path(uri)
            return os.listdir(path) if os.path.isdir(path) else []
        from airflow.sdk import ObjectStoragePath

        folder = ObjectStoragePath(uri)
        return [child.name for child in folder.iterdir()] if folder.exists() else []

    def _remove(self, uri: str) -> None:
        if is_local(uri):
            path = local_path(uri)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.exists(path):
                os.remove(path)
            return
        from airflow.sdk import ObjectStoragePath

        target = ObjectStoragePath(uri)
        if target.is_dir():
            target.rmdir(recursive=True)
        else:
            target.unlink(missing_ok=True)

    def cleanup(self) -> None:
        if "_staging" in self.__dict__:
            shutil.rmtree(self._staging, ignore_errors=True)


def _copy(uri: str, path: str, *, upload: bool) -> None:
    from airflow.sdk import ObjectStoragePath

    remote = ObjectStoragePath(uri)
    if upload:
        remote.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "rb") as src, remote.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    else:
        with remote.open("rb") as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst)
