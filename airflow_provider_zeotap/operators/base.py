"""The thin part every destination operator shares: read the plan, run the delivery, return the result."""

from __future__ import annotations

import json
import logging
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException
from pydantic import ValidationError

from airflow_provider_zeotap.sync.destination import Capabilities, Destination
from airflow_provider_zeotap.errors import BindingError, ConfigurationError, GuardError, StaleBaseError
from airflow_provider_zeotap.sync.mapping import check_destination_fields
from airflow_provider_zeotap.sync.models import Plan, SyncResult
from airflow_provider_zeotap.sync.records import (
    FAILURE_KEY,
    MESSAGE_CHARS,
    SETTINGS_KEY,
    FailureKind,
    RunFailure,
    RunSettings,
)
from airflow_provider_zeotap.sync.guards import Guards
from airflow_provider_zeotap.sync.state import CommittedPointer, asset_store, sync_asset
from airflow_provider_zeotap.sync.storage import SyncStorage, validate_sync_id
from airflow_provider_zeotap.sync.summary import RejectionLimit, failed_rows_warning
from airflow_provider_zeotap.operators.deployment import (
    author_state_uris,
    default_pool,
    describe_landing,
    missing_state_error,
    trusted_state_uris,
    warn_if_state_is_local,
    with_sync_asset,
)


class RefusedBeforeSending(AirflowFailException):
    """A guard, the binding or a stale plan stopped the task before any write; not retried.

    Each of them refuses a retry in the same words (the source, the settings or the committed state must
    change first), so Airflow's retries would only add their delays before the same failure.
    """


#: The refusals :class:`RefusedBeforeSending` stands for; each keeps its own message.
REFUSALS = (GuardError, BindingError, StaleBaseError)


class TooManyRejectedRows(AirflowFailException):
    """More rows were rejected or failed than the task allows; raised after the commit.

    Not retried: a retry resumes after the last delivered batch and would report the same rows again.
    The rows are sent again by the next run, once fixed.
    """

    def __init__(self, message: str, result: SyncResult | None = None) -> None:
        super().__init__(message)
        self.result = result


def _failure_kind(error: BaseException) -> FailureKind:
    """The kind of stop, most specific first (``BindingError`` and ``GuardError`` are ``ConfigurationError``s)."""
    for kind, types in (
        (FailureKind.REJECTED_ROWS, TooManyRejectedRows),
        (FailureKind.STALE, StaleBaseError),
        (FailureKind.BINDING, BindingError),
        (FailureKind.GUARD, GuardError),
        (FailureKind.CONFIGURATION, ConfigurationError),
    ):
        if isinstance(error, types):
            return kind
    return FailureKind.ERROR


def _record_failure(context: Any, error: BaseException) -> None:
    """Leave a small record of why the task failed (a failed task returns nothing to XCom).

    The message goes through Airflow's secrets masker, as it would in the log. Recording must never hide
    the error itself, so any problem here is logged and swallowed.
    """
    if not isinstance(error, Exception):  # a kill or an interrupt: nothing to say, and no time to say it
        return
    try:
        from airflow.sdk._shared.secrets_masker import redact

        text = str(error) or type(error).__name__
        if _failure_kind(error) is FailureKind.ERROR:
            text = f"{type(error).__name__}: {text}"
        failure = RunFailure(
            kind=_failure_kind(error),
            message=str(redact(text))[:MESSAGE_CHARS],
            result=getattr(error, "result", None),
        )
        _push(context, FAILURE_KEY, failure)
    except Exception:  # noqa: BLE001 - the task's own error is what matters
        logging.getLogger(__name__).warning("Could not record why the sync task failed", exc_info=True)


def _push(context: Any, key: str, record: RunSettings | RunFailure) -> None:
    """Push a run record to XCom when the context has a task instance (tests may run without one)."""
    ti = context.get("ti") if hasattr(context, "get") else None
    if ti is not None:
        ti.xcom_push(key=key, value=record.model_dump(mode="json"))


