"""Example backend for fastgate: a small trading platform API.

An ordinary FastAPI app that knows nothing about the gateway in front of it. It has the
data classes fastgate's policies are written for:

- market data      /api/market/...   changes every few seconds
- user data        /api/users/...    needs an Authorization header
- reference data   /api/static/...   changes rarely
- trading          /api/trades       POST with a JSON body, never cached
- a large list     /api/instruments  limit/offset pagination
- a slow endpoint  /api/slow
- streams          /ws/prices (WebSocket), /api/stream/prices (server-sent events)

Two debugging endpoints let tests observe what reached the backend: /debug/echo reflects the
request it received, /debug/stats counts requests per path. /debug/health flips /healthz.

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

from fastapi import FastAPI, Header, HTTPException, Request, Response, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

app = FastAPI(title="Example trading backend", version="1.0.0")

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

_hits: Counter[str] = Counter()
_state = {"healthy": True, "trades": 0, "fail": None, "delay": 0.0, "conditional": 0, "version": 1}


@app.middleware("http")
async def count_requests(request: Request, call_next):
    path = request.url.path
    if not path.startswith("/debug/") or path.startswith("/debug/cacheable"):
        _hits[path] += 1
        if path != "/healthz":
            _hits["__total__"] += 1
    return await call_next(request)


def _price(symbol: str) -> float:
    # Deterministic within a 5-second window, so repeated reads agree unless time moved on.
    window = int(time.time() // 5)
    seed = int(hashlib.sha256(f"{symbol}:{window}".encode()).hexdigest()[:8], 16)
    return round(100 + (seed % 100000) / 100, 2)


@app.get("/healthz")
async def healthz():
    if not _state["healthy"]:
        return JSONResponse({"status": "unhealthy"}, status_code=503)
    return {"status": "ok"}


@app.get("/api/market")
async def market_overview():
    return {"symbols": [{"symbol": s, "price": _price(s)} for s in SYMBOLS], "ts": time.time()}


@app.get("/api/market/{symbol}")
async def market_quote(symbol: str):
    symbol = symbol.upper()
    if symbol not in SYMBOLS:
        raise HTTPException(status_code=404, detail=f"unknown symbol {symbol}")
    return {"symbol": symbol, "price": _price(symbol), "ts": time.time()}


@app.get("/api/users/{user_id}")
async def user_profile(user_id: str, authorization: str | None = Header(default=None)):
    if not authorization:
        raise HTTPException(status_code=401, detail="missing Authorization")
    return {"id": user_id, "token_owner": authorization.removeprefix("Bearer "), "balance": 1000.0}


@app.get("/api/users/{user_id}/positions")
async def user_positions(user_id: str, authorization: str | None = Header(default=None)):
    if not authorization:
        raise HTTPException(status_code=401, detail="missing Authorization")
    return {"id": user_id, "positions": [{"symbol": s, "qty": 10} for s in SYMBOLS[:3]]}


@app.get("/api/static/exchanges")
async def exchanges(response: Response):
    response.headers["ETag"] = '"exchanges-v7"'
    return {"exchanges": ["NASDAQ", "NYSE", "LSE", "XETRA"], "version": 7}


@app.get("/api/static/currencies")
async def currencies():
    return {"currencies": ["USD", "EUR", "GBP", "JPY", "CHF"], "version": 3}


@app.get("/api/instruments")
async def instruments(limit: int = 100, offset: int = 0):
    limit = max(0, min(limit, len(INSTRUMENTS)))
    return {"total": len(INSTRUMENTS), "offset": offset, "items": INSTRUMENTS[offset : offset + limit]}


class TradeIn(BaseModel):
    symbol: str = Field(min_length=1, max_length=16)
    side: str = Field(pattern="^(buy|sell)$")
    qty: float = Field(gt=0)


@app.get("/api/export")
async def export(rows: int = 10, delay: float = 0.1):
    """A slow NDJSON export, streamed row by row (not an event stream)."""

    async def lines():
        for item in INSTRUMENTS[:rows]:
            yield json.dumps(item) + "\n"
            await asyncio.sleep(delay)

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@app.get("/api/precompressed")
async def precompressed():
    """A body the backend gzips itself, so a gateway must not compress it again."""
    body = gzip.compress(json.dumps({"items": INSTRUMENTS[:50]}).encode())
    return Response(body, media_type="application/json", headers={"Content-Encoding": "gzip"})


@app.post("/api/trades", status_code=201)
async def create_trade(trade: TradeIn, response: Response):
    _state["trades"] += 1
    trade_id = _state["trades"]
    response.headers["Location"] = f"/api/trades/{trade_id}"
    return {"id": trade_id, "symbol": trade.symbol, "side": trade.side, "qty": trade.qty}


@app.get("/api/slow")
async def slow(seconds: float = 2.0):
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@app.get("/api/stream/prices")
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


@app.api_route("/api/status/{code}", methods=["GET", "POST"])
async def status(code: int):
    return JSONResponse({"status": code}, status_code=code)


@app.api_route("/debug/echo/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
@app.api_route("/debug/echo", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
async def echo(request: Request):
    body = await request.body()
    return {
        "method": request.method,
        "path": request.url.path,
        "raw_path": request.scope.get("raw_path", b"").decode("latin-1"),
        "query": request.url.query,
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.scope["headers"]],
        "body_len": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "client": request.client.host if request.client else None,
    }


@app.get("/debug/cacheable/{name}")
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
):
    """A response whose caching headers the caller chooses, for exercising a cache in front.

    Query: cc (Cache-Control), etag, tag (Cache-Tag), vary, cookie (Set-Cookie), size (padding),
    hop (adds hop-by-hop fields a proxy must not forward: a Connection-nominated one among them).
    /debug/mode sets failures, delays and the data version for every call.
    """
    if _state["delay"]:
        await asyncio.sleep(_state["delay"])
    if _state["fail"]:
        return JSONResponse({"error": "induced"}, status_code=_state["fail"])
    headers = {}
    if cc:
        headers["Cache-Control"] = cc
    if tag:
        headers["Cache-Tag"] = tag
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
    return JSONResponse(body, headers=headers)


@app.post("/debug/mode")
async def set_mode(request: Request):
    body = await request.json()
    for key in ("fail", "delay", "version"):
        if key in body:
            _state[key] = body[key]
    return {k: _state[k] for k in ("fail", "delay", "version", "conditional")}


@app.get("/debug/stats")
async def stats():
    return {"hits": dict(_hits), "total": _hits["__total__"], "conditional": _state["conditional"]}


@app.post("/debug/health")
async def set_health(request: Request):
    body = await request.json()
    _state["healthy"] = bool(body.get("healthy", True))
    return {"healthy": _state["healthy"]}


@app.post("/debug/reset")
async def reset():
    _hits.clear()
    return {"reset": True}


@app.get("/api/random")
async def random_value():
    return {"value": random.random()}
