"""Command line: ``python -m airflow_provider_qwenbatch.emulator --port 8000`` (or ``qwenbatch-emulator``).

Every field of :class:`~airflow_provider_qwenbatch.emulator.config.EmulatorConfig` is a flag
(``--lines-per-second 50``, ``--no-shuffle-output``, ...); faults are given per endpoint with
``--fault ENDPOINT:key=value,...`` (repeatable), e.g. ``--fault create_batch:p_429=0.2,retry_after=2``
or ``--fault '*:latency_ms=50,latency_jitter_ms=20'``; ``fail_next`` takes kinds joined by
``+`` (``fail_next=429+drop``). On startup one line
``QWENBATCH_EMULATOR_READY http://127.0.0.1:PORT/compatible-mode/v1`` goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import types
from collections.abc import Sequence
from typing import Any

import uvicorn

from airflow_provider_qwenbatch.emulator.app import API_PREFIX, create_app
from airflow_provider_qwenbatch.emulator.config import (
    ENDPOINT_NAMES,
    FAULT_KINDS,
    EmulatorConfig,
    FaultSpec,
    field_docs,
)
from airflow_provider_qwenbatch.emulator.server import READY_MARKER, _free_socket


def parse_fault(text: str) -> tuple[str, FaultSpec]:
    """Parse ``ENDPOINT:key=value,...`` into an endpoint name and a spec.

    :param text: the flag's value.
    """
    endpoint, _, rest = text.partition(":")
    values: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, _, value = part.partition("=")
        values[key.strip()] = value.split("+") if key.strip() == "fail_next" else value.strip()
    return endpoint.strip() or "*", FaultSpec.model_validate(values)


_LIST_FIELDS = frozenset({"models"})


def fault_keys_help() -> str:
    """The fault keys of ``--fault`` with their descriptions (from :class:`FaultSpec`)."""
    docs = field_docs(FaultSpec)
    lines = [
        "fault keys of --fault ENDPOINT:key=value,... (ENDPOINT is one of "
        + ", ".join(ENDPOINT_NAMES)
        + ", or * for all):"
    ]
    for key, info in FaultSpec.model_fields.items():
        default = info.get_default(call_default_factory=True)
        lines.append(f"  {key:<18} {docs[key]} (default: {default})")
    lines.append("  fail_next takes kinds joined by +: " + ", ".join(FAULT_KINDS) + " (fail_next=429+drop).")
    lines.append(
        "examples: --fault 'create_batch:p_429=0.2,retry_after=2' --fault '*:latency_ms=50,latency_jitter_ms=20'"
    )
    lines.append("runtime changes: PUT /_emulator/config and PUT /_emulator/faults (see the README).")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: one flag per config field, its help from the field's description."""
    parser = argparse.ArgumentParser(
        prog="qwenbatch-emulator",
        description="Local emulator of the Qwen Cloud (DashScope) batch API, with real-time chat "
        "completions and embeddings, under /compatible-mode/v1 on 127.0.0.1.",
        epilog=fault_keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    docs = field_docs(EmulatorConfig)
    for name, info in EmulatorConfig.model_fields.items():
        if name == "faults":
            continue
        flag = "--" + name.replace("_", "-")
        default = info.get_default(call_default_factory=True)
        if name in _LIST_FIELDS:
            shown = f"{len(default)} names: {','.join(default)}"
        elif name == "state_dir":
            shown = "a temporary directory"
        else:
            shown = str(default)
        # argparse expands % in help texts.
        help_text = f"{docs[name]} (default: {shown})".replace("%", "%%")
        if isinstance(default, bool):
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif name in _LIST_FIELDS or name == "state_dir":
            parser.add_argument(flag, dest=name, default=None, help=help_text)
        else:
            kind = type(default) if default is not None else str
            parser.add_argument(flag, dest=name, type=kind, default=None, help=help_text)
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="ENDPOINT:key=value,...",
        help="fault injection for one endpoint, repeatable; keys below",
    )
    return parser


def _model_list(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    if text.startswith("+"):
        names[0] = names[0][1:]
        return sorted(set(EmulatorConfig().models) | {n for n in names if n})
    return names


def config_from_args(argv: Sequence[str] | None = None) -> EmulatorConfig:
    """Build the config from command-line arguments.

    :param argv: the arguments (``sys.argv[1:]`` when omitted).
    """
    ns = build_parser().parse_args(argv)
    values: dict[str, Any] = {k: v for k, v in vars(ns).items() if v is not None and k != "fault"}
    if "models" in values:
        values["models"] = _model_list(values["models"])
    values["faults"] = dict(parse_fault(f) for f in ns.fault)
    return EmulatorConfig.model_validate(values)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the emulator until SIGINT or SIGTERM.

    :param argv: the arguments (``sys.argv[1:]`` when omitted).
    """
    config = config_from_args(argv)
    sock = _free_socket(config.host, config.port)
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(config), log_level="warning", access_log=False, lifespan="on")
    )

    async def serve() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                break
            await asyncio.sleep(0.01)
        if server.started:
            sys.stdout.write(f"{READY_MARKER} http://{config.host}:{port}{API_PREFIX}\n")
            sys.stdout.flush()
        await task

    def stop(signum: int, frame: types.FrameType | None) -> None:
        server.should_exit = True

    signal.signal(signal.SIGTERM, stop)
    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()


if __name__ == "__main__":
    main()
