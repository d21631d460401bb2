"""What the example backend keeps in memory: request counters for the tests, the debug
switches, and a small "database" whose every query costs a configurable latency, the way a
real app's session does.

Environment:
- BACKEND_STARTUP_DELAY: seconds the lifespan waits before the app serves (such backends take
  30-60 s to start; tests use a fraction of a second)
- BACKEND_DB_LATENCY: seconds each database query takes (default 0)
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter

hits: Counter[str] = Counter()
mode = {"healthy": True, "trades": 0, "fail": None, "delay": 0.0, "conditional": 0, "version": 1}
db_stats = {"queries": 0}

# Control endpoints the tests use to steer and read the backend: counted per path like every
# other request, but not in the total, so reading the counters does not change them.
CONTROL_PATHS = {"/debug/stats", "/debug/mode", "/debug/health", "/debug/reset", "/healthz"}
CONTROL_PREFIXES = ("/debug/release/",)

STARTUP_DELAY = float(os.environ.get("BACKEND_STARTUP_DELAY", "0") or 0)
DB_LATENCY = float(os.environ.get("BACKEND_DB_LATENCY", "0") or 0)


async def query() -> None:
    """One round trip to the database."""
    db_stats["queries"] += 1
    if DB_LATENCY:
        await asyncio.sleep(DB_LATENCY)