class BaseSyncOperator(BaseOperator):
    """Send a plan's changes to one destination, then commit what it acknowledged.

    :param plan: the output of a ``SyncDiffOperator`` (pass ``diff_task.output``).
    :param sync_id: the diff task's sync id; inferred from ``plan`` when that is the diff task's output.
    :param field_mapping: ``{destination_field: source_column}``; default: the destination's default fields
        that the source has under the same name.
    :param dry_run: map, validate and batch, send nothing, commit nothing; the first ``dry_run_sample``
        payloads are written to a file named in the result.
    :param max_removals: refuse the run when it would remove more rows than this.
    :param max_removal_ratio: refuse when removals exceed this share of the committed rows (applies once
        100 rows are committed; None turns it off).
    :param allow_empty_source: allow an empty source to remove everything that was committed.
    :param batch_size: rows per batch (checkpoint unit); at most the destination's maximum.
    :param send_nulls: send null values (clearing the field) instead of leaving them out.
    :param retry_rejected: re-send rows an earlier run found invalid even though they did not change.
    :param rebind: the sync's baseline was delivered to another target (another DAG, task, connection, list or
        import); treat this task's target as new: every current row is sent, nothing is removed, and the baseline
        is bound to this task. Without it such a run is refused before anything is sent.
    :param take_over_existing: in a mirror, a record already at the target that this sync did not create is
        claimed (and so may later be removed) instead of left alone.
    :param memory_limit: DuckDB memory limit for delivery and commit (default ``"64MB"``; it spills to disk
        beyond, with one thread per 128 MB of it).
    :param max_rejected_ratio: fail the task when (rejected + failed) / selected rows exceeds this share (0 to 1),
        after the acknowledged rows are committed; None (default): no limit.
    :param fail_on_rejected: fail the task, after the commit, when any row was rejected or failed.
    """

    template_fields: Sequence[str] = ("plan", "field_mapping")
    template_fields_renderers = {"field_mapping": "json"}

    def __init__(
        self,
        *,
        plan: Any,
        sync_id: str | None = None,
        field_mapping: Mapping[str, str] | None = None,
        dry_run: bool = False,
        dry_run_sample: int = 20,
        max_removals: int | None = None,
        max_removal_ratio: float | None = 0.5,
        allow_empty_source: bool = False,
        batch_size: int | None = None,
        send_nulls: bool = False,
        retry_rejected: bool = False,
        rebind: bool = False,
        take_over_existing: bool = False,
        memory_limit: str | None = None,
        progress_interval: float = 10.0,
        max_rejected_ratio: float | None = None,
        fail_on_rejected: bool = False,
        **kwargs: Any,
    ) -> None:
        resolved = sync_id or _sync_id_of(plan)
        if not resolved:
            raise ConfigurationError(
                f"{type(self).__name__} {kwargs.get('task_id')!r}: pass sync_id (the diff task's), or pass the diff "
                "task's output as plan so it can be read from there."
            )
        self.sync_id = validate_sync_id(resolved)
        kwargs["outlets"] = with_sync_asset(kwargs.get("outlets"), sync_asset(self.sync_id))
        super().__init__(**kwargs)
        self._author_state_uris = author_state_uris(plan)
        _take_plan(plan, self.task_id)
        self.plan = plan
        self.field_mapping = field_mapping
        self.dry_run = dry_run
        self.dry_run_sample = dry_run_sample
        self.guards = Guards(
            max_removals=max_removals, max_removal_ratio=max_removal_ratio, allow_empty_source=allow_empty_source
        )
        self.batch_size = batch_size
        self.send_nulls = send_nulls
        self.retry_rejected = retry_rejected
        self.rebind = rebind
        self.take_over_existing = take_over_existing
        self.memory_limit = memory_limit
        self.progress_interval = progress_interval
        try:
            self.rejection_limit = RejectionLimit(max_rejected_ratio=max_rejected_ratio, fail_on_rejected=fail_on_rejected)
        except ConfigurationError as error:
            raise ConfigurationError(f"{self.task_id}: {error}") from None

    def check_settings(self) -> None:
        """Subclasses call this at the end of ``__init__``: a bad mode fails when the DAG is parsed."""
        default_pool(self, self.connection_id)
        capabilities = self.capabilities()
        try:
            table = capabilities.operations_for(self.mode)
        except ValueError as error:
            raise ConfigurationError(f"{self.task_id}: {error}") from None
        mapping = self.field_mapping
        if isinstance(mapping, Mapping) and not capabilities.accepts_any_field and not _templated(mapping):
            try:
                check_destination_fields(
                    mapping, default_fields=capabilities.default_fields, destination=capabilities.name
                )
            except ConfigurationError as error:
                raise ConfigurationError(f"{self.task_id}: {error}") from None
        if self.batch_size is not None:
            maximum = (
                capabilities.max_batch_size
                if capabilities.combined_operations
                else min(capabilities.max_batch_size_for(op) for op in table.values())
            )
            if not (isinstance(self.batch_size, int) and 1 <= self.batch_size <= maximum):
                raise ConfigurationError(
                    f"{self.task_id}: batch_size must be from 1 to {maximum} for {capabilities.name} "
                    f"{capabilities.mode_argument}={self.mode!r}, got {self.batch_size!r}."
                )

    @property
    @abstractmethod
    def mode(self) -> str:
        """The sync or audience mode this task runs in."""

    @abstractmethod
    def capabilities(self) -> Capabilities:
        """What the destination this task writes to can do (known before any connection is made)."""

    @abstractmethod
    def make_destination(self) -> Destination:
        """The destination adapter, with its hook."""

    @property
    @abstractmethod
    def connection_id(self) -> str:
        """The Airflow connection this task writes through (part of the sync's binding)."""

    def field_mapping_for(self, plan: Plan) -> Mapping[str, str] | None:
        """The field mapping for this plan: the task's own. A destination whose default depends on the
        source's columns (Zeotap: every non-key column) works it out here, once the plan is known."""
        return self.field_mapping

    def execute(self, context: Any) -> dict[str, Any]:
        try:
            return self._execute(context)
        except BaseException as error:
            _record_failure(context, error)
            if isinstance(error, REFUSALS):
                raise RefusedBeforeSending(str(error)) from error
            raise

    def _execute(self, context: Any) -> dict[str, Any]:
        plan = _load_plan(self.plan)
        if plan.sync_id != self.sync_id:
            raise ConfigurationError(
                f"The plan is for sync {plan.sync_id!r} but this task writes sync {self.sync_id!r}; pass the matching "
                "diff task's output."
            )
        self._check_plan_files(plan, context)
        _push(context, SETTINGS_KEY, self._run_settings(plan))
        from airflow_provider_zeotap.sync.runner import DeliveryRunner, binding_for  # DuckDB loads at run time

        storage = SyncStorage(plan.state_uri, plan.sync_id)
        destination = self.make_destination()
        try:
            runner = DeliveryRunner(
                plan=plan,
                destination=destination,
                mode=self.mode,
                storage=storage,
                pointer=CommittedPointer(asset_store(context, self.sync_id)),
                checkpoints=context.get("task_state_store"),
                binding=binding_for(
                    destination,
                    self.mode,
                    dag_id=self.dag_id,
                    task_id=self.task_id,
                    operator=type(self).__name__,
                    conn_id=self.connection_id,
                ),
                rebind=self.rebind,
                take_over_existing=self.take_over_existing,
                run_id=context.get("run_id"),
                memory_limit=self.memory_limit,
                field_mapping=self.field_mapping_for(plan),
                guards=self.guards,
                dry_run=self.dry_run,
                dry_run_sample=self.dry_run_sample,
                batch_size=self.batch_size,
                send_nulls=self.send_nulls,
                retry_rejected=self.retry_rejected,
                progress_interval=self.progress_interval,
                warehouse_hook=_warehouse_hook(plan),
            )
            result = runner.run()
            summary = runner.summary(result)  # reads the rejected-rows file, so before the cleanup
        finally:
            destination.close()
            storage.cleanup()
        if result.failed:
            self.log.warning(failed_rows_warning(result.failed))
        breach = self.rejection_limit.breach(result)
        if breach:  # a failed task returns nothing to XCom, so the result goes to the log
            self.log.error("The task fails on its rejected rows; its result: %s", result.model_dump_json())
        for line in summary:
            self.log.info("%s", line)
        if plan.counts.invalid:  # the diff set them aside; said here too, where a reader of the sync looks
            self.log.warning(
                "%d source rows were set aside by the diff (null or duplicate primary key) and never sent; each is "
                "in %s with its reason. Fix the key in the source.", plan.counts.invalid, plan.invalid_uri,
            )
        if breach:
            raise TooManyRejectedRows(breach, result)
        describe_landing(context, self.sync_id, result)
        return result.model_dump(mode="json")

    def _run_settings(self, plan: Plan) -> RunSettings:
        return RunSettings(
            sync_id=self.sync_id,
            destination=self.capabilities().name,
            mode=self.mode,
            state_uri=plan.state_uri,
            max_removals=self.guards.max_removals,
            max_removal_ratio=self.guards.max_removal_ratio,
            allow_empty_source=self.guards.allow_empty_source,
            max_rejected_ratio=self.rejection_limit.max_rejected_ratio,
            fail_on_rejected=self.rejection_limit.fail_on_rejected,
            dry_run=self.dry_run,
            full_refresh=plan.full_refresh,
            take_over_existing=self.take_over_existing,
            rebind=self.rebind,
            batch_size=self.batch_size,
        )

    def _check_plan_files(self, plan: Plan, context: Any) -> None:
        """Before any read or write: the plan's files are this sync's, and this worker can see them."""
        author_uris = getattr(self, "_author_state_uris", ())
        plan.check_paths(trusted_state_uris(author_uris, lambda uri: self.render_template(uri, context)))
        warn_if_state_is_local(self, plan.state_uri, self.log)
        storage = SyncStorage(plan.state_uri, plan.sync_id)
        for what, uri in (("plan's changes file", plan.changes_uri), ("plan's snapshot file", plan.snapshot_uri)):
            if not storage.exists(uri):
                raise missing_state_error(self, plan.sync_id, what, uri, plan.state_uri)


