"""`twinbench serve`: run the twin in real time behind an OpenAI-compatible HTTP server."""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys

from twinbench.traces.errors import TwinbenchError

COMMAND = ("serve",)
HELP = "serve a vLLM twin over HTTP (OpenAI-compatible, answers like vLLM)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from twinbench.twin.config import add_server_arguments

    parser.add_argument("--profile", required=True,
                        help="built-in profile name or profile JSON file")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="0 = any free port (printed)")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="simulated seconds per wall second (default 1: real time)")
    parser.add_argument("--served-model-name", default=None,
                        help="base model name in the API (default: the profile's model name)")
    parser.add_argument("--lora-modules", nargs="+", default=[], metavar="ADAPTER",
                        help="adapters served from the start: NAME, NAME=PATH, or a JSON "
                             'object {"name", "path", "rank"}; rank from PATH/adapter_config.'
                             "json, else --max-lora-rank")
    parser.add_argument("--max-request-bytes", type=int, default=8 * 2**20,
                        help="larger request bodies get HTTP 413 (default 8 MiB)")
    parser.add_argument("--max-pending-requests", type=int, default=10_000,
                        help="requests held at once; more get HTTP 503 (default 10000)")
    parser.add_argument("--client-clock-slack-ms", type=float, default=250.0,
                        help="with twin_arrival_s requests: how late (wall ms) a request may "
                             "reach the server and still enter at its stated time (default 250)")
    parser.add_argument("--record", metavar="FILE",
                        help="append one JSON line per finished request (its simulated "
                             "arrival, first token, finish, token times) to FILE")
    parser.add_argument("--quiet", action="store_true", help="no startup line")
    add_server_arguments(parser)


def parse_adapter(spec: str, default_rank: int):
    """One `--lora-modules` item -> AdapterEntry; errors name the flag and the item."""
    from twinbench.twin.server import AdapterEntry, adapter_rank

    def bad(why: str) -> TwinbenchError:
        return TwinbenchError(f"--lora-modules {spec}: {why}")

    if spec.lstrip().startswith("{"):
        try:
            d = json.loads(spec)
        except ValueError as e:
            raise bad(f"not valid JSON ({e})") from None
        if not isinstance(d, dict) or not isinstance(d.get("name"), str):
            raise bad('a JSON adapter needs a "name"')
        name, path, rank = d["name"], d.get("path"), d.get("rank")
    else:
        name, _, path = spec.partition("=")
        path, rank = path or None, None
    if not name:
        raise bad("empty adapter name")
    if path is not None and not os.path.isdir(path):
        raise bad(f"no adapter folder at {path}")
    if rank is None:
        rank = adapter_rank(path, default_rank) if path else default_rank
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise bad("rank must be an integer >= 1")
    return AdapterEntry(name, path, rank)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    import asyncio

    from twinbench.twin.config import ServerConfig
    from twinbench.twin.profile import Profile
    from twinbench.twin.server import ServeOptions, TwinServer
    from twinbench.twin.server_requests import RequestError

    if args.speed <= 0:
        raise TwinbenchError(f"--speed {args.speed}: must be > 0")
    if not 0 <= args.port <= 65535:
        raise TwinbenchError(f"--port {args.port}: must be 0..65535")
    if args.max_request_bytes < 1024 or args.max_pending_requests < 1:
        raise TwinbenchError("--max-request-bytes must be >= 1024 and --max-pending-requests "
                             ">= 1")
    config = ServerConfig.from_args(args)
    profile = Profile.load(args.profile)
    adapters = [parse_adapter(s, config.max_lora_rank) for s in args.lora_modules]
    names = [a.name for a in adapters]
    if len(set(names)) != len(names):
        raise TwinbenchError(f"--lora-modules: adapter names repeat: {', '.join(names)}")
    options = ServeOptions(host=args.host, port=args.port, speed=args.speed,
                           served_model_name=args.served_model_name, adapters=adapters,
                           max_request_bytes=args.max_request_bytes,
                           max_pending_requests=args.max_pending_requests,
                           slack_s=args.client_clock_slack_ms / 1000.0,
                           record_path=args.record)
    if args.record:
        try:
            open(args.record, "a").close()
        except OSError as e:
            raise TwinbenchError(f"--record {args.record}: cannot write ({e.strerror})") from None
    try:
        server = TwinServer(config, profile, options)
    except RequestError as e:
        raise TwinbenchError(f"--lora-modules: {e.message}") from None
    if not is_loopback(args.host) and not args.quiet:
        print(f"twinbench serve: warning: listening on {args.host}, reachable from other "
              "machines; the twin has no authentication", file=sys.stderr)
    return asyncio.run(_serve(server, args.quiet))


async def _serve(server, quiet: bool) -> int:
    import asyncio
    import signal

    from twinbench.traces.gcpause import IdleFullCollections

    try:
        port = await server.start()
    except OSError as e:
        raise TwinbenchError(f"--host {server.options.host} --port {server.options.port}: "
                             f"cannot listen ({e.strerror or e})") from None
    if not quiet:
        print(f"twinbench serve: {server.model_name} (profile {server.profile.name}, "
              f"{len(server.adapters)} adapters, speed {server.options.speed:g}x) on "
              f"http://{server.options.host}:{port}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # a full collection while streams are in flight held every stream back 48-135 ms
    collections = IdleFullCollections(lambda: server.twin is None or not server.twin.active)
    collections.start()
    try:
        await stop.wait()
    finally:
        collections.stop()
        await server.stop()
    return 0
