"""`twinbench` entry point.

Commands are not listed here. Any module named `cmd_*.py` in a twinbench subpackage defines
one command with:

    COMMAND = ("trace", "inspect")     # the words that invoke it
    HELP = "one line"
    def add_arguments(parser): ...     # argparse arguments
    def run(args) -> int: ...          # exit code (0 ok, 1 check failed, 2 bad input)

so a new command is a new file, not an edit to a shared list of flags. Command modules import
their heavy dependencies inside `run` to keep `twinbench --help` fast.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import traceback
from types import ModuleType

SUBPACKAGES = ("traces", "reports", "twin", "backends", "replay", "advisor", "cli")


def discover() -> list[ModuleType]:
    modules = []
    for sub in SUBPACKAGES:
        try:
            pkg = importlib.import_module(f"twinbench.{sub}")
        except ImportError:
            continue
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name.startswith("cmd_"):
                modules.append(importlib.import_module(f"twinbench.{sub}.{info.name}"))
    return sorted(modules, key=lambda m: m.COMMAND)


def build_parser(modules: list[ModuleType]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twinbench",
        description="Replay multi-LoRA request streams against a real server or a vLLM twin.")
    from twinbench.traces.version import TOOL_VERSION
    from twinbench.twin import engine_build
    parser.add_argument("--version", action="version",
                        version=f"twinbench {TOOL_VERSION} (twin engine: {engine_build()})")
    tops = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for mod in modules:
        words = mod.COMMAND
        if len(words) == 1:
            p = tops.add_parser(words[0], help=mod.HELP, description=mod.HELP)
        else:
            if words[0] not in groups:
                gp = tops.add_parser(words[0], help=f"{words[0]} commands")
                groups[words[0]] = gp.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
                gp.set_defaults(_group_parser=gp)
            p = groups[words[0]].add_parser(words[1], help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from twinbench.traces.errors import TwinbenchError

    parser = build_parser(discover())
    args = parser.parse_args(argv)
    if not hasattr(args, "_run"):
        (getattr(args, "_group_parser", None) or parser).print_help(sys.stderr)
        return 2
    try:
        code = args._run(args)
    except TwinbenchError as e:
        print(f"twinbench: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("twinbench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug of ours: one line, the traceback only on request
        if os.environ.get("TWINBENCH_DEBUG"):
            traceback.print_exc()
        print(f"twinbench: internal error: {type(e).__name__}: {e} "
              "(set TWINBENCH_DEBUG=1 for details)", file=sys.stderr)
        return 3
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
