"""Command line: `dbbalancer run`, `dbbalancer check`, `dbbalancer demo`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

import uvloop

from dbbalancer import __version__
from dbbalancer.config import ConfigError, describe, load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dbbalancer",
        description="A load balancer for PostgreSQL (and MySQL/MariaDB) primaries and replicas.",
    )
    parser.add_argument("--version", action="version", version=f"dbbalancer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the balancer in the foreground")
    run.add_argument("-c", "--config", required=True, type=Path, help="TOML config file")
    run.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="override log_level"
    )

    check = sub.add_parser("check", help="validate a config file and print a summary")
    check.add_argument("-c", "--config", required=True, type=Path, help="TOML config file")

    demo = sub.add_parser(
        "demo",
        help="start local PostgreSQL and MariaDB primaries + replicas and the balancer, "
        "and show routing",
    )
    demo.add_argument(
        "--port", type=int, default=6432, help="PostgreSQL listener port (0: any free port)"
    )
    demo.add_argument(
        "--mysql-port", type=int, default=6033, help="MySQL listener port (0: any free port)"
    )
    demo.add_argument(
        "--once", action="store_true", help="run the workload, then stop (do not wait for Ctrl-C)"
    )
    return parser


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _load(path: Path) -> int | object:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{path}: cannot read the config file: {exc.strerror or exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `dbbalancer` console script."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from dbbalancer.demo import run_demo

        _setup_logging("warning")
        return run_demo(port=args.port, mysql_port=args.mysql_port, once=args.once)

    from dbbalancer.config import Config

    loaded = _load(args.config)
    if not isinstance(loaded, Config):
        assert isinstance(loaded, int)
        return loaded
    if args.command == "check":
        print(describe(loaded))
        print(f"{args.config}: OK")
        return 0

    from dbbalancer.app import App, unserved_protocols

    unserved = unserved_protocols(loaded)
    for protocol, names in unserved.items():
        print(
            f'{args.config}: clusters {", ".join(names)} use protocol = "{protocol.value}", which '
            'this version does not serve yet; use protocol = "postgres" or remove them',
            file=sys.stderr,
        )
    if unserved:
        return 1
    _setup_logging(args.log_level or loaded.general.log_level.value)
    app = App(loaded, config_path=args.config)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(app.run())
    return 0
