"""Example backend for fastgate: a small trading and catalog API, written the way FastAPI teams
write theirs, and knowing nothing about the gateway in front of it.

- routers included with prefixes (APIRouter); the catalog router is included twice, under
  /api/v1 and /api (the duplicate-router case teams suspect in their own apps)
- auth as a dependency (routers/auth.py): 401 with WWW-Authenticate, 403 for someone else's data
- a lifespan with a configurable start-up delay, and a per-query database latency (state.py)
- pydantic models and their 422s; list endpoints with validated limit/offset (le= bounds in the
  OpenAPI schema); related resources that writes change (routers/catalog.py)
- a 500 from an unhandled exception (/api/crash); CORS on one mounted sub-application (/public)
- Cache-Control where a team would set it (reference data)

Data classes for the policies: market data /api/market (changes every few seconds), user data
/api/users (bearer token), reference data /api/static (rarely changes), trading /api/trades
(POST, never cached), a large list /api/instruments, a slow endpoint /api/slow, streams
/ws/prices (WebSocket) and /api/stream/prices (server-sent events).

Test-only endpoints live under /debug and are counted like every other path: /debug/echo
reflects the request it received, /debug/cacheable answers with caching headers the caller
picks, /debug/stats reports the counters, /debug/mode, /debug/health and /debug/reset steer.

Run: uvicorn app:app --host 127.0.0.1 --port 8000 (from this folder).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import random
import time
from collections import Counter
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response, WebSocket, WebSocketDisconnect
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

import state
from routers import catalog
from routers.auth import Caller, same_user


@asynccontextmanager
async def lifespan(_app: FastAPI):
    # Such backends load models, warm pools and run migrations before serving.
    if state.STARTUP_DELAY:
        await asyncio.sleep(state.STARTUP_DELAY)
    yield


app = FastAPI(title="Example trading backend", version="2.0.0", lifespan=lifespan)
market = APIRouter(prefix="/api/market", tags=["market"])
users = APIRouter(prefix="/api/users", tags=["users"])
reference = APIRouter(prefix="/api/static", tags=["reference"])
trading = APIRouter(prefix="/api", tags=["trading"])
debug = APIRouter(prefix="/debug", tags=["debug"])

SYMBOLS = ["AAPL", "MSFT", "GOOG", "AMZN", "TSLA", "NVDA", "META", "BRK.B"]
INSTRUMENTS = [
    {
        "id": i,
        "symbol": f"SYM{i:05d}",
        "name": f"Instrument number {i}",
        "exchange": ["NASDAQ", "NYSE", "LSE", "XETRA"][i % 4],
        "currency": ["USD", "USD", "GBP", "EUR"][i % 4],
        "lot_size": 1 + i % 100,
        "tick_size": 0.01,
    }
    for i in range(5000)
]

_hits = state.hits
_state = state.mode


@app.middleware("http")
async def count_requests(request: Request, call_next):
    # Every path is counted, /debug ones too: "the backend never saw it" must be able to fail.
    path = request.url.path
    _hits[path] += 1
    if path not in state.CONTROL_PATHS and not path.startswith(state.CONTROL_PREFIXES):
        _hits["__total__"] += 1
    return await call_next(request)


def _price(symbol: str) -> float:
    # Deterministic within a 5-second window, so repeated reads agree unless time moved on.
    window = int(time.time() // 5)
    seed = int(hashlib.sha256(f"{symbol}:{window}".encode()).hexdigest()[:8], 16)
    return round(100 + (seed % 100000) / 100, 2)


@app.get("/healthz")
async def healthz():
    if _state.get("health_delay"):
        await asyncio.sleep(_state["health_delay"])
    if not _state["healthy"]:
        return JSONResponse({"status": "unhealthy"}, status_code=503)
    return {"status": "ok"}


@market.get("")
async def market_overview():
    return {"symbols": [{"symbol": s, "price": _price(s)} for s in SYMBOLS], "ts": time.time()}


@market.get("/{symbol}")
async def market_quote(symbol: str):
    symbol = symbol.upper()
    if symbol not in SYMBOLS:
        raise HTTPException(status_code=404, detail=f"unknown symbol {symbol}")
    return {"symbol": symbol, "price": _price(symbol), "ts": time.time()}


@users.get("/{user_id}")
async def user_profile(user_id: str, caller: Caller = Depends(same_user)):
    await state.query()
    return {"id": user_id, "token_owner": caller.user_id, "balance": 1000.0}


@users.get("/{user_id}/positions")
async def user_positions(user_id: str, caller: Caller = Depends(same_user)):
    await state.query()
    return {"id": user_id, "positions": [{"symbol": s, "qty": 10} for s in SYMBOLS[:3]]}


@reference.api_route("/exchanges", methods=["GET", "HEAD"])
async def exchanges(response: Response):
    response.headers["ETag"] = '"exchanges-v7"'
    response.headers["Cache-Control"] = "public, max-age=3600"
    return {"exchanges": ["NASDAQ", "NYSE", "LSE", "XETRA"], "version": 7}


@reference.api_route("/currencies", methods=["GET", "HEAD"])
async def currencies(response: Response):
    response.headers["Cache-Control"] = "public, max-age=3600"
    return {"currencies": ["USD", "EUR", "GBP", "JPY", "CHF"], "version": 3}


@trading.get("/instruments")
async def instruments(limit: int = 100, offset: int = 0):
    limit = max(0, min(limit, len(INSTRUMENTS)))
    return {"total": len(INSTRUMENTS), "offset": offset, "items": INSTRUMENTS[offset : offset + limit]}


class TradeIn(BaseModel):
    symbol: str = Field(min_length=1, max_length=16)
    side: str = Field(pattern="^(buy|sell)$")
    qty: float = Field(gt=0)


@trading.get("/export")
async def export(rows: int = 10, delay: float = 0.1):
    """A slow NDJSON export, streamed row by row (not an event stream)."""

    async def lines():
        for item in INSTRUMENTS[:rows]:
            yield json.dumps(item) + "\n"
            await asyncio.sleep(delay)

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@trading.get("/precompressed")
async def precompressed():
    """A body the backend gzips itself, so a gateway must not compress it again."""
    body = gzip.compress(json.dumps({"items": INSTRUMENTS[:50]}).encode())
    return Response(body, media_type="application/json", headers={"Content-Encoding": "gzip"})


@trading.post("/trades", status_code=201)
async def create_trade(trade: TradeIn, response: Response):
    _state["trades"] += 1
    trade_id = _state["trades"]
    response.headers["Location"] = f"/api/trades/{trade_id}"
    return {"id": trade_id, "symbol": trade.symbol, "side": trade.side, "qty": trade.qty}


@trading.get("/slow")
async def slow(seconds: float = 2.0):
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@trading.get("/stream/prices")
async def price_events(count: int = 5, interval: float = 0.3):
    async def events():
        for i in range(count):
            symbol = SYMBOLS[i % len(SYMBOLS)]
            yield f"id: {i}\nevent: price\ndata: {json.dumps({'seq': i, 'symbol': symbol, 'price': _price(symbol)})}\n\n"
            await asyncio.sleep(interval)

    return StreamingResponse(events(), media_type="text/event-stream")


@app.websocket("/ws/prices")
async def ws_prices(websocket: WebSocket):
    """Echoes text messages prefixed with 'echo:'; a message 'subscribe SYM' streams 3 quotes."""
    await websocket.accept()
    try:
        while True:
            msg = await websocket.receive_text()
            if msg.startswith("subscribe "):
                symbol = msg.split(" ", 1)[1].upper()
                for _ in range(3):
                    await websocket.send_text(json.dumps({"symbol": symbol, "price": _price(symbol)}))
                    await asyncio.sleep(0.05)
            else:
                await websocket.send_text(f"echo:{msg}")
    except WebSocketDisconnect:
        return


@trading.api_route("/status/{code}", methods=["GET", "POST"])
async def status(code: int):
    return JSONResponse({"status": code}, status_code=code)


@debug.api_route("/echo/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
@debug.api_route("/echo", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
async def echo(request: Request):
    body = await request.body()
    # ?delay=seconds holds the answer: requests in flight at once, each on its own connection
    delay = min(float(request.query_params.get("delay") or 0), 5.0)
    if delay > 0:
        await asyncio.sleep(delay)
    return {
        "method": request.method,
        "path": request.url.path,
        "raw_path": request.scope.get("raw_path", b"").decode("latin-1"),
        "query": request.url.query,
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.scope["headers"]],
        "body_len": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "client": request.client.host if request.client else None,
        "client_port": request.client.port if request.client else None,
    }


@debug.get("/cacheable/{name}")
async def cacheable(
    name: str,
    request: Request,
    cc: str | None = None,
    etag: str | None = None,
    tag: str | None = None,
    vary: str | None = None,
    cookie: str | None = None,
    size: int = 0,
    hop: bool = False,
    expires: float | None = None,
    lm: str | None = None,
    tagh: str = "Cache-Tag",
    status: int = 200,
    age: int | None = None,
    date_ago: float | None = None,
    cdn: str | None = None,
    fcc: str | None = None,
    fixed_etag: str | None = None,
    vary304: str | None = None,
    length304: str | None = None,
):
    """A response whose caching headers the caller chooses, for exercising a cache in front.

    Query: cc (Cache-Control), etag, tag (a tag field, named by tagh, Cache-Tag by default),
    vary, cookie (Set-Cookie), size (padding), expires (seconds from now, as Expires with a Date),
    lm (Last-Modified, answering If-Modified-Since with 304), hop (adds hop-by-hop fields a proxy
    must not forward: a Connection-nominated one among them). A Range request gets a 206.
    For RFC 9111 checks: status (any status, same body), age (an Age field), date_ago (a Date
    that many seconds in the past), cdn (CDN-Cache-Control), fcc (Fastgate-Cache-Control),
    fixed_etag (an ETag that writes do not change; every answer, 304s too, carries
    X-Data-Version, so a revalidation shows whether the stored header was updated); vary304 and
    length304 add a Vary and a Content-Length to that 304 only (fields a cache must not take
    from a 304).
    /debug/mode sets failures, delays, holds and the data version for every call.
    """
    if _state["delay"]:
        await asyncio.sleep(_state["delay"])
    if _state.get("hold"):
        await _hold(_state["hold"])
    if _state["fail"]:
        return JSONResponse({"error": "induced"}, status_code=_state["fail"])
    headers = {}
    if cc:
        headers["Cache-Control"] = cc
    if age is not None:
        headers["Age"] = str(age)
    if date_ago is not None:
        from email.utils import formatdate

        headers["Date"] = formatdate(time.time() - date_ago, usegmt=True)
    if cdn:
        headers["CDN-Cache-Control"] = cdn
    if fcc:
        headers["Fastgate-Cache-Control"] = fcc
    if fixed_etag:
        headers["ETag"] = f'"{fixed_etag}"'
        headers["X-Data-Version"] = f'v{_state["version"]}'
        if request.headers.get("if-none-match") == headers["ETag"]:
            _state["conditional"] += 1
            if vary304:
                headers["Vary"] = vary304
            if length304:
                headers["Content-Length"] = length304
            return Response(status_code=304, headers=headers)
    if tag:
        headers[tagh] = tag
    if expires is not None:
        from email.utils import formatdate

        now = time.time()
        headers["Date"] = formatdate(now, usegmt=True)
        headers["Expires"] = formatdate(now + expires, usegmt=True)
    if lm:
        headers["Last-Modified"] = lm
        if request.headers.get("if-modified-since") == lm:
            _state["conditional"] += 1
            return Response(status_code=304, headers=headers)
    if vary:
        headers["Vary"] = vary
    if cookie:
        headers["Set-Cookie"] = cookie
    if hop:
        headers["Connection"] = "X-Backend-Internal"
        headers["X-Backend-Internal"] = "secret"
        headers["Keep-Alive"] = "timeout=5"
        headers["Proxy-Authenticate"] = "Basic"
        headers["X-Normal"] = "yes"
    if etag:
        tagged = f'"{etag}-v{_state["version"]}"'
        headers["ETag"] = tagged
        if request.headers.get("if-none-match") == tagged:
            _state["conditional"] += 1
            return Response(status_code=304, headers=headers)
    body = {
        "name": name,
        "n": _hits[request.url.path],
        "version": _state["version"],
        "auth": request.headers.get("authorization"),
        "lang": request.headers.get("x-lang"),
        "query": request.url.query,
        "pad": "x" * size,
    }
    rng = request.headers.get("range", "")
    if rng.startswith("bytes=") and "-" in rng:
        data = json.dumps(body).encode()
        start, _, end = rng[6:].partition("-")
        start, end = int(start or 0), min(int(end) if end else len(data) - 1, len(data) - 1)
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        return Response(data[start : end + 1], status_code=206, headers=headers, media_type="application/json")
    return JSONResponse(body, headers=headers, status_code=status)


@debug.api_route("/cacheable/{name}", methods=["POST", "PUT", "PATCH", "DELETE"])
async def cacheable_write(name: str, request: Request, cl: str | None = None, status: int = 200):
    """A write to a cacheable resource: answers `status`, with Content-Location `cl` if given;
    fails like a read when /debug/mode says so."""
    if _state["fail"]:
        return JSONResponse({"error": "induced"}, status_code=_state["fail"])
    _state["version"] += 1
    headers = {"Content-Location": cl} if cl else {}
    if status == 204:
        return Response(status_code=204, headers=headers)
    return JSONResponse({"written": name, "version": _state["version"]}, status_code=status, headers=headers)


@debug.post("/mode")
async def set_mode(request: Request):
    body = await request.json()
    for key in ("fail", "delay", "version", "hold"):
        if key in body:
            _state[key] = body[key]
    return {k: _state.get(k) for k in ("fail", "delay", "version", "conditional", "hold")}


@debug.get("/stats")
async def stats():
    return {
        "hits": dict(_hits),
        "total": _hits["__total__"],
        "conditional": _state["conditional"],
        "db_queries": state.db_stats["queries"],
        "sink_bytes": state.mode.get("sink_bytes", 0),
        "holding": {k: v for k, v in _holding.items() if v},
    }


@debug.post("/health")
async def set_health(request: Request):
    body = await request.json()
    _state["healthy"] = bool(body.get("healthy", True))
    _state["health_delay"] = float(body.get("delay", 0))
    return {"healthy": _state["healthy"], "delay": _state["health_delay"]}


@debug.post("/reset")
async def reset():
    _hits.clear()
    state.db_stats["queries"] = 0
    catalog.reset()
    return {"reset": True}


@trading.get("/random")
async def random_value():
    return {"value": random.random()}


@trading.get("/crash")
async def crash():
    """An unhandled exception: FastAPI answers a plain-text 500."""
    raise RuntimeError("the database connection pool is exhausted")


_gates: dict[str, asyncio.Event] = {}
_holding: Counter[str] = Counter()


async def _hold(key: str) -> None:
    """Blocks until /debug/release/{key}: lets a test order concurrent requests by events it
    can observe (/debug/stats shows who is held) instead of by sleeps."""
    gate = _gates.setdefault(key, asyncio.Event())
    _holding[key] += 1
    try:
        await gate.wait()
    finally:
        _holding[key] -= 1


@debug.get("/hold/{key}")
async def hold(key: str):
    await _hold(key)
    return {"released": key}


@debug.post("/release/{key}")
async def release(key: str):
    """Releases every request held on `key`; later ones hold again."""
    gate = _gates.pop(key, None)
    if gate:
        gate.set()
    return {"released": key}


@debug.post("/sink")
async def sink(request: Request):
    """Reads the body as it arrives and records how many bytes came, even when the sender
    stops midway: what a body cap in front really let through."""
    state.mode["sink_bytes"] = 0
    try:
        async for chunk in request.stream():
            state.mode["sink_bytes"] += len(chunk)
    except Exception:  # the client (the gateway) went away mid-body
        pass
    return {"received": state.mode["sink_bytes"]}


@debug.get("/binary")
async def binary(size: int = 4096):
    """An image-like body: a compressing gateway must pass it as it is."""
    body = bytes((i * 37) % 251 for i in range(size))
    return Response(body, media_type="image/png")


# CORS on one part of the app only: a mounted sub-application with its own middleware, the way
# a team exposes a few endpoints to browsers on another origin.
public = FastAPI(title="Public widgets")
public.add_middleware(
    CORSMiddleware,
    allow_origins=["https://shop.example"],
    allow_methods=["GET", "POST"],
    allow_headers=["Authorization", "Content-Type"],
    max_age=600,
)


@public.get("/widgets")
async def widgets():
    return {"widgets": [{"id": 1, "name": "price ticker"}]}


app.include_router(market)
app.include_router(users)
app.include_router(reference)
app.include_router(trading)
app.include_router(catalog.router, prefix="/api/v1")
app.include_router(catalog.router, prefix="/api")
app.include_router(debug)
app.mount("/public", public)
