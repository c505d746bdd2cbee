"""Whether tests/_redis.py can start a redis-server here."""

from __future__ import annotations

import os

from tests._redis import REDIS_SERVER


def missing_redis() -> str | None:
    if not os.access(REDIS_SERVER, os.X_OK):
        return f"{REDIS_SERVER} not found: apt-get install redis-server (.ci/run does)"
    return None
