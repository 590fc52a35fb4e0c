"""The Lua scripts as sent to Redis: each carries the shared functions it uses, and only those
(Redis runs a script's whole text at each call). What they do is tested against real Redis
servers in the backend, maintenance and recovery tests."""

from __future__ import annotations

import re

import pytest

from dcm_sync.backends.redis_lua import _DEFINES, HEAD, _definitions, lean
from dcm_sync.backends.redis_scripts import Scripts

SHARED = set().union(*(names for names, _ in _definitions(HEAD)))
SCRIPTS = Scripts("PUBLISH")
NAMES = [name for name, value in vars(SCRIPTS).items() if isinstance(value, str)]


def _defined(text: str) -> set[str]:
    """The names defined at the top level of a script (the library's and the body's own)."""
    found = [m for line in text.splitlines() if (m := _DEFINES.match(line))]
    return {n.strip() for m in found for n in (m[1] or m[2]).split(",")}


@pytest.mark.parametrize("name", NAMES)
def test_a_script_defines_every_shared_name_it_uses(name: str) -> None:
    text = getattr(SCRIPTS, name)
    used = set(re.findall(r"[A-Za-z_]\w*", re.sub(r"--[^\n]*", "", text))) & SHARED
    assert used <= _defined(text)


def test_a_script_leaves_out_the_shared_functions_it_does_not_use() -> None:
    assert "local function user_add" in SCRIPTS.add
    assert "local function user_add" not in SCRIPTS.join
    assert "local function" not in SCRIPTS.server_count
    assert len(SCRIPTS.join) < len(HEAD) / 2


def test_lean_keeps_what_a_definition_needs_through_other_definitions() -> None:
    text = lean(HEAD + "return remove_all('p', '1', '0')")
    for needed in ("remove_all", "conn_remove", "conn_get", "bucket_of", "last_cid", "user_drop",
                   "SPILL", "room_del", "hget", "loaded"):
        assert needed in _defined(text), needed
    assert "user_add" not in _defined(text)
