"""Serve the emulators by hand, for offline DAG development::

    python -m airflow_provider_zeotap.testing [--host 127.0.0.1] [--only personyze,permutive]
        [--personyze-port N] [--permutive-port N] [--optimizely-port N] [--zeotap-port N] [--no-seed]
        [--latency-ms 50] [--error-rate 0.1] ... (every fault knob, see ``--help``)

Prints, for each emulator, where it listens, its test credentials and the objects it seeded for a first
sync (a Personyze list, a Permutive import, an Optimizely project), then the ``AIRFLOW_CONN_<ID>=...``
lines to paste into a shell. The fault knobs given (``--error-rate 0.1 --error-when after``...) are set on
every emulator served, as ``POST /_emulator/faults`` would set them: the options are generated from
:class:`~airflow_provider_zeotap.testing.faults.FaultConfig`, the one definition of the knobs, so each knob
takes the same values here, over HTTP and in ``set_faults``. An emulator's own settings
(``--personyze-users-post-latency-ms``, ``--permutive-page-size``) are set on that emulator only, as
``POST /_emulator/settings`` would set them. Serves until Ctrl-C or SIGTERM. Binds to loopback addresses only:
the keys are public test keys.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from airflow_provider_zeotap.testing.faults import FaultConfig
from airflow_provider_zeotap.testing.optimizely import OptimizelyEmulator
from airflow_provider_zeotap.testing.permutive import PermutiveEmulator
from airflow_provider_zeotap.testing.personyze import PersonyzeEmulator
from airflow_provider_zeotap.testing.server import ADMIN_PREFIX, Emulator
from airflow_provider_zeotap.testing.zeotap import ZeotapEmulator

#: Emulator class and default port, by name.
EMULATORS: dict[str, tuple[type[Emulator], int]] = {
    "personyze": (PersonyzeEmulator, 8101),
    "permutive": (PermutiveEmulator, 8102),
    "optimizely": (OptimizelyEmulator, 8103),
    "zeotap": (ZeotapEmulator, 8104),
}


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(EMULATORS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(EMULATORS)}; unknown: {', '.join(unknown)}")
    return names


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_zeotap.testing",
        description="Serve local emulators of the Personyze, Permutive, Optimizely and Zeotap APIs.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default %(default)s)")
    parser.add_argument(
        "--only",
        type=_names,
        default=list(EMULATORS),
        metavar="NAMES",
        help="comma-separated subset to serve",
    )
    for name, (_, port) in EMULATORS.items():
        parser.add_argument(
            f"--{name}-port",
            type=int,
            default=port,
            metavar="N",
            help=f"0 picks a free port (default {port})",
        )
    parser.add_argument(
        "--no-seed", action="store_true", help="don't create the example list, import, project"
    )
    add_fault_options(parser)
    add_setting_options(parser)
    args = parser.parse_args(argv)
    try:
        FaultConfig.model_validate(fault_knobs(args))
    except ValidationError as exc:
        parser.error(_knob_errors(exc))
    for name, (emulator_class, _) in EMULATORS.items():
        try:
            emulator_class.settings_model.model_validate(emulator_settings(args, name))
        except ValidationError as exc:
            parser.error(_knob_errors(exc, prefix=f"{name}-"))
    return args


#: What a command line writes for a knob's "none" (no value: the knob is off).
NONE_WORDS = frozenset({"none", "null"})


def add_fault_options(parser: argparse.ArgumentParser) -> None:
    """One ``--<knob>`` option per :class:`FaultConfig` field, with the field's description as its help."""
    group = parser.add_argument_group(
        "fault knobs",
        "Set on every emulator served, over its default limits, as POST /_emulator/faults sets them. "
        "'none' switches an optional knob off (e.g. --rate-per-second none lifts a documented limit).",
    )
    for name, field in FaultConfig.model_fields.items():
        group.add_argument(
            f"--{name.replace('_', '-')}",
            dest=f"knob_{name}",
            default=argparse.SUPPRESS,
            metavar=name.upper(),
            help=(field.description or "").replace("%", "%%") + f" (default {field.default})",
        )


def add_setting_options(parser: argparse.ArgumentParser) -> None:
    """One ``--<emulator>-<setting>`` option per field of each emulator's own settings."""
    group = parser.add_argument_group(
        "emulator settings", "Set on that emulator only, as POST /_emulator/settings sets them."
    )
    for name, (emulator_class, _) in EMULATORS.items():
        for field_name, field in emulator_class.settings_model.model_fields.items():
            group.add_argument(
                f"--{name}-{field_name.replace('_', '-')}",
                dest=f"setting_{name}__{field_name}",
                type=field.annotation if field.annotation in (int, float) else str,
                default=argparse.SUPPRESS,
                metavar=field_name.upper(),
                help=(field.description or "").replace("%", "%%") + f" (default {field.default})",
            )


def emulator_settings(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """The settings of emulator ``name`` given on the command line, by field name."""
    prefix = f"setting_{name}__"
    return {dest[len(prefix):]: value for dest, value in vars(args).items() if dest.startswith(prefix)}


def fault_knobs(args: argparse.Namespace) -> dict[str, Any]:
    """The knobs given on the command line, by field name; "none" becomes None."""
    knobs: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if dest.startswith("knob_"):
            knobs[dest[len("knob_"):]] = None if str(value).lower() in NONE_WORDS else value
    return knobs


def _knob_errors(exc: ValidationError, prefix: str = "") -> str:
    return "; ".join(
        f"--{prefix}{'.'.join(str(part) for part in error['loc']).replace('_', '-')}: {error['msg']}"
        for error in exc.errors()
    )


def describe(emulator: Emulator, seeded: dict[str, str]) -> list[str]:
    """The lines printed for one emulator: name, URLs, credentials and seeded ids."""
    facts = {**emulator.credentials(), **seeded, "admin": emulator.url + ADMIN_PREFIX}
    changed = {
        name: value for name, value in emulator.faults.model_dump().items()
        if value != FaultConfig.model_fields[name].default
    }
    if changed:
        facts["faults"] = ", ".join(f"{name}={value}" for name, value in changed.items())
    return [f"{emulator.name:<11} {emulator.url}  (API: {emulator.api_url})"] + [
        f"    {key}: {value}" for key, value in facts.items()
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        emulators = [
            EMULATORS[name][0](host=args.host, port=getattr(args, f"{name}_port")) for name in args.only
        ]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    running: list[Emulator] = []
    try:
        knobs = fault_knobs(args)
        for emulator in emulators:
            running.append(emulator.start())
            if knobs:
                emulator.set_faults(**knobs)
            if settings := emulator_settings(args, emulator.name):
                emulator.apply_settings(**settings)
        lines: list[str] = []
        env: dict[str, str] = {}
        for emulator in running:
            lines += describe(emulator, {} if args.no_seed else emulator.seed_example())
            env.update(emulator.airflow_env())
        lines += [""] + [f"{variable}={shlex.quote(value)}" for variable, value in env.items()]
        lines += ["", "Serving; Ctrl-C stops."]
        print("\n".join(lines), flush=True)
        stop.wait()
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for emulator in reversed(running):
            emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
