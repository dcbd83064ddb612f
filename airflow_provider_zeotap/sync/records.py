"""What a sync task records about its run besides its result, so the run can be read back later.

The ``SyncResult`` (XCom ``return_value``) says what a run did, but a failed task returns nothing, and
neither says which guard settings the run had. Two more small XCom documents fill that in, each a few
hundred bytes and never row data:
- ``sync_settings``, pushed when the task starts: the guards and rejection limits it ran with, and where
  its state lives;
- ``sync_failure``, pushed when the task fails: what kind of stop it was (a stale plan, a guard, another
  binding, too many rejected rows, anything else) and its message, with the result when there is one.
The Syncs page of the Airflow UI (``ui/``) reads them; anyone can, through Airflow's XCom API.
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict

from airflow_provider_zeotap.sync.models import SyncResult

SETTINGS_KEY = "sync_settings"
FAILURE_KEY = "sync_failure"
#: A failure message longer than this is cut: the record is for a glance, the log has the rest.
MESSAGE_CHARS = 2000


class FailureKind(str, Enum):
    """Why a sync task failed, in the words the README uses for each stop."""

    #: Another run committed since the plan was computed: nothing was sent.
    STALE = "stale"
    #: ``max_removals``, ``max_removal_ratio`` or ``allow_empty_source`` refused the run before any write.
    GUARD = "guard"
    #: The baseline was delivered to another target: nothing was sent (``rebind``).
    BINDING = "binding"
    #: ``max_rejected_ratio`` or ``fail_on_rejected``: the run finished and committed, then failed.
    REJECTED_ROWS = "rejected_rows"
    #: A setting is wrong (the message names it); nothing was sent.
    CONFIGURATION = "configuration"
    #: Anything else: an API that stayed down, a bad key, a crash.
    ERROR = "error"


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class RunSettings(_Record):
    """The settings a sync task ran with that a person reviewing the sync wants to see."""

    sync_id: str
    destination: str
    mode: str
    state_uri: str
    max_removals: int | None = None
    max_removal_ratio: float | None = None
    allow_empty_source: bool = False
    max_rejected_ratio: float | None = None
    fail_on_rejected: bool = False
    dry_run: bool = False
    full_refresh: bool = False
    take_over_existing: bool = False
    rebind: bool = False
    batch_size: int | None = None


class RunFailure(_Record):
    kind: FailureKind
    message: str
    #: The run's result when it got that far (``rejected_rows``: the run finished and committed).
    result: SyncResult | None = None