def _warehouse_hook(plan: Plan) -> Any:
    """The SQL hook of the warehouse holding the plan's state, when the diff ran there."""
    if plan.warehouse is None:
        return None
    from airflow_provider_zeotap.operators.diff import sql_hook

    return sql_hook(plan.warehouse.conn_id)


def _take_plan(plan: Any, task_id: str) -> None:
    """Refuse, when the DAG is parsed, a second sync task fed by the same diff task's plan.

    Two consumers of one plan would each commit their own outcomes over the other's baseline. The
    runner also refuses it at run time (a plan can come from elsewhere than ``diff.output``).
    """
    diff_task = getattr(plan, "operator", None)
    if diff_task is None or not hasattr(diff_task, "sync_id"):
        return
    taken_by = diff_task.__dict__.setdefault("_plan_taken_by", task_id)
    if taken_by != task_id:
        raise ConfigurationError(
            f"Task {task_id!r} and task {taken_by!r} both take the plan of diff task {diff_task.task_id!r}; one plan "
            "feeds exactly one sync task. To send one source to several destinations, give each destination its own "
            "diff task with its own sync_id (see docs/how-a-sync-works.md, 'One source, several destinations')."
        )


def _templated(mapping: Mapping[Any, Any]) -> bool:
    """A mapping with a Jinja expression in a key is only known once rendered: it is checked at run time."""
    return any("{{" in str(key) for key in mapping)


def _sync_id_of(plan: Any) -> str | None:
    """The sync id of the diff task whose output ``plan`` is, if it is one."""
    operator = getattr(plan, "operator", None)
    return getattr(operator, "sync_id", None)


def _load_plan(value: Any) -> Plan:
    if isinstance(value, Plan):
        return value
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ConfigurationError("plan is a string but not JSON; pass the diff task's output.") from None
    if not isinstance(value, dict):
        raise ConfigurationError(f"plan must be the diff task's output (a dict), got {type(value).__name__}.")
    try:
        return Plan.model_validate(value)
    except ValidationError as error:
        # One line a person can act on, not pydantic's multi-line dump: a plan is never written by hand.
        problems = [f"{'.'.join(str(p) for p in e['loc']) or 'plan'}: {e['msg']}" for e in error.errors()]
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ConfigurationError(
            f"plan is not a valid plan ({shown}). Pass the diff task's output (plan=diff.output), never a plan "
            "written by hand or edited."
        ) from None
