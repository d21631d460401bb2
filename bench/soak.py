"""Soak: fastgate in front of the example backend under mixed traffic with faults, for a bounded
time. Reports errors, P99 and RSS over time (CSV and a PNG plot in bench/results/) and whether
fastgate's memory grew.

Faults, every 30 s cycle: a config reload (SIGHUP, alternating two files) at 5 s, a slow
backend (300 ms per call) from 12 to 17 s, the backend killed (SIGKILL) at 22 s and restarted
2 s later. Answers during the outage (502/503/504 problem responses) are correct answers, and
so is a response cut short because the backend died in the middle of it ("cut": the client
sees the connection close); a connection closed without an answer is an error.

    bench/soak                      120 s
    DURATION=1800 bench/soak        half an hour
"""

import http.client
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DURATION = int(os.environ.get("DURATION", "120"))
WORKERS = int(os.environ.get("WORKERS", "8"))
BIN = os.environ.get("FASTGATE_BIN", str(ROOT / "target/release/fastgate"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port, path, timeout=15.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


CONFIG = """
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
access_log = false
shutdown_grace = "5s"

[upstreams.api]
servers = ["127.0.0.1:{backend}"]
health_check = {{ path = "/healthz", interval = "1s", timeout = "500ms" }}

[defaults]
timeout = "{timeout}"

[[routes]]
name = "market"
match = {{ path_prefix = "/api/market", methods = ["GET", "HEAD"] }}
upstream = "api"
cache = {{ ttl = "2s", stale_if_error = "30s" }}

[[routes]]
name = "items"
match = {{ path_prefix = "/api/v1/items" }}
upstream = "api"
rate_limit = [{{ rate = "100000/s", key = "client_ip" }}]
pagination = {{ param = "limit", default = 10, max = 50 }}
compress = "on"

[[routes]]
name = "echo"
match = {{ path_prefix = "/debug/echo" }}
upstream = "api"
buffer_request_body = "16KiB"

[[routes]]
name = "all"
match = {{ path_prefix = "/" }}
upstream = "api"
"""


class Backend:
    def __init__(self, port):
        self.port = port
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app:app", "--port", str(self.port), "--log-level", "warning"],
            cwd=ROOT / "examples/backend",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return wait_http(self.port, "/healthz")

    def kill(self):
        if self.proc:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def mode(self, body):
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            c.request("POST", "/debug/mode", body=json.dumps(body), headers={"content-type": "application/json"})
            c.getresponse().read()
        except OSError:
            pass


REQUESTS = [
    (40, "GET", "/api/market/AAPL", None),
    (20, "GET", "/api/v1/items?limit=20", None),
    (15, "POST", "/debug/echo", b'{"x": 1}'),
    (15, "GET", "/api/users/1", None),
    (10, "GET", "/debug/echo?q=1", None),
]


def worker(port, stop, out):
    """One keep-alive client: records (second, latency_ms, outcome) per request."""
    weights = [r[0] for r in REQUESTS]
    conn = None
    t0 = out["t0"]
    rows = out["rows"]
    while not stop.is_set():
        _, method, path, body = random.choices(REQUESTS, weights)[0]
        started = time.time()
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            headers = {"content-type": "application/json"} if body else {}
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            outcome = f"{resp.status // 100}xx"
            if resp.getheader("connection", "").lower() == "close":
                conn.close()
                conn = None
        except http.client.IncompleteRead:
            # the answer started, then the connection closed: a response cut because the
            # backend died mid-response (README: a clean close once the response started)
            outcome = "cut"
            conn.close()
            conn = None
        except (OSError, http.client.HTTPException) as e:
            outcome = "error:" + type(e).__name__ + ":" + path.split("?")[0]
            if conn is not None:
                conn.close()
            conn = None
        rows.append((int(started - t0), (time.time() - started) * 1000, outcome))


def rss_mib(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def main():
    if not Path(BIN).exists():
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "fastgate"], cwd=ROOT, check=True)
    port, admin, bport = free_port(), free_port(), free_port()
    backend = Backend(bport)
    if not backend.start():
        sys.exit("soak: the example backend did not start (run scripts/setup)")
    tmp = Path(tempfile.mkdtemp(prefix="fastgate-soak-"))
    cfg = tmp / "fastgate.toml"
    variants = [CONFIG.format(port=port, admin=admin, backend=bport, timeout=t) for t in ("5s", "6s")]
    cfg.write_text(variants[0])
    log = open(tmp / "fastgate.log", "w")
    gw = subprocess.Popen([BIN, "run", "-c", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    if not wait_http(admin, "/readyz"):
        gw.kill()
        backend.kill()
        sys.exit(f"soak: fastgate did not become ready; see {tmp / 'fastgate.log'}")

    stop = threading.Event()
    out = {"t0": time.time(), "rows": []}
    threads = [threading.Thread(target=worker, args=(port, stop, out), daemon=True) for _ in range(WORKERS)]
    for t in threads:
        t.start()
    rss = []
    events = []
    t0 = out["t0"]
    reloads = 0
    for second in range(DURATION):
        phase = second % 30
        if phase == 5:
            reloads += 1
            cfg.write_text(variants[reloads % 2])
            gw.send_signal(signal.SIGHUP)
            events.append((second, "reload"))
        elif phase == 12:
            backend.mode({"delay": 0.3})
            events.append((second, "slow"))
        elif phase == 17:
            backend.mode({"delay": 0})
        elif phase == 22:
            backend.kill()
            events.append((second, "kill -9"))
        elif phase == 24:
            backend.start()
            events.append((second, "restart"))
        rss.append((second, rss_mib(gw.pid)))
        next_tick = t0 + second + 1
        time.sleep(max(0.0, next_tick - time.time()))
    stop.set()
    for t in threads:
        t.join(timeout=15)
    try:
        c = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
        c.request("GET", "/metrics")
        metrics = c.getresponse().read().decode()
        for line in metrics.splitlines():
            if line.startswith(("fastgate_connections_refused_total", "fastgate_upstream_errors_total")):
                print("  metric", line)
    except OSError:
        pass
    alive = gw.poll() is None
    gw.send_signal(signal.SIGTERM)
    try:
        gw.wait(timeout=10)
    except subprocess.TimeoutExpired:
        gw.kill()
    backend.kill()
    report(out["rows"], rss, events, alive, tmp)


def report(rows, rss, events, alive, tmp):
    seconds = max((r[0] for r in rows), default=0) + 1
    per = [{"n": 0, "lat": [], "errors": 0, "5xx": 0} for _ in range(seconds)]
    kinds = {}
    for sec, lat, outcome in rows:
        p = per[sec]
        p["n"] += 1
        p["lat"].append(lat)
        kinds[outcome] = kinds.get(outcome, 0) + 1
        if outcome.startswith("error"):
            p["errors"] += 1
        elif outcome == "5xx":
            p["5xx"] += 1

    def p99(xs):
        return statistics.quantiles(xs, n=100)[98] if len(xs) >= 2 else (xs[0] if xs else float("nan"))

    stamp = time.strftime("%Y-%m-%dT%H%M")
    results = ROOT / "bench/results"
    csv = results / f"soak-{stamp}.csv"
    with open(csv, "w") as f:
        f.write("second,requests,p99_ms,errors,5xx,rss_mib\n")
        rss_by = dict(rss)
        for s, p in enumerate(per):
            f.write(f"{s},{p['n']},{p99(p['lat']):.1f},{p['errors']},{p['5xx']},{rss_by.get(s, float('nan')):.1f}\n")
    total = len(rows)
    errors = sum(v for k, v in kinds.items() if k.startswith("error"))
    quarter = max(1, len(rss) // 4)
    early = statistics.median(v for _, v in rss[quarter : 2 * quarter])
    late = statistics.median(v for _, v in rss[-quarter:])
    growth = (late - early) / early if early else 0.0
    print(f"soak: {len(rss)} s, {total} requests ({total / max(1, len(rss)):.0f}/s), {WORKERS} keep-alive clients")
    print(f"  outcomes: {dict(sorted(kinds.items()))}")
    print(f"  errors (no answer, or a malformed one): {errors}" + (f" at seconds {sorted({r[0] for r in rows if r[2].startswith('error')})}" if errors else ""))
    print(f"  p99 over the whole run: {p99([r[1] for r in rows]):.1f} ms; worst second: {max(p99(p['lat']) for p in per if p['lat']):.1f} ms")
    print(f"  fastgate RSS: {rss[0][1]:.1f} MiB at start, median {early:.1f} MiB in the 2nd quarter, {late:.1f} MiB in the last ({growth * 100:+.1f}%), max {max(v for _, v in rss):.1f} MiB")
    print(f"  events: {len(events)} ({', '.join(sorted({e for _, e in events}))}); fastgate alive at the end: {alive}")
    print(f"  memory: {'no growth' if growth < 0.10 else 'GROWING: look for a leak'}")
    print(f"  data: {csv.relative_to(ROOT)}")
    plot(per, rss, events, results / f"soak-{stamp}.png", p99)
    if errors or not alive or growth >= 0.10:
        print(f"soak: FAILED (logs in {tmp})")
        sys.exit(1)


def plot(per, rss, events, path, p99):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  (no plot: pip install matplotlib)")
        return
    xs = list(range(len(per)))
    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    axes[0].plot(xs, [p["n"] for p in per], label="requests/s")
    axes[0].plot(xs, [p["5xx"] for p in per], label="5xx answers/s")
    axes[0].plot(xs, [p["errors"] for p in per], label="errors/s (no answer)", color="red")
    axes[0].legend(loc="upper right", fontsize=8)
    axes[1].plot(xs, [p99(p["lat"]) for p in per], color="purple")
    axes[1].set_ylabel("P99 ms")
    axes[1].set_yscale("log")
    axes[2].plot([s for s, _ in rss], [v for _, v in rss], color="green")
    axes[2].set_ylabel("fastgate RSS MiB")
    axes[2].set_ylim(bottom=0)
    axes[2].set_xlabel("seconds")
    colors = {"reload": "gray", "slow": "orange", "kill -9": "red", "restart": "blue"}
    for ax in axes:
        for s, e in events:
            ax.axvline(s, color=colors.get(e, "black"), alpha=0.25, linewidth=1)
    axes[0].set_title("fastgate soak: reload (gray), slow backend (orange), kill -9 (red), restart (blue)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    print(f"  plot: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
