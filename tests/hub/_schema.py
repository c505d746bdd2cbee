"""The stats document's schema (docs/hub.md), checked key by key and type by type."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

NUMBER = (int, float)
OPTIONAL_NUMBER = (int, float, type(None))

RATES = {"messages_in": NUMBER, "bytes_in": NUMBER, "messages_out": NUMBER, "bytes_out": NUMBER}
COUNTERS: dict[str, Any] = {
    "messages_in": int,
    "bytes_in": int,
    "messages_out": int,
    "bytes_out": int,
    "dropped": int,
    "dropped_bytes": int,
    "ignored": int,
    "ignored_bytes": int,
    "rates": RATES,
    "last_activity": OPTIONAL_NUMBER,
}
CONNECTION: dict[str, Any] = {
    "id": int,
    "remote": str,
    "route": str,
    "role": str,
    "since": NUMBER,
    "queued_bytes": int,
    "peak_queued_bytes": int,
    "paused": bool,
    **COUNTERS,
}
TOPIC: dict[str, Any] = {
    "name": str,
    "kind": str,
    "since": NUMBER,
    "members": int,
    "senders": int,
    "readers": int,
    "queued_bytes": int,
    **COUNTERS,
    "connections": [CONNECTION],
}
TUNNEL = {
    "agents_online": int,
    "links": int,
    "bytes": int,
    "pending_dials": int,
    "dial_failures": int,
}


class Nullable:
    """SCHEMA, or null."""

    def __init__(self, schema: Any) -> None:
        self.schema = schema


CLUSTER: dict[str, Any] = {
    "relay": str,
    "relays": int,
    "totals": {
        "topics": int,
        "members": int,
        "queued_bytes": int,
        "slow_closes": int,
        "messages_in": int,
        "bytes_in": int,
        "messages_out": int,
        "bytes_out": int,
        "dropped": int,
        "dropped_bytes": int,
        "ignored": int,
        "ignored_bytes": int,
        "rates": RATES,
    },
    "relayed": {"published": int, "received": int, "publish_failures": int},
    "topics": [{"name": str, "kind": str, "members": int, "relays": int}],
}
DOCUMENT: dict[str, Any] = {
    "type": str,
    "version": str,
    "time": NUMBER,
    "interval": NUMBER,
    "window": NUMBER,
    "prefix": str,
    "view": str,
    "totals": {
        "topics": int,
        "members": int,
        "queued_bytes": int,
        "slow_closes": int,
        "refused": dict,
        **COUNTERS,
    },
    "tunnel": TUNNEL,
    "cluster": Nullable(CLUSTER),
    "topics": [TOPIC],
}


def check(test: unittest.TestCase, value: Any, schema: Any, where: str = "$") -> None:
    """Fail TEST unless VALUE has exactly SCHEMA's keys, with its types, all the way down."""
    if isinstance(schema, Nullable):
        if value is not None:
            check(test, value, schema.schema, where)
    elif isinstance(schema, dict):
        test.assertIsInstance(value, dict, where)
        test.assertEqual(sorted(value), sorted(schema), where)
        for key, sub in schema.items():
            check(test, value[key], sub, f"{where}.{key}")
    elif isinstance(schema, list):
        test.assertIsInstance(value, list, where)
        for i, item in enumerate(value):
            check(test, item, schema[0], f"{where}[{i}]")
    else:
        # bool is an int in Python; a count must not be one.
        allowed = schema if isinstance(schema, tuple) else (schema,)
        if bool not in allowed:
            test.assertFalse(isinstance(value, bool), f"{where}: a bool where a number belongs")
        test.assertTrue(isinstance(value, allowed), f"{where}: {value!r} is not {allowed}")
