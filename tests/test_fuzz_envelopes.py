"""Property tests: arbitrary bytes and arbitrary JSON given to the envelope decoder and to a
manager's dispatch path raise only EnvelopeError (decoder) or nothing (dispatch), and never
deliver anything that is not a valid envelope; with signing on, nothing at all is delivered."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcm_sync import Config, DistributedConnectionManager, create_distributed_connection_manager
from dcm_sync.envelopes import KINDS, EnvelopeError, decode_envelope, encode_envelope
from dcm_sync.signing import EnvelopeSigner
from testkit.polling import wait_until
from testkit.recording import RecordingSocket
from tests.helpers.managers import FAST

KEY = "fuzzing-signing-key-0123456789"
FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

pytestmark = pytest.mark.timeout(120)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)
ids = st.sampled_from(["r", "other", "", "0", "x" * 300]) | st.text(max_size=8)
field_values = ids | json_values | st.lists(ids, max_size=3)
# objects shaped like envelopes, so that the checks past the version are reached too
envelope_like = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 1, 1, 2, 0, "1", None, 1.0, True]),
     "k": st.sampled_from(sorted(KINDS) + ["nope", ""]) | st.text(max_size=5),
     "o": ids | json_values, "id": ids | json_values},
    optional={name: field_values for name in ("r", "m", "x", "c", "p", "n", "cs", "e", "q", "s")},
)
_TYPED = {"r": ids, "m": st.text(max_size=20), "x": st.lists(ids, max_size=3), "c": ids,
          "p": json_values, "n": st.integers(), "cs": st.lists(ids, max_size=3),
          "e": st.text(max_size=10), "q": ids, "s": st.booleans()}
_FIELDS = {"room": ("r", "m", "x"), "direct": ("c", "m"), "server": ("p",), "join": ("c", "r"),
           "leave": ("c", "r"), "touch": ("c",), "probe": ("n",),
           "directs": ("cs", "m"), "disconnect": ("cs", "n", "e"), "request": ("q", "p"),
           "reply": ("q", "s", "p")}
assert set(_FIELDS) == KINDS
# valid envelopes of every kind (with a few extra fields), so that delivery paths are reached
well_formed = st.sampled_from(sorted(KINDS)).flatmap(lambda kind: st.fixed_dictionaries(
    {"v": st.just(1), "k": st.just(kind), "o": ids, "id": ids,
     **{name: _TYPED[name] for name in _FIELDS[kind]}},
    optional={"extra": json_values}))
json_text = st.one_of(json_values, envelope_like, well_formed).map(json.dumps)
any_input = st.one_of(st.binary(), json_text.map(str.encode), st.text(),
                      st.one_of(envelope_like, well_formed).map(
                          lambda d: b"S1." + b"A" * 43 + b"." + json.dumps(d).encode()))


def decodes(data: bytes | str, signer: EnvelopeSigner | None = None) -> bool:
    try:
        decode_envelope(data, signer)
    except EnvelopeError:
        return False
    return True


@FUZZ
@given(st.binary())
def test_decoder_on_arbitrary_bytes(data: bytes) -> None:
    decodes(data)
    assert not decodes(data, EnvelopeSigner([KEY], "p:"))


@FUZZ
@given(json_text)
def test_decoder_on_arbitrary_json(text: str) -> None:
    decodes(text)
    decodes(text.encode())
    assert not decodes(text.encode(), EnvelopeSigner([KEY], "p:"))


@FUZZ
@given(envelope_like | well_formed)
def test_decoder_accepts_only_well_formed_envelopes(obj: dict[str, Any]) -> None:
    try:
        env = decode_envelope(json.dumps(obj))
    except EnvelopeError:
        return
    assert obj["v"] == 1 and not isinstance(obj["v"], bool) and env.kind in KINDS
    assert isinstance(env.origin, str) and isinstance(env.id, str)


class Target:
    """A started manager (memory backend) with one recording socket in room ``r``."""

    def __init__(self, **overrides: Any) -> None:
        self.mgr: DistributedConnectionManager = create_distributed_connection_manager(
            None, Config(redis_url=f"memory://{uuid.uuid4().hex}", **{**FAST, **overrides}))
        self.ws = RecordingSocket()
        self.cid = self.mgr.register_connection(self.ws, "fuzz")
        self.mgr.join_room(self.cid, "r")
        self.handled: list[Any] = []
        self.mgr.on_server_message(lambda origin, msg: self.handled.append(msg))
        self.channels = ["room:r", f"server:{self.mgr.server_id}", "room:other"]

    def delivered(self) -> int:
        return len(self.ws.frames) + len(self.handled)


@pytest.fixture(scope="module")
def plain() -> Iterator[Target]:
    target = Target()
    yield target
    target.mgr.shutdown()


@pytest.fixture(scope="module")
def signing() -> Iterator[Target]:
    target = Target(signing_keys=[KEY])
    yield target
    target.mgr.shutdown()


@FUZZ
@given(data=any_input, channel=st.integers(0, 2))
def test_dispatch_delivers_only_valid_envelopes(plain: Target, data: bytes | str,
                                                channel: int) -> None:
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    before = plain.delivered()
    plain.mgr._dispatch(plain.channels[channel], raw)  # must not raise
    if plain.delivered() != before:
        assert decodes(raw)
    assert not plain.ws.closed and plain.cid in plain.mgr.local


@FUZZ
@given(data=any_input, channel=st.integers(0, 2))
def test_dispatch_with_signing_on_delivers_nothing(signing: Target, data: bytes | str,
                                                   channel: int) -> None:
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    dropped = signing.mgr.metrics()["envelopes_dropped"]
    signing.mgr._dispatch(signing.channels[channel], raw)
    assert signing.delivered() == 0
    assert signing.mgr.metrics()["envelopes_dropped"] in (dropped, dropped + 1)


@settings(max_examples=40, deadline=None, database=None)
@given(batch=st.lists(any_input, min_size=1, max_size=5))
def test_listener_survives_junk_and_still_delivers(signing: Target, batch: list[bytes | str]) -> None:
    """Through the real bus and listener thread: junk first, then one valid signed message,
    which must be the only thing delivered."""
    mgr, backend = signing.mgr, signing.mgr._backend
    for i, data in enumerate(batch):
        raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
        backend.publish(signing.channels[i % 2], raw)
    marker = uuid.uuid4().hex
    backend.publish(signing.channels[1], EnvelopeSigner([KEY], mgr.config.key_prefix).sign(
        encode_envelope("direct", "fuzzer", c=signing.cid, m=marker)))
    wait_until(lambda: marker in signing.ws.frames)
    assert signing.ws.frames == [marker] and signing.handled == []
    signing.ws.frames.clear()
    assert mgr.is_ready()
