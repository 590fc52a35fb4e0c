"""The docs pages that list what the code defines: every setting and every counter has its row.

docs/configuration.md holds a table of every ``Config`` field (its environment variables and
default) and one of the Flask extension's own ``DCM_*`` keys; docs/metrics.md the counters of
``manager.metrics()``. A field, key or counter added, renamed or given another default without
its row fails here.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from dcm_sync import Config, create_distributed_connection_manager
from dcm_sync.config import _NOT_FROM_ENV, _SEED_ENV
from dcm_sync.manager import COUNTERS
from flask_ext import DistributedWebSockets
from flask_ext.limits import DEFAULTS
from flask_ext.state import FLASK_ONLY_KEYS, compression, health_details

DOCS = Path(__file__).resolve().parents[1] / "docs"
CODE = re.compile(r"`([^`]*)`")


def table(page: str, header: tuple[str, ...]) -> list[list[str]]:
    """The rows of the table in ``docs/<page>`` whose header cells are ``header``."""
    lines = (DOCS / page).read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if tuple(cells(line)) == header:
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append(cells(row))
            assert all(len(r) == len(header) for r in rows), f"{page}: a row of the wrong width"
            return rows
    raise AssertionError(f"docs/{page} has no table with the header {header}")


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []


def code_spans(text: str) -> list[str]:
    return CODE.findall(text)


def literal(text: str) -> Any:
    """A default as the page writes it: a Python literal (``30.0``, ``None``, ``()``), or else
    the text itself (``memory://``, ``127.0.0.1``)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def field_default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


@pytest.fixture
def no_dcm_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Defaults as the code gives them, whatever this process's environment holds."""
    import os

    for name in list(os.environ):
        if name.startswith("DCM_") or name in _SEED_ENV.values():
            monkeypatch.delenv(name)
    yield


# ---------------------------------------------------------------- configuration
CONFIG_HEADER = ("field", "environment", "default", "meaning")
FLASK_HEADER = ("key", "default", "meaning")


def config_rows() -> dict[str, list[str]]:
    rows = table("configuration.md", CONFIG_HEADER)
    names = [code_spans(r[0])[0] for r in rows]
    assert len(names) == len(set(names)), "docs/configuration.md: a field has two rows"
    return dict(zip(names, rows, strict=True))


def test_every_config_field_has_a_row_in_field_order() -> None:
    documented = list(config_rows())
    fields = [f.name for f in dataclasses.fields(Config)]
    assert documented == fields, "docs/configuration.md's Config table must list every field, in order"


def test_config_rows_name_the_environment_variables_that_set_each_field() -> None:
    for name, (_, env, _, meaning) in config_rows().items():
        expected = set() if name in _NOT_FROM_ENV else {f"DCM_{name.upper()}", _SEED_ENV.get(name)} - {None}
        assert set(code_spans(env)) == expected, f"docs/configuration.md: environment of {name}"
        assert meaning, f"docs/configuration.md: {name} has no meaning"


def test_config_rows_give_each_field_its_default() -> None:
    fields = {f.name: f for f in dataclasses.fields(Config)}
    for name, (_, _, default, _) in config_rows().items():
        spans = code_spans(default)
        assert spans, f"docs/configuration.md: the default of {name} is not in a code span"
        assert literal(spans[0]) == field_default(fields[name]), f"docs/configuration.md: default of {name}"


def test_documented_environment_variables_are_read(no_dcm_environment: None) -> None:
    """The short names the page gives really set their fields (``DCM_*`` winning over them)."""
    rows = config_rows()
    assert "`PORT`" in rows["server_port"][1]
    cfg = Config.from_env({"PORT": "4001", "SERVER_HOST": "10.0.0.9", "REDIS_URL": "memory://x"})
    assert (cfg.server_port, cfg.server_host, cfg.redis_url) == (4001, "10.0.0.9", "memory://x")
    assert Config.from_env({"PORT": "4001", "DCM_SERVER_PORT": "4002"}).server_port == 4002


def flask_rows() -> dict[str, list[str]]:
    rows = table("configuration.md", FLASK_HEADER)
    return {code_spans(r[0])[0]: r for r in rows}


def test_every_flask_only_key_has_a_row() -> None:
    documented = set(flask_rows())
    assert documented == {f"DCM_{k.upper()}" for k in FLASK_ONLY_KEYS}
    assert set(DEFAULTS) <= documented


def test_flask_rows_give_each_key_its_default(no_dcm_environment: None) -> None:
    app = Flask(__name__)
    DistributedWebSockets(app)  # fills in the defaults; starts nothing
    actual = {key: app.config.get(key) for key in flask_rows()}
    actual["DCM_HEALTH_DETAILS"] = health_details(app)
    actual["DCM_COMPRESSION"] = compression(app)
    for key, (_, default, meaning) in flask_rows().items():
        spans = code_spans(default)
        assert spans, f"docs/configuration.md: the default of {key} is not in a code span"
        assert literal(spans[0]) == actual[key], f"docs/configuration.md: default of {key}"
        assert meaning, f"docs/configuration.md: {key} has no meaning"
    assert {key: actual[key] for key in DEFAULTS} == DEFAULTS


# ---------------------------------------------------------------- metrics
METRICS_HEADER = ("key of `metrics()`", "Prometheus counter", "what it counts")


def test_metrics_page_lists_every_counter_with_its_help_text() -> None:
    rows = table("metrics.md", METRICS_HEADER)
    documented = {code_spans(key)[0]: (code_spans(prom)[0], text) for key, prom, text in rows}
    assert list(documented) == list(COUNTERS), "docs/metrics.md must list COUNTERS, in order"
    for key, (prom, text) in documented.items():
        assert prom == f"dcm_{key}_total"
        assert text == COUNTERS[key], f"docs/metrics.md: the text of {key} differs from COUNTERS"


def test_counters_are_the_keys_of_metrics() -> None:
    mgr = create_distributed_connection_manager(config=Config(redis_url="memory://docs-pages"))
    try:
        assert list(mgr.metrics()) == list(COUNTERS)
    finally:
        mgr.shutdown()
