"""`--backend openai` flags: parsing, user errors as TwinbenchError, the key kept secret."""
import argparse
import json

import pytest

from twinbench.backends.openai_cli import (add_arguments, build_backend, parse_adapter_paths,
                                            parse_extra_body)
from twinbench.traces.errors import TwinbenchError


def _parse(*argv):
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


def test_flag_errors_are_one_line_user_errors():
    with pytest.raises(TwinbenchError, match="--base-url is required"):
        build_backend(_parse())
    with pytest.raises(TwinbenchError, match="--workers 0"):
        build_backend(_parse("--base-url", "http://127.0.0.1:1", "--workers", "0"))
    with pytest.raises(TwinbenchError, match="--base-url localhost:8000"):
        build_backend(_parse("--base-url", "localhost:8000"))
    with pytest.raises(TwinbenchError, match="expected NAME=PATH"):
        parse_adapter_paths("a=/x,broken")
    assert parse_adapter_paths(" a=/x , b=/y/z ") == {"a": "/x", "b": "/y/z"}
    with pytest.raises(TwinbenchError, match="--extra-body: not valid JSON"):
        build_backend(_parse("--base-url", "http://127.0.0.1:1", "--extra-body", "{top_p: 1"))
    with pytest.raises(TwinbenchError, match="--extra-body: expected a JSON object"):
        parse_extra_body("[1, 2]")
    assert parse_extra_body('{"top_p": 0.9}') == {"top_p": 0.9} and parse_extra_body(None) == {}


def test_build_backend_reads_the_server_and_hides_the_key(monkeypatch, fake_server):
    srv = fake_server().start()
    try:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env-42")
        args = _parse("--base-url", srv.url + "/v1/", "--endpoint", "chat", "--workers", "2",
                      "--max-concurrency", "8", "--request-timeout", "5",
                      "--load-adapters", "x=/ok/x")
        backend = build_backend(args)
    finally:
        srv.stop()
    cfg = backend.config
    assert cfg.base_url == srv.url and cfg.chat and cfg.workers == 2
    assert cfg.api_key == "sk-from-env-42" and cfg.load_adapters == {"x": "/ok/x"}
    desc = json.dumps(backend.describe())
    assert "sk-from-env-42" not in desc and '"api_key_set": true' in desc
    assert "sk-from-env-42" not in repr(cfg)
    assert backend.describe()["server"]["version"] == "0.0-fake"
