"""Read a Prometheus text scrape back with prometheus_client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def parse_scrape(text: str, server_id: str) -> tuple[dict[str, float], dict[str, str]]:
    """``({sample name: value}, {family name: type})``; every sample must carry exactly the
    ``server_id`` label, and no sample may appear twice."""
    values: dict[str, float] = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            assert sample.labels == {"server_id": server_id}, sample
            assert sample.name not in values, f"{sample.name} twice"
            values[sample.name] = sample.value
    return values, types
