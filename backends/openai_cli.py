"""Flags of `twinbench replay --backend openai`, and the backend they build.

`replay/cmd_replay.py` owns the command; it calls `add_arguments(parser)` once and
`build_backend(args)` when `--backend openai` is chosen. The API key comes from `--api-key`
or `OPENAI_API_KEY` and is kept out of the run file, the logs and error messages.
"""
from __future__ import annotations

import argparse
import os

from twinbench.traces.errors import TwinbenchError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("real server (--backend openai)")
    g.add_argument("--base-url", metavar="URL",
                   help="the server, e.g. http://127.0.0.1:8000 (a trailing /v1 is accepted)")
    g.add_argument("--model", metavar="BASE",
                   help="base model name (default: the first non-adapter model of /v1/models)")
    g.add_argument("--endpoint", choices=("completions", "chat"), default="completions",
                   help="/v1/completions (default) or /v1/chat/completions")
    g.add_argument("--api-key", metavar="KEY",
                   help="bearer token (default: $OPENAI_API_KEY); never written to run files")
    g.add_argument("--prompt-mode", choices=("ids", "text"), default="ids",
                   help="prompts as token ids (default, exact length on vLLM) or as text "
                        "fitted with the server's /tokenize (chat always uses text)")
    g.add_argument("--max-concurrency", type=int, metavar="N",
                   help="client-side cap on requests in flight (the wait is client_queue_s); "
                        "default: open loop, no cap")
    g.add_argument("--workers", type=int, default=1, metavar="N",
                   help="dispatch from N processes sharing one schedule (when one core "
                        "cannot keep up); one process writes the run file")
    g.add_argument("--request-timeout", type=float, metavar="S",
                   help="give up on a request after S seconds (status timeout; default 600)")
    g.add_argument("--scrape-interval", type=float, default=1.0, metavar="S",
                   help="scrape the server's /metrics every S seconds into the run file "
                        "(0 = off; default 1)")
    g.add_argument("--load-adapters", metavar="NAME=PATH,...",
                   help="register these adapters through /v1/load_lora_adapter when "
                        "/v1/models does not list them (paths as the server sees them)")
    g.add_argument("--no-check-models", action="store_true",
                   help="do not check /v1/models before the run (servers without it)")
    g.add_argument("--extra-body", metavar="JSON",
                   help="a JSON object merged into every request body (e.g. sampling "
                        "parameters), as vLLM's bench serve --extra-body")
    g.add_argument("--twin-clock", action="store_true",
                   help="against `twinbench serve`: send each request's trace arrival as "
                        "twin_arrival_s, so the served twin simulates the trace's own timing; "
                        "the twin's simulated times land in each record's extra.twin")


def parse_adapter_paths(value: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in (value or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise TwinbenchError(f"--load-adapters {item!r}: expected NAME=PATH")
        out[name.strip()] = path.strip()
    return out


def parse_extra_body(value: str | None) -> dict:
    import json

    if not value:
        return {}
    try:
        body = json.loads(value)
    except ValueError as e:
        raise TwinbenchError(f"--extra-body: not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise TwinbenchError("--extra-body: expected a JSON object, e.g. '{\"top_p\": 0.9}'")
    return body


def build_backend(args: argparse.Namespace):
    """An `OpenAIBackend` from parsed flags; reads the server's facts for the run header.

    User errors (no --base-url, bad values, server unreachable) raise `TwinbenchError`.
    """
    from twinbench.backends.openai import OpenAIBackend, OpenAIConfig

    if not getattr(args, "base_url", None):
        raise TwinbenchError("--base-url is required with --backend openai")
    for flag, value, low in (("--max-concurrency", args.max_concurrency, 1),
                             ("--workers", args.workers, 1)):
        if value is not None and value < low:
            raise TwinbenchError(f"{flag} {value}: must be at least {low}")
    if args.request_timeout is not None and args.request_timeout <= 0:
        raise TwinbenchError(f"--request-timeout {args.request_timeout}: must be positive")
    if args.scrape_interval < 0:
        raise TwinbenchError(f"--scrape-interval {args.scrape_interval}: must be >= 0")
    if not args.base_url.startswith(("http://", "https://")):
        raise TwinbenchError(f"--base-url {args.base_url}: expected http://HOST:PORT")
    config = OpenAIConfig(
        base_url=args.base_url, model=args.model, endpoint=args.endpoint,
        api_key=args.api_key or os.environ.get("OPENAI_API_KEY") or None,
        prompt_mode=args.prompt_mode, max_concurrency=args.max_concurrency,
        workers=args.workers, request_timeout_s=args.request_timeout,
        scrape_interval_s=args.scrape_interval,
        load_adapters=parse_adapter_paths(args.load_adapters),
        check_models=not args.no_check_models, extra_body=parse_extra_body(args.extra_body),
        twin_clock=args.twin_clock)
    backend = OpenAIBackend(config)
    backend.probe_now()
    return backend
