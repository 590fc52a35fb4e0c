"""The soak's verdict (see ``benchmarks/soak/__main__.py``): from what was observed, the figures and a
PASS/FAIL per check, and their printout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dcm_sync.backends.redis_keys import KeyLayout, room_bucket

from .clients import MODES, ClientReport

__all__ = ["Observed", "evaluate", "print_figures", "WARM", "FD_SLACK", "RSS_SLACK_KB"]

WARM = 10.0         # seconds of churn before the "warm" sample
FD_SLACK = 2        # open files a server may hold beyond its earlier figure
RSS_SLACK_KB = 6 * 1024  # RSS growth from warm-up to the end of the churn allowed per server
KEYS = KeyLayout("")  # key names without the prefix, as the soak's classify_keys lists them


@dataclass
class Observed:
    """Everything the soak collected. ``base``/``mid``/``after``: snapshots before any client,
    with only the observers left, with nobody left; ``final``: after the servers stopped."""

    reports: list[ClientReport]   # one per churn client
    skipped: int                  # churn clients never started (deadline or thread cap)
    sent: set[str]                # tags whose send call succeeded
    counts: list[dict[str, int]]  # per observer: tag -> times received
    notices: list[int]            # per observer: departure notices received
    obs_closed: int               # observer sockets a server closed
    obs_ids: list[str]
    sids: list[str]
    rooms: list[str]
    base: dict[str, Any]
    mid: dict[str, Any]
    after: dict[str, Any]
    final: dict[str, Any]
    samples: list[dict[str, Any]]
    churn_done: float             # seconds from the churn's start to its last client's end
    drain: float                  # seconds the observers read on after that


def differ(got: dict[str, list[str]], want: dict[str, list[str]]) -> dict[str, list[str]]:
    """The kinds of key whose keys are not exactly those wanted: the keys found (or, for a kind
    with none, the ones wanted, marked ``missing``)."""
    out = {}
    for kind in sorted(set(got) | set(want)):
        if got.get(kind) != want.get(kind):
            out[kind] = got.get(kind) or [f"missing {k}" for k in want.get(kind, [])]
    return out


def evaluate(o: Observed) -> dict[str, Any]:
    """The figures (a JSON-able dict) with ``checks``: name -> {"pass", "detail"}."""
    reports, skipped, sent, counts, notices = o.reports, o.skipped, o.sent, o.counts, o.notices
    obs_closed, obs_ids, sids, rooms, samples = o.obs_closed, o.obs_ids, o.sids, o.rooms, o.samples
    base, mid, after, final, churn_done, drain = o.base, o.mid, o.after, o.final, o.churn_done, o.drain
    figures: dict[str, Any] = {}
    checks: dict[str, tuple[bool, str]] = {}

    def check(name: str, ok: bool, detail: str) -> None:
        checks[name] = (ok, detail)

    # ---- churn figures
    errors = [f"{r.gid}({r.mode}): {r.error}" for r in reports if r.error]
    events = sorted([(r.started, 1) for r in reports if r.connected] + [(r.ended, -1) for r in reports
                                                                         if r.connected])
    peak = level = 0
    for _, d in events:
        level += d
        peak = max(peak, level)
    by_mode = {m: sum(1 for r in reports if r.mode == m and r.connected) for m in MODES}
    figures["churn"] = {"connections": sum(r.connected for r in reports), "skipped": skipped,
                        "peak_concurrent": peak, "by_mode": by_mode, "errors": len(errors),
                        "error_samples": errors[:5], "seconds": round(churn_done, 1),
                        "drain_seconds": round(drain, 1)}
    check("churn clients without error", not errors and not skipped,
          f"{len(errors)} errors, {skipped} not started" + (f"; first: {errors[0]}" if errors else ""))

    # ---- delivery
    lost = dups = unexpected = received = 0
    worst: tuple[int, str] = (0, "")
    for i, got in enumerate(counts):
        missing = sent.difference(got)
        lost += len(missing)
        if len(missing) > worst[0]:
            worst = (len(missing), f"observer {i} ({obs_ids[i]}) missed e.g. {sorted(missing)[:3]}")
        dups += sum(n - 1 for t, n in got.items() if n > 1 and t in sent)
        unexpected += sum(1 for t in got if t not in sent)
        received += sum(n for t, n in got.items() if t in sent)
    echo_missing = sum(r.echo_missing for r in reports)
    echo_dups = sum(r.echo_dups for r in reports)
    other_dups = sum(r.other_dups for r in reports)
    expected = len(sent) * (len(counts) + 1)
    figures["delivery"] = {
        "broadcasts_sent": len(sent), "observers": len(counts), "expected": expected,
        "received": received + len(sent) - echo_missing + echo_dups, "lost_observers": lost,
        "lost_echoes": echo_missing, "duplicated_observers": dups, "duplicated_echoes": echo_dups,
        "duplicated_churn_receivers": other_dups, "unexpected": unexpected,
        "churn_tagged_received": sum(r.received for r in reports),
        "departure_notices_per_observer": round(sum(notices) / max(1, len(notices))),
        "observer_sockets_closed_by_server": obs_closed}
    check("every broadcast reached every observer and its sender (no loss)", lost == 0 and echo_missing == 0
          and len(sent) > 0, f"{lost} lost at observers, {echo_missing} own echoes lost" +
          (f"; {worst[1]}" if worst[0] else ""))
    check("no duplicate delivery", dups == 0 and echo_dups == 0 and other_dups == 0,
          f"observers {dups}, echoes {echo_dups}, churn receivers {other_dups}")
    check("no observer socket closed by a server", obs_closed == 0, f"{obs_closed} closed")

    # ---- Redis clients and keys
    joined = base["observers_joined"]
    figures["redis_clients"] = {"baseline": base["redis_clients"],
                                "observers_joined": joined["redis_clients"],
                                "observers_only": mid["redis_clients"],
                                "nobody": after["redis_clients"],
                                "max_sampled": max((s["redis_clients"] for s in samples), default=None),
                                "after_shutdown": final["redis_clients"],
                                "settle_s_observers_only": mid.get("settle_s"),
                                "settle_s_nobody": after.get("settle_s")}
    held = [(b["redis"], a["redis"]) for b, a in zip(base["servers"], after["servers"], strict=True)]
    check("Redis clients back to baseline (or below)",
          mid["redis_clients"] <= base["redis_clients"] and after["redis_clients"] <= base["redis_clients"],
          f"{base['redis_clients']} -> {mid['redis_clients']} (observers only, after "
          f"{mid.get('settle_s')} s) -> {after['redis_clients']} (nobody, after {after.get('settle_s')} s; "
          "idle pooled connections close every 10 s); each server's own: "
          + ", ".join(f"{b} -> {j} (observers joined, before the churn) -> {a}"
                      for (b, a), j in zip(held, joined["servers_redis"], strict=True)))
    own = {"servers": sorted(KEYS.server(s) for s in sids), "index:servers": [KEYS.servers_index]}
    extra_after = differ(after["keys"], own)
    figures["keys"] = {"baseline": base["keys"], "nobody": after["keys"], "after_shutdown": final["keys"],
                       "observers_only": {k: len(v) for k, v in mid["keys"].items()}}
    check("no key left but the live servers' own", not extra_after and after["index_servers"] == set(sids),
          "none" if not extra_after else
          "; ".join(f"{k}: {v[:5]} ({len(v)})" for k, v in extra_after.items()))
    ids = set(obs_ids)
    want_mid = {"servers": own["servers"], "index:servers": own["index:servers"],
                # the buckets of the observers' records and room lists (they are in rooms)
                "connections": sorted({KEYS.connection(c) for c in ids}),
                "connection-rooms": sorted({KEYS.connection_rooms(c) for c in ids}),
                "rooms": sorted(KEYS.room(room) for room in rooms),
                "index:rooms": sorted({KEYS.rooms_index(room_bucket(room)) for room in rooms}),
                # the servers' sets that hold an id (their members are checked below)
                "server-connections": [k for k in mid["keys"].get("server-connections", [])
                                       if any(k in KEYS.server_connection_sets(s) for s in sids)]}
    bad_rooms = [room for room, members in mid["rooms"].items() if members != ids]
    extra_mid = differ(mid["keys"], want_mid)
    check("with only the observers left, exactly their keys and memberships",
          not extra_mid and not bad_rooms and mid["server_conns"] == ids and mid["index_rooms"] == set(rooms),
          "ok" if not (extra_mid or bad_rooms) else
          f"keys differ: {sorted(extra_mid)[:5]}; rooms with other members: {bad_rooms[:5]}")
    check("servers exit 0 on SIGTERM and leave no key", final["codes"] == [0, 0] and not final["keys"],
          f"exit codes {final['codes']}, keys {final['keys']}")

    # ---- server RSS and fds
    figures["servers"] = []
    for i in range(2):
        series = [s["servers"][i] | {"t": s["t"]} for s in samples if s["t"] >= 0]
        during = [x for x in series if x["t"] <= churn_done] or series or [mid["servers"][i]]
        warm = next((x for x in during if x["t"] >= WARM), during[0])
        row: dict[str, Any] = {}
        for m in ("rss_kb", "fds", "redis", "ws", "other"):
            row[m] = {"before": base["servers"][i][m], "warm": warm[m], "max": max(x[m] for x in during),
                      "end": mid["servers"][i][m], "nobody": after["servers"][i][m]}
            row[m]["drift"] = row[m]["end"] - row[m]["warm"]
        row["local_connections_nobody"] = after["stats"][i]["local_connections"]
        figures["servers"].append(row)
        other, ws, rss = row["other"], row["ws"], row["rss_kb"]
        n_obs = len(counts) // 2
        check(f"server {i}: client sockets closed, other fds flat and back",
              ws["end"] == n_obs and ws["nobody"] == 0 and row["local_connections_nobody"] == 0
              and other["end"] <= other["warm"] + FD_SLACK and other["nobody"] <= other["before"] + FD_SLACK,
              f"client sockets end {ws['end']} (observers {n_obs}), nobody {ws['nobody']}; other fds "
              f"before {other['before']}, warm {other['warm']}, end {other['end']}, nobody "
              f"{other['nobody']} (slack {FD_SLACK})")
        check(f"server {i}: RSS flat after warm-up", rss["drift"] <= RSS_SLACK_KB,
              f"warm {rss['warm']} KB -> end {rss['end']} KB: {rss['drift']:+d} KB "
              f"(allowed {RSS_SLACK_KB} KB)")
    figures["samples"] = samples
    figures["checks"] = {name: {"pass": ok, "detail": detail} for name, (ok, detail) in checks.items()}
    return figures


FIGURE_NAMES = {"rss_kb": "RSS KB", "fds": "open fds", "redis": " of which Redis",
                "ws": " of which clients", "other": " of which other"}


def print_figures(f: dict[str, Any]) -> None:
    c, d, rc = f["churn"], f["delivery"], f["redis_clients"]
    print(f"\nconnections made          {c['connections']} churn (+{d['observers']} observers), peak "
          f"{c['peak_concurrent']} churn at once; by mode {c['by_mode']}")
    print(f"churn / drain             {c['seconds']} s / {c['drain_seconds']} s")
    print(f"broadcasts sent           {d['broadcasts_sent']} (tagged, send call succeeded)")
    print(f"deliveries expected       {d['expected']} (x {d['observers']} observers + sender)")
    print(f"deliveries received       {d['received']}")
    print(f"lost                      {d['lost_observers']} at observers, {d['lost_echoes']} echoes")
    print(f"duplicated                {d['duplicated_observers']} at observers, {d['duplicated_echoes']} "
          f"echoes, {d['duplicated_churn_receivers']} at churn receivers; unexpected {d['unexpected']}")
    print(f"departure notices         {d['departure_notices_per_observer']} per observer")
    print(f"Redis clients             baseline {rc['baseline']}, observers joined {rc['observers_joined']}, "
          f"observers only {rc['observers_only']}, "
          f"nobody {rc['nobody']}, max sampled {rc['max_sampled']}, after shutdown {rc['after_shutdown']}")
    left = {k: len(v) for k, v in f["keys"]["nobody"].items()}
    print(f"keys left (nobody)        {left}; after shutdown {len(f['keys']['after_shutdown'])}")
    print(f"{'server figure':<26}{'before':>8}{'warm':>8}{'max':>8}{'end':>8}{'nobody':>8}{'drift':>8}")
    for i, row in enumerate(f["servers"]):
        for m in ("rss_kb", "fds", "redis", "ws", "other"):
            v = row[m]
            print(f"{f'server {i} {FIGURE_NAMES[m]}':<26}{v['before']:>8}{v['warm']:>8}{v['max']:>8}"
                  f"{v['end']:>8}{v['nobody']:>8}{v['drift']:>+8}")
    print()
    for name, v in f["checks"].items():
        print(f"{'PASS' if v['pass'] else 'FAIL'}  {name}: {v['detail']}")
