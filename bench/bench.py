#!/usr/bin/env python3
"""fastgate vs nginx, side by side, on one machine, in one run.

Every system under test runs pinned to one core (PROXY_CPU); the load generator (wrk) and the
upstream share the other (LOAD_CPU). For each scenario and system: requests/s, P50 and P99
latency, CPU time per request of the proxy process (utime+stime from /proc/PID/stat over the
run, divided by the requests served), and RSS. Results go to bench/results/<date>.csv and a
Markdown table printed at the end (paste into bench/README.md).

Environment: QUICK=1 (short smoke run), DURATION (s per measurement), REPEATS (median of),
CONNECTIONS (wrk -c), SCENARIOS (comma list of numbers; 7 is HTTPS termination, 9 shared state
in Redis, 10 idle connections' memory, 11 1,000 concurrent connections, 12 P99 at fixed rates
with oha, 13 a cached 20 KiB JSON body fetched compressed, 14 HTTPS with HTTP/2 with h2load),
IDLE_CONNECTIONS, OHA_BIN.
"""

import csv
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = os.environ.get("QUICK") == "1"
DURATION = int(os.environ.get("DURATION", "3" if QUICK else "8"))
REPEATS = int(os.environ.get("REPEATS", "1" if QUICK else "3"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "32"))
NCPU = os.cpu_count() or 1
PROXY_CPU = os.environ.get("PROXY_CPU", "1" if NCPU > 1 else "0")
LOAD_CPU = os.environ.get("LOAD_CPU", "0")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
FASTGATE = os.environ.get("FASTGATE_BIN") or os.path.join(ROOT, "target", "release", "fastgate")
BARE = os.environ.get("BARE_BIN") or os.path.join(ROOT, "target", "release", "examples", "bare_pingora")
# oha: a load generator at a fixed rate (scenario 12); bench/run installs it here
OHA = os.environ.get("OHA_BIN") or os.path.join(ROOT, "target", "bench-tools", "bin", "oha")
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
WORK = tempfile.mkdtemp(prefix="fastgate-bench-")
# nginx workers drop root privileges: they must be able to read the bodies and write the cache
os.chmod(WORK, 0o755)
procs = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout=20, want=200):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == want:
                    return
        except Exception:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} never answered {want}")


def spawn(cmd, cpu, env=None, cwd=None):
    p = subprocess.Popen(["taskset", "-c", cpu] + cmd, env=env, cwd=cwd,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    procs.append(p)
    return p


def stop(p):
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def cleanup():
    for p in procs:
        try:
            stop(p)
        except Exception:
            pass


def proc_cpu(pids):
    """utime+stime in seconds, summed over the processes and their threads."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def proc_rss(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/statm") as f:
            total += int(f.read().split()[1]) * PAGE
    return total


def children(pid):
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        return [int(x) for x in out.split()]
    except Exception:
        return []


def server_pids(p):
    """The pids doing the work: nginx's master and workers, or the single fastgate process."""
    # taskset execs the command, so p.pid is the server itself
    return [p.pid] + children(p.pid)


def parse_time(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    n, u = float(m.group(1)), m.group(2)
    return n / 1000 if u == "us" else n if u == "ms" else n * 1000


def wrk(url, headers=(), script=None, duration=DURATION, conns=CONNECTIONS):
    cmd = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = parse_time(re.search(r"50%\s+([\d.]+\w+)", out).group(1))
    p99 = parse_time(re.search(r"99%\s+([\d.]+\w+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockerr = re.search(r"Socket errors: (.*)", out)
    return {"requests": reqs, "rps": rps, "p50_ms": p50, "p99_ms": p99,
            "non2xx": int(errors.group(1)) if errors else 0, "socket_errors": sockerr.group(1) if sockerr else ""}


def oha(url, rate, duration=DURATION, conns=64):
    """`rate` requests/s offered whatever the answers' pace (open loop), latency measured from
    when each request was due (`--latency-correction`): queueing shows, unlike with wrk -c."""
    cmd = ["taskset", "-c", LOAD_CPU, OHA, "-z", f"{duration}s", "-c", str(conns), "-q", str(rate),
           "--latency-correction", "--no-tui", "--output-format", "json", url]
    j = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    codes = j.get("statusCodeDistribution", {})
    lp = j["latencyPercentiles"]
    return {"requests": sum(codes.values()), "rps": j["summary"]["requestsPerSec"],
            "p50_ms": (lp.get("p50") or 0) * 1000, "p99_ms": (lp.get("p99") or 0) * 1000,
            "non2xx": sum(n for c, n in codes.items() if not c.startswith("2")), "socket_errors": ""}


def h2load(url, duration=DURATION, conns=CONNECTIONS, streams=10):
    """HTTP/2 over TLS (ALPN h2) with h2load: `conns` connections, `streams` requests in flight
    on each. h2load gives no percentiles: P50 is the mean time per request, P99 its sd above."""
    cmd = ["taskset", "-c", LOAD_CPU, "h2load", "-c", str(conns), "-m", str(streams), "-D", str(duration), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    t = re.search(r"time for request:\s+([\d.]+\w+)\s+([\d.]+\w+)\s+([\d.]+\w+)\s+([\d.]+\w+)", out)
    mean, sd = parse_time(t.group(3)), parse_time(t.group(4))
    if int(done.group(1)) != int(done.group(2)):
        raise RuntimeError(f"h2load: failed requests\n{out}")
    return {"requests": int(done.group(2)), "rps": rps, "p50_ms": mean, "p99_ms": mean + 2 * sd}


def measure(name, url, pids, rate=None, h2=False, **kw):
    """Median of REPEATS wrk runs, with the proxy's CPU per request over each run."""
    runs = []
    for _ in range(REPEATS):
        cpu0 = proc_cpu(pids) if pids else 0
        r = oha(url, rate) if rate else h2load(url, **kw) if h2 else wrk(url, **kw)
        cpu1 = proc_cpu(pids) if pids else 0
        r["cpu_us_per_req"] = (cpu1 - cpu0) / max(r["requests"], 1) * 1e6 if pids else None
        r["rss_mib"] = proc_rss(pids) / 2**20 if pids else None
        runs.append(r)
    med = {}
    for k in runs[0]:
        vals = [r[k] for r in runs]
        med[k] = statistics.median(vals) if isinstance(vals[0], (int, float)) and vals[0] is not None else vals[-1]
    med["runs"] = len(runs)
    # the spread between rounds, beside the median: how far one run's figure can be trusted
    for k in ("rps", "cpu_us_per_req"):
        vals = [r[k] for r in runs if r[k] is not None]
        if vals:
            med[f"{k}_min"], med[f"{k}_max"] = min(vals), max(vals)
    print(f"  {name:<28} {med['rps']:>9.0f} req/s  p50 {med['p50_ms']:.3f} ms  p99 {med['p99_ms']:.3f} ms"
          + (f"  cpu {med['cpu_us_per_req']:.1f} us/req  rss {med['rss_mib']:.1f} MiB" if pids else ""), flush=True)
    return med


# ------------------------------------------------------------------------------------------ systems

SMALL = json.dumps({"symbol": "AAPL", "bids": [[i, 100 + i] for i in range(60)], "pad": "x" * 140})[:1024].ljust(1024)
SMALL = json.dumps({"data": SMALL[:990]})
BIG_ITEMS = [{"id": i, "symbol": f"SYM{i:05d}", "name": f"Instrument {i}", "exchange": "NASDAQ", "price": 100 + i / 7}
             for i in range(220)]
BIG = json.dumps({"items": BIG_ITEMS})[:20480]
BIG = json.dumps({"items": json.loads(json.dumps(BIG_ITEMS))})
while len(BIG) > 20480:
    BIG_ITEMS.pop()
    BIG = json.dumps({"items": BIG_ITEMS})


def start_upstream():
    """nginx with fixed bodies: the fast upstream for scenarios 1-5."""
    d = os.path.join(WORK, "upstream")
    os.makedirs(os.path.join(d, "www"), exist_ok=True)
    os.chmod(d, 0o755)
    os.chmod(os.path.join(d, "www"), 0o755)
    open(os.path.join(d, "www", "small.json"), "w").write(SMALL)
    open(os.path.join(d, "www", "big.json"), "w").write(BIG)
    port = free_port()
    conf = textwrap.dedent(f"""
        worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log warn;
        events {{ worker_connections 4096; }}
        http {{
          access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
          types {{ application/json json; }} default_type application/json;
          server {{ listen 127.0.0.1:{port} reuseport backlog=4096; root {d}/www;
                    location = /small {{ try_files /small.json =404; }}
                    location = /big {{ try_files /big.json =404; }}
                    location = /healthz {{ return 200 "ok"; }} }}
        }}""")
    open(os.path.join(d, "nginx.conf"), "w").write(conf)
    p = spawn([NGINX, "-p", d, "-c", os.path.join(d, "nginx.conf")], LOAD_CPU)
    wait_http(f"http://127.0.0.1:{port}/small")
    return p, port


def start_nginx(up_port, mode, wrap=()):
    """nginx proxying to `up_port`; `wrap` prefixes the command (callgrind in bench/callgrind),
    and then nginx runs as one process (no master), so the wrapper sees the worker."""
    d = os.path.join(WORK, f"nginx-{mode}")
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o777)
    port = free_port()
    extra = ""
    if mode == "gzip":
        extra = "gzip on; gzip_comp_level 1; gzip_types application/json; gzip_min_length 1024; gzip_proxied any;"
    if mode in ("cache", "cache-gzip"):
        extra = (f"proxy_cache_path {d}/cache levels=1:2 keys_zone=c:10m max_size=100m inactive=10m use_temp_path=off;")
    if mode == "cache-gzip":
        # nginx compresses each response anew, cached or not; level 1 is its default
        extra += " gzip on; gzip_comp_level 1; gzip_types application/json; gzip_min_length 1024; gzip_proxied any;"
    loc_extra = "proxy_cache c; proxy_cache_valid 200 10m; add_header X-Cache $upstream_cache_status;" if mode in ("cache", "cache-gzip") else ""
    single = "master_process off;" if wrap else ""
    # scenarios 10 and 11 hold 10,000 connections: within this machine's 20,000 descriptors
    conns = "worker_rlimit_nofile 19000; events { worker_connections 16000; }" if mode == "many" else "events { worker_connections 8192; }"
    conf = textwrap.dedent(f"""
        worker_processes 1; daemon off; {single} pid {d}/nginx.pid; error_log {d}/error.log warn;
        {conns}
        http {{
          access_log off; keepalive_requests 1000000; keepalive_timeout 300s; {extra}
          upstream up {{ server 127.0.0.1:{up_port}; keepalive 64; }}
          server {{ listen 127.0.0.1:{port} reuseport backlog=4096;
            location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
                         proxy_set_header X-Forwarded-For $remote_addr; {loc_extra} }} }}
        }}""")
    open(os.path.join(d, "nginx.conf"), "w").write(conf)
    p = spawn(list(wrap) + [NGINX, "-p", d, "-c", os.path.join(d, "nginx.conf")], PROXY_CPU)
    wait_http(f"http://127.0.0.1:{port}/small", timeout=60)
    time.sleep(0.2)
    return p, port


def start_fastgate(up, mode, extra_env=None, wrap=()):
    """fastgate with one route to `up` and the policy of `mode`; `wrap` prefixes the command
    (callgrind in bench/callgrind)."""
    d = os.path.join(WORK, f"fastgate-{mode}")
    os.makedirs(d, exist_ok=True)
    port, admin = free_port(), free_port()
    route_extra = ""
    top = ""
    if mode == "gzip":
        route_extra = f'compress = {{ algorithms = ["gzip"], gzip_level = {os.environ.get("GZIP_LEVEL", "2")}, min_size = 1024 }}'
    elif mode == "zstd":
        route_extra = 'compress = { algorithms = ["zstd"], zstd_level = 1, min_size = 1024 }'
    elif mode == "brotli":
        route_extra = f'compress = {{ algorithms = ["br"], brotli_level = {os.environ.get("BROTLI_LEVEL", "2")}, min_size = 1024 }}'
    elif mode == "cache":
        route_extra = 'cache = { ttl = "10m" }'
    elif mode == "cache-gzip":
        # the route's usual encoders: a hit sends the entry's stored form of the encoding
        route_extra = 'cache = { ttl = "10m" }\ncompress = { min_size = 1024 }'
    elif mode == "fields":
        route_extra = 'fields = "on"'
    elif mode == "fields-cache":
        route_extra = 'fields = "on"\ncache = { ttl = "10m" }'
    elif mode == "big-cache":
        route_extra = 'cache = { ttl = "10m" }'
    elif mode == "store":
        # every request a miss that is stored (bench/callgrind: the price of a stored body)
        route_extra = 'cache = { ttl = "10m" }'
    elif mode == "store-tags":
        # the same, with the body read for entities: each of its items is tagged
        top = '[entities.Item]\nid = "id"\n'
        route_extra = 'cache = { ttl = "10m" }\nentities = { "/items/*" = "Item" }'
    elif mode == "ratelimit":
        route_extra = 'rate_limit = [{ rate = "1000000/s", burst = 1000000 }]'
    elif mode == "many":
        # every bench connection comes from 127.0.0.1: the per-client cap must not apply
        top = 'max_connections = 19000\nmax_connections_per_client = 19000\nkeepalive_timeout = "300s"\n'
    elif mode.startswith("redis-"):
        # shared state: the limiter or the cache in Redis (scenario 9)
        lease = 100 if mode == "redis-lease" else 1
        l1 = '"1KiB"' if mode == "redis-l2" else '"32MiB"'
        precheck = "false" if mode == "redis-refuse-noprecheck" else "true"
        top = textwrap.dedent(f"""
            [state]
            backend = "redis"
            [state.redis]
            url = "redis://127.0.0.1:{extra_env['redis']}/0"
            lease = {lease}
            precheck = {precheck}
            local_cache_size = {l1}
            """)
        if mode in ("redis-exact", "redis-lease"):
            route_extra = 'rate_limit = [{ rate = "1000000/s", burst = 1000000 }]'
        elif mode.startswith("redis-refuse"):
            # one request an hour: every request after the first is refused (429)
            route_extra = 'rate_limit = [{ rate = "1/h", burst = 1 }]'
        else:
            route_extra = 'cache = { ttl = "10m" }'
    elif mode in ("policies", "trace100", "trace1"):
        if mode == "policies":
            route_extra = 'rate_limit = [{ rate = "1000000/s", burst = 1000000 }]'
        ratio = 1.0 if mode == "trace100" else 0.01
        top = textwrap.dedent(f"""
            [telemetry]
            endpoint = "http://127.0.0.1:{extra_env['sink']}"
            protocol = "http/protobuf"
            sampler = "parentbased_traceidratio"
            sampler_arg = {ratio}
            """)
    conf = textwrap.dedent(f"""
        [server]
        listen = "127.0.0.1:{port}"
        admin_listen = "127.0.0.1:{admin}"
        threads = 1
        access_log = false
        shutdown_grace = "2s"
        {top}
        {tls_table(extra_env) if mode == "tls" else ""}
        [upstreams.up]
        servers = ["{up}"]
        [defaults]
        slow_threshold = "10s"
        [[routes]]
        name = "all"
        match = {{ path_prefix = "/" }}
        upstream = "up"
        """) + route_extra + "\n"
    path = os.path.join(d, "fastgate.toml")
    open(path, "w").write(conf)
    env = dict(os.environ, RUST_LOG="warn")
    p = spawn(list(wrap) + [FASTGATE, "run", "-c", path], PROXY_CPU, env=env)
    wait_http(f"http://127.0.0.1:{admin}/healthz", timeout=60)
    time.sleep(0.2)
    return p, port, admin


def tls_table(extra_env):
    return textwrap.dedent(f"""
        [server.tls]
        listen = "127.0.0.1:{extra_env['tls_port']}"
        certificates = [{{ cert = "{extra_env['cert']}", key = "{extra_env['key']}" }}]
        """)


def make_cert():
    """A P-256 certificate for 127.0.0.1 (what a modern site serves), made with openssl."""
    d = os.path.join(WORK, "tls")
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o755)
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    os.chmod(key, 0o644)
    return cert, key


def start_nginx_tls(up_port, cert, key, h2=False):
    d = os.path.join(WORK, "nginx-tls-h2" if h2 else "nginx-tls")
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o777)
    port = free_port()
    conf = textwrap.dedent(f"""
        worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log warn;
        events {{ worker_connections 8192; }}
        http {{
          access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
          upstream up {{ server 127.0.0.1:{up_port}; keepalive 64; }}
          server {{ listen 127.0.0.1:{port} ssl {"http2 " if h2 else ""}reuseport backlog=4096;
            ssl_certificate {cert}; ssl_certificate_key {key}; ssl_protocols TLSv1.2 TLSv1.3;
            ssl_session_cache off; ssl_session_tickets off;
            location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
                         proxy_set_header X-Forwarded-For $remote_addr; }} }}
        }}""")
    open(os.path.join(d, "nginx.conf"), "w").write(conf)
    p = spawn([NGINX, "-p", d, "-c", os.path.join(d, "nginx.conf")], PROXY_CPU)
    deadline = time.time() + 30
    while subprocess.run(["curl", "-sk", "-o", "/dev/null", f"https://127.0.0.1:{port}/small"]).returncode != 0:
        if time.time() > deadline:
            raise RuntimeError("nginx tls did not start")
        time.sleep(0.1)
    return p, port


HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def start_haproxy(up_port, mode, cert=None, key=None):
    """HAProxy, one thread, as the third peer: pass-through, its cache, its compression (libslz,
    gzip only) and HTTPS (OpenSSL), configured like nginx: keep-alive both sides, X-Forwarded-For."""
    d = os.path.join(WORK, f"haproxy-{mode}")
    os.makedirs(d, exist_ok=True)
    port = free_port()
    bind = f"bind 127.0.0.1:{port}"
    if mode in ("tls", "tls-h2"):
        pem = os.path.join(d, "site.pem")
        open(pem, "w").write(open(cert).read() + open(key).read())
        bind += f" ssl crt {pem} ssl-min-ver TLSv1.2 no-tls-tickets"
        if mode == "tls-h2":
            bind += " alpn h2,http/1.1"
    front = ""
    if mode == "cache":
        front = "http-request cache-use c\n  http-response cache-store c"
    if mode == "gzip":
        front = "compression algo gzip\n  compression type application/json"
    if mode == "cache-gzip":
        # HAProxy's cache keeps what the server sent and its compression filter runs on each
        # response, hits included
        front = ("filter cache c\n  filter compression\n  http-request cache-use c\n  http-response cache-store c\n"
                 "  compression algo gzip\n  compression type application/json")
    conf = textwrap.dedent(f"""
        global
          nbthread 1
          ulimit-n 20000
          maxconn {9900 if mode == "many" else 9000}
          pidfile {d}/haproxy.pid
          tune.ssl.cachesize 0
        defaults
          mode http
          timeout connect 5s
          timeout client 300s
          timeout server 300s
          timeout http-keep-alive 300s
          option forwardfor
          http-reuse always
        cache c
          total-max-size 100
          max-object-size 1000000
          max-age 600
        frontend f
          {bind}
          {front}
          default_backend b
        backend b
          server s1 127.0.0.1:{up_port}
        """)
    open(os.path.join(d, "haproxy.cfg"), "w").write(conf)
    p = spawn([HAPROXY, "-db", "-f", os.path.join(d, "haproxy.cfg")], PROXY_CPU)
    scheme = "https" if mode.startswith("tls") else "http"
    deadline = time.time() + 30
    while subprocess.run(["curl", "-sk", "-o", "/dev/null", "--fail", f"{scheme}://127.0.0.1:{port}/small"]).returncode != 0:
        if time.time() > deadline or p.poll() is not None:
            raise RuntimeError("haproxy did not start")
        time.sleep(0.1)
    time.sleep(0.2)
    return p, port


def start_bare(up, wrap=()):
    """examples/bare_pingora: pingora with nothing but `upstream_peer`, the engine's floor."""
    port = free_port()
    p = spawn(list(wrap) + [BARE, f"127.0.0.1:{port}", up], PROXY_CPU)
    wait_http(f"http://127.0.0.1:{port}/small", timeout=60)
    time.sleep(0.2)
    return p, port


def start_sink():
    """An OTLP/HTTP endpoint that accepts and drops spans (for the tracing-on scenario)."""
    port = free_port()
    code = textwrap.dedent(f"""
        import http.server
        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length", 0)))
                self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
            def log_message(self, *a): pass
        http.server.ThreadingHTTPServer(("127.0.0.1", {port}), H).serve_forever()
        """)
    p = spawn([sys.executable, "-c", code], LOAD_CPU)
    time.sleep(0.5)
    return p, port


def body_size(url, headers):
    req = urllib.request.Request(url, headers=dict(h.split(": ", 1) for h in headers))
    with urllib.request.urlopen(req) as r:
        return len(r.read()), r.headers.get("content-encoding") or "identity"


# ------------------------------------------------------------------------------------------ scenarios

def proxied_scenarios(rows):
    up, up_port = start_upstream()
    upstream = f"127.0.0.1:{up_port}"
    plan = [
        (1, "pass-through 1 KiB", "plain", "/small", [], None),
        (2, "20 KiB JSON, gzip", "gzip", "/big", ["Accept-Encoding: gzip"], None),
        (3, "cache hit 1 KiB", "cache", "/small", [], None),
        (4, "new connection per request", "plain", "/small", ["Connection: close"], None),
    ]
    wanted = os.environ.get("SCENARIOS")
    wanted = {int(x) for x in wanted.split(",")} if wanted else {1, 2, 3, 4, 5, 7, 9, 10, 11, 12, 13, 14}
    for num, title, mode, path, headers, _ in plan:
        if num not in wanted:
            continue
        print(f"scenario {num}: {title}", flush=True)
        conns = 8 if num == 4 else CONNECTIONS
        direct = measure("direct (no proxy)", f"http://{upstream}{path}", [], headers=headers, conns=conns)
        rows.append(row(num, title, "direct", direct))
        def peer(label, system, p, port, admin=None):
            """One system on this scenario: warm its cache, measure, note the body size (and,
            for fastgate's hits, the front door's share)."""
            url = f"http://127.0.0.1:{port}{path}"
            if mode == "cache":
                wrk(url, duration=1)
            if mode == "cache" and admin:
                r = measure_front_door(label, url, server_pids(p), admin, headers=headers, conns=conns)
            else:
                r = measure(label, url, server_pids(p), headers=headers, conns=conns)
            if mode == "gzip":
                r["body_bytes"], r["encoding"] = body_size(f"http://127.0.0.1:{port}{path}", headers)
            rows.append(row(num, title, system, r))

        ng, ng_port = start_nginx(up_port, mode)
        peer("nginx 1 worker", "nginx", ng, ng_port)
        stop(ng)
        hp, hp_port = start_haproxy(up_port, mode)
        peer("haproxy 1 thread", "haproxy", hp, hp_port)
        stop(hp)
        fg, fg_port, fg_admin = start_fastgate(upstream, mode)
        peer("fastgate 1 thread", "fastgate", fg, fg_port, fg_admin)
        stop(fg)
        if num in (1, 4) and os.path.exists(BARE):
            bp, bp_port = start_bare(upstream)
            peer("bare pingora 1 thread", "bare pingora", bp, bp_port)
            stop(bp)
    if 2 in wanted:
        # the other encodings fastgate offers, on the same body: size and CPU beside gzip
        for mode, accept in [("zstd", "zstd"), ("brotli", "br")]:
            fg, fg_port, _ = start_fastgate(upstream, mode)
            headers = [f"Accept-Encoding: {accept}"]
            r = measure(f"fastgate {mode}", f"http://127.0.0.1:{fg_port}/big", server_pids(fg), headers=headers)
            r["body_bytes"], r["encoding"] = body_size(f"http://127.0.0.1:{fg_port}/big", headers)
            rows.append(row(2, f"20 KiB JSON, {mode}", f"fastgate {mode}", r))
            stop(fg)
        fg, fg_port, _ = start_fastgate(upstream, "plain")
        r = measure("fastgate, compression off", f"http://127.0.0.1:{fg_port}/big", server_pids(fg), headers=["Accept-Encoding: gzip"])
        rows.append(row(2, "20 KiB JSON, compression off (cost of gzip)", "fastgate no-gzip", r))
        stop(fg)
    if 13 in wanted:
        # a cached 20 KiB JSON body fetched compressed: the peers cache it and compress each
        # hit (gzip only: Debian's nginx and HAProxy have no brotli or zstd); fastgate sends the
        # entry's stored form of each encoding, and an identity hit beside them
        print("scenario 13: cached 20 KiB JSON, compressed", flush=True)
        title = "cache hit 20 KiB JSON, compressed"
        gz = ["Accept-Encoding: gzip"]
        for label, system, start in [("nginx 1 worker", "nginx", start_nginx), ("haproxy 1 thread", "haproxy", start_haproxy)]:
            p, port = start(up_port, "cache-gzip")
            url = f"http://127.0.0.1:{port}/big"
            wrk(url, duration=1, headers=gz)
            r = measure(label, url, server_pids(p), headers=gz)
            r["body_bytes"], r["encoding"] = body_size(url, gz)
            rows.append(row(13, title, system, r))
            stop(p)
        fg, fg_port, fg_admin = start_fastgate(upstream, "cache-gzip")
        url = f"http://127.0.0.1:{fg_port}/big"
        for accept in ["identity", "gzip", "br", "zstd"]:
            headers = [f"Accept-Encoding: {accept}"]
            wrk(url, duration=1, headers=headers)
            r = measure_front_door(f"fastgate {accept}", url, server_pids(fg), fg_admin, headers=headers)
            r["body_bytes"], r["encoding"] = body_size(url, headers)
            rows.append(row(13, title, f"fastgate {accept}", r))
        stop(fg)
    if 7 in wanted:
        # HTTPS termination: keep-alive (the cost of encryption) and a new connection per
        # request (a full handshake each: the difference in CPU per request is its cost);
        # no session resumption on either side, so every new connection is a full handshake
        print("scenario 7: HTTPS, keep-alive and a handshake per request", flush=True)
        cert, key = make_cert()
        for num, title, headers, conns in [(7, "HTTPS keep-alive 1 KiB", [], CONNECTIONS),
                                           (8, "HTTPS new connection per request (full handshake)", ["Connection: close"], 8)]:
            ng, ng_port = start_nginx_tls(up_port, cert, key)
            rows.append(row(num, title, "nginx", measure("nginx 1 worker", f"https://127.0.0.1:{ng_port}/small", server_pids(ng), headers=headers, conns=conns)))
            stop(ng)
            hp, hp_port = start_haproxy(up_port, "tls", cert, key)
            rows.append(row(num, title, "haproxy", measure("haproxy 1 thread", f"https://127.0.0.1:{hp_port}/small", server_pids(hp), headers=headers, conns=conns)))
            stop(hp)
            tls_port = free_port()
            fg, fg_port, _ = start_fastgate(upstream, "tls", {"tls_port": tls_port, "cert": cert, "key": key})
            rows.append(row(num, title, "fastgate", measure("fastgate 1 thread", f"https://127.0.0.1:{tls_port}/small", server_pids(fg), headers=headers, conns=conns)))
            stop(fg)
    if 14 in wanted:
        # HTTPS with HTTP/2 (ALPN h2) on keep-alive connections, 10 streams in flight on each:
        # nginx's and HAProxy's h2 against fastgate's (pingora's), h2load as the client
        print("scenario 14: HTTPS keep-alive, HTTP/2", flush=True)
        cert, key = make_cert()
        title = "HTTPS keep-alive 1 KiB, HTTP/2 (10 streams a connection)"
        ng, ng_port = start_nginx_tls(up_port, cert, key, h2=True)
        rows.append(row(14, title, "nginx", measure("nginx 1 worker", f"https://127.0.0.1:{ng_port}/small", server_pids(ng), h2=True)))
        stop(ng)
        hp, hp_port = start_haproxy(up_port, "tls-h2", cert, key)
        rows.append(row(14, title, "haproxy", measure("haproxy 1 thread", f"https://127.0.0.1:{hp_port}/small", server_pids(hp), h2=True)))
        stop(hp)
        tls_port = free_port()
        fg, fg_port, _ = start_fastgate(upstream, "tls", {"tls_port": tls_port, "cert": cert, "key": key})
        rows.append(row(14, title, "fastgate", measure("fastgate 1 thread", f"https://127.0.0.1:{tls_port}/small", server_pids(fg), h2=True)))
        stop(fg)
    if 10 in wanted or 11 in wanted:
        many_connections(rows, up_port, upstream, wanted)
    if 12 in wanted:
        tail_latency(rows, up_port, upstream)
    if 9 in wanted:
        print("scenario 9: shared state in Redis vs in the process", flush=True)
        redis_port = free_port()
        rd = spawn(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], LOAD_CPU)
        deadline = time.time() + 10
        while subprocess.run(["redis-cli", "-p", str(redis_port), "PING"], capture_output=True, text=True).stdout.strip() != "PONG":
            if time.time() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        for mode, title in [
            ("plain", "no limit, no cache"),
            ("ratelimit", "rate limit, local"),
            ("redis-exact", "rate limit in Redis, exact (a round trip per request)"),
            ("redis-lease", "rate limit in Redis, lease = 100"),
            ("cache", "cache hit, memory store"),
            ("redis-l1", "cache hit, Redis store, from the L1"),
            ("redis-l2", "cache hit, Redis store, from Redis (L1 too small)"),
            ("redis-refuse", "refusals (429), Redis limiter, precheck on"),
            ("redis-refuse-noprecheck", "refusals (429), Redis limiter, precheck off"),
        ]:
            fg, fg_port, _ = start_fastgate(upstream, mode, {"redis": redis_port})
            rows.append(row(9, title, f"fastgate {mode}", measure(f"fastgate {mode}", f"http://127.0.0.1:{fg_port}/small", server_pids(fg))))
            stop(fg)
        stop(rd)
    if 5 in wanted:
        print("scenario 5: policies on vs pass-through", flush=True)
        sink, sink_port = start_sink()
        for mode, title in [
            ("plain", "policies off (pass-through)"),
            ("ratelimit", "rate limit only (high limit)"),
            ("trace1", "tracing, 1% sampled"),
            ("trace100", "tracing, 100% sampled"),
            ("policies", "all on: rate limit, metrics, 1% traces, request id"),
        ]:
            fg, fg_port, _ = start_fastgate(upstream, mode, {"sink": sink_port})
            rows.append(row(5, title, f"fastgate {mode}", measure(f"fastgate {mode}", f"http://127.0.0.1:{fg_port}/small", server_pids(fg))))
            stop(fg)
        stop(sink)
    stop(up)


MIX_LUA = r"""
local paths = {}
for i = 1, 70 do paths[#paths+1] = {"GET", "/api/market/" .. ({"AAPL","MSFT","GOOG","AMZN","TSLA"})[i % 5 + 1], nil} end
for i = 1, 15 do paths[#paths+1] = {"GET", "/api/users/" .. (i % 5) .. "/positions", "Bearer user" .. (i % 5)} end
for i = 1, 10 do paths[#paths+1] = {"GET", "/api/instruments?limit=100&offset=" .. ((i % 3) * 100), nil} end
for i = 1, 5 do paths[#paths+1] = {"POST", "/api/trades", nil} end
local n = 0
request = function()
  n = n + 1
  local p = paths[(n % #paths) + 1]
  local headers = {["Accept-Encoding"] = "gzip"}
  if p[3] then headers["Authorization"] = p[3] end
  if p[1] == "POST" then
    headers["Content-Type"] = "application/json"
    return wrk.format("POST", p[2], headers, '{"symbol":"AAPL","side":"buy","qty":1}')
  end
  return wrk.format("GET", p[2], headers)
end
"""


def backend_scenario(rows):
    print("scenario 6: the example FastAPI backend, realistic mix", flush=True)
    script = os.path.join(WORK, "mix.lua")
    open(script, "w").write(MIX_LUA)
    port = free_port()
    be = spawn([sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port),
                "--log-level", "warning"], LOAD_CPU, cwd=os.path.join(ROOT, "examples", "backend"))
    wait_http(f"http://127.0.0.1:{port}/healthz")
    upstream = f"127.0.0.1:{port}"

    def stats():
        with urllib.request.urlopen(f"http://{upstream}/debug/stats") as r:
            return json.load(r)["total"]

    def run(label, url, pids, conf_note):
        before = stats()
        r = wrk(url, script=script, conns=16)
        r["backend_requests"] = stats() - before
        out = subprocess.run(["taskset", "-c", LOAD_CPU, "wrk", "-t1", "-c1", "-d1s", "-s", script, url],
                             capture_output=True, text=True).stdout
        transfer = re.search(r"(\d+) requests in [\d.]+\w+, ([\d.]+)(\w+) read", out)
        scale = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}
        if transfer:
            r["bytes_per_req"] = float(transfer.group(2)) * scale.get(transfer.group(3), 1) / int(transfer.group(1))
        r["cpu_us_per_req"] = None
        r["rss_mib"] = proc_rss(pids) / 2**20 if pids else None
        print(f"  {label:<28} {r['rps']:>9.0f} req/s  backend saw {r['backend_requests']} of {r['requests']}"
              f" ({100 * r['backend_requests'] / max(r['requests'], 1):.0f}%)  {r.get('bytes_per_req', 0):.0f} B/resp", flush=True)
        rows.append(row(6, conf_note, label, r))

    run("direct", f"http://{upstream}", [], "mix: direct to uvicorn")
    cfg_plain = ""
    cfg_full = None
    d = os.path.join(WORK, "fastgate-mix")
    os.makedirs(d, exist_ok=True)
    for label, with_policies in [("fastgate plain", False), ("fastgate cache+gzip", True)]:
        fp, ap = free_port(), free_port()
        pol = lambda s: s if with_policies else ""
        conf = textwrap.dedent(f"""
            [server]
            listen = "127.0.0.1:{fp}"
            admin_listen = "127.0.0.1:{ap}"
            access_log = false
            [upstreams.api]
            servers = ["{upstream}"]
            [defaults]
            slow_threshold = "10s"
            {pol('compress = { algorithms = ["gzip"], gzip_level = 2 }')}
            [[routes]]
            name = "market"
            match = {{ path_prefix = "/api/market" }}
            upstream = "api"
            {pol('cache = { ttl = "30s", stale_while_revalidate = "30s" }')}
            [[routes]]
            name = "users"
            match = {{ path_prefix = "/api/users" }}
            upstream = "api"
            {pol('cache = { ttl = "5m", key = { headers = ["Authorization"] } }')}
            [[routes]]
            name = "instruments"
            match = {{ path = "/api/instruments" }}
            upstream = "api"
            {pol('cache = { ttl = "1h" }')}
            [[routes]]
            name = "trades"
            match = {{ path_prefix = "/api/trades" }}
            upstream = "api"
            """)
        path = os.path.join(d, f"{label.replace(' ', '-')}.toml")
        open(path, "w").write(conf)
        fg = spawn([FASTGATE, "run", "-c", path], PROXY_CPU, env=dict(os.environ, RUST_LOG="warn"))
        wait_http(f"http://127.0.0.1:{ap}/healthz")
        run(label, f"http://127.0.0.1:{fp}", server_pids(fg),
            "mix: fastgate, no cache/compression" if not with_policies else "mix: fastgate with cache + gzip")
        stop(fg)
    stop(be)


def row(num, title, system, r):
    return {"scenario": num, "title": title, "system": system, **r}


def front_door_counts(admin):
    """fastgate's responses written at the front door, and its cache hits, from /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    front = sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith("fastgate_front_door_responses_total"))
    hits = sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith("fastgate_cache_requests_total{") and 'result="HIT"' in l)
    return front, hits


def measure_front_door(name, url, pids, admin, **kw):
    """`measure`, with the share of the hits measured that the front door answered."""
    f0, h0 = front_door_counts(admin)
    r = measure(name, url, pids, **kw)
    f1, h1 = front_door_counts(admin)
    r["front_door_share"] = (f1 - f0) / max(h1 - h0, 1)
    print(f"    front door: {100 * r['front_door_share']:.1f}% of {h1 - h0:.0f} hits", flush=True)
    return r


# 9,000, not 10,000: this machine allows 20,000 descriptors per process, and HAProxy reserves
# two per connection (client and server side) before it starts
IDLE = int(os.environ.get("IDLE_CONNECTIONS", "9000"))


def hold_idle(port, n):
    """`n` keep-alive connections, each after one GET /small answered in full, left open."""
    socks, pending = [], []

    def drain(batch):
        for s in batch:
            s.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(65536)
            head, body = data.split(b"\r\n\r\n", 1)
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
            while len(body) < length:
                body += s.recv(65536)

    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /small HTTP/1.1\r\nHost: bench\r\n\r\n")
        socks.append(s)
        pending.append(s)
        if len(pending) == 250:
            drain(pending)
            pending = []
    drain(pending)
    return socks


def tail_latency(rows, up_port, upstream):
    """Scenario 12: P50/P99 at a fixed offered rate, 50% and 90% of fastgate's own peak
    (closed-loop wrk), for every system at the same rates."""
    fg, fg_port, _ = start_fastgate(upstream, "plain")
    peak = measure("fastgate peak (wrk)", f"http://127.0.0.1:{fg_port}/small", server_pids(fg))["rps"]
    stop(fg)
    print(f"scenario 12: fixed rates against fastgate's peak of {peak:.0f} req/s", flush=True)
    starters = [("nginx", lambda: start_nginx(up_port, "plain")), ("haproxy", lambda: start_haproxy(up_port, "plain")),
                ("fastgate", lambda: start_fastgate(upstream, "plain")[:2])]
    for share in (0.5, 0.9):
        rate = int(peak * share)
        for system, start in starters:
            p, port = start()
            r = measure(f"{system} at {rate}/s", f"http://127.0.0.1:{port}/small", server_pids(p), rate=rate)
            rows.append(row(12, f"fixed rate {rate}/s ({share:.0%} of fastgate's peak)", system, r))
            stop(p)


def many_connections(rows, up_port, upstream, wanted):
    """Scenario 10: RSS with IDLE idle keep-alive connections, and after they closed.
    Scenario 11: requests over 1,000 concurrent connections (wrk -c1000)."""
    print(f"scenario 10/11: {IDLE} idle connections; 1,000 concurrent", flush=True)
    starters = [("nginx", lambda: start_nginx(up_port, "many")), ("haproxy", lambda: start_haproxy(up_port, "many")),
                ("fastgate", lambda: start_fastgate(upstream, "many")[:2])]
    for system, start in starters:
        p, port = start()
        pids = server_pids(p)
        if 11 in wanted:
            r = measure(f"{system} -c1000", f"http://127.0.0.1:{port}/small", pids, conns=1000)
            rows.append(row(11, "1,000 concurrent connections, 1 KiB", system, r))
        if 10 in wanted:
            base = proc_rss(pids) / 2**20
            socks = hold_idle(port, IDLE)
            time.sleep(1)
            held = proc_rss(pids) / 2**20
            for sk in socks:
                sk.close()
            time.sleep(3)
            after = proc_rss(pids) / 2**20
            per = (held - base) * 1024 / IDLE
            print(f"  {system:<10} RSS {base:.1f} MiB -> {held:.1f} MiB with {IDLE} idle ({per:.2f} KiB each) -> {after:.1f} MiB after they closed", flush=True)
            rows.append({"scenario": 10, "title": f"{IDLE} idle keep-alive connections", "system": system,
                         "rss_base_mib": base, "rss_mib": held, "rss_after_mib": after, "kib_per_conn": per})
        stop(p)


def idle_and_startup(rows):
    """Exec to the admin listener answering /readyz 200, polled every millisecond."""
    up, up_port = start_upstream()
    d = os.path.join(WORK, "fastgate-startup")
    os.makedirs(d, exist_ok=True)
    times, rss = [], 0.0
    for _ in range(5):
        port, admin = free_port(), free_port()
        path = os.path.join(d, "fastgate.toml")
        open(path, "w").write(textwrap.dedent(f"""
            [server]
            listen = "127.0.0.1:{port}"
            admin_listen = "127.0.0.1:{admin}"
            [upstreams.up]
            servers = ["127.0.0.1:{up_port}"]
            health_check = {{ path = "/healthz", interval = "1s" }}
            [[routes]]
            name = "all"
            match = {{ path_prefix = "/" }}
            upstream = "up"
            """))
        t0 = time.perf_counter()
        p = spawn([FASTGATE, "run", "-c", path], PROXY_CPU, env=dict(os.environ, RUST_LOG="warn"))
        while True:
            try:
                with socket.create_connection(("127.0.0.1", admin), timeout=0.5) as s:
                    s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if s.recv(16).startswith(b"HTTP/1.1 200"):
                        break
            except OSError:
                pass
            time.sleep(0.001)
        times.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.3)
        rss = proc_rss(server_pids(p)) / 2**20
        stop(p)
    stop(up)
    r = {"startup_ms": statistics.median(times), "rss_mib": rss}
    print(f"  start to ready (median of 5): {r['startup_ms']:.1f} ms, idle RSS {rss:.1f} MiB", flush=True)
    rows.append({"scenario": 0, "title": "start to ready (ms), idle RSS", "system": "fastgate", **r})


def ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else "–"


def markdown(rows):
    out = ["| # | scenario | system | req/s | P50 ms | P99 ms | CPU µs/req (rounds' range) | RSS MiB | vs nginx (req/s, CPU) | vs HAProxy (req/s, CPU) | vs direct |",
           "|---|---|---|---:|---:|---:|---:|---:|---|---|---|"]
    # rows compare within a scenario; scenario 12 has one comparison per offered rate
    group = lambda r: (r["scenario"], r["title"]) if r["scenario"] == 12 else r["scenario"]
    by = {}
    for r in rows:
        by.setdefault(group(r), {})[r["system"]] = r
    for r in rows:
        if r["scenario"] in (0, 10):
            continue
        ng = by[group(r)].get("nginx")
        di = by[group(r)].get("direct")
        vs_ng = (f"{ratio(r['rps'], ng['rps'])}, {ratio(r.get('cpu_us_per_req'), ng.get('cpu_us_per_req'))}"
                 if ng and r["system"].startswith(("fastgate", "bare", "haproxy")) else "")
        hp = by[group(r)].get("haproxy")
        vs_hp = (f"{ratio(r['rps'], hp['rps'])}, {ratio(r.get('cpu_us_per_req'), hp.get('cpu_us_per_req'))}"
                 if hp and r["system"].startswith("fastgate") else "")
        vs_di = ratio(r["rps"], di["rps"]) if di and r["system"] != "direct" else ""
        cpu = f"{r['cpu_us_per_req']:.1f}" if r.get("cpu_us_per_req") is not None else "–"
        if r.get("runs", 1) > 1 and r.get("cpu_us_per_req_min") is not None:
            cpu += f" ({r['cpu_us_per_req_min']:.1f}-{r['cpu_us_per_req_max']:.1f})"
        rss = f"{r['rss_mib']:.1f}" if r.get("rss_mib") is not None else "–"
        title = r["title"]
        if "body_bytes" in r:
            title += f" ({r['body_bytes']} B {r['encoding']})"
        if "front_door_share" in r:
            title += f" (front door {100 * r['front_door_share']:.0f}% of hits)"
        if "backend_requests" in r:
            title += f" (backend saw {100 * r['backend_requests'] / max(r['requests'], 1):.0f}%, {r.get('bytes_per_req', 0):.0f} B/resp)"
        out.append(f"| {r['scenario']} | {title} | {r['system']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {cpu} | {rss} | {vs_ng} | {vs_hp} | {vs_di} |")
    idle = [r for r in rows if r["scenario"] == 10]
    if idle:
        out += ["", "| # | scenario | system | RSS before MiB | RSS held MiB | KiB per connection | RSS after close MiB |",
                "|---|---|---|---:|---:|---:|---:|"]
        for r in idle:
            out.append(f"| 10 | {r['title']} | {r['system']} | {r['rss_base_mib']:.1f} | {r['rss_mib']:.1f} | {r['kib_per_conn']:.2f} | {r['rss_after_mib']:.1f} |")
    return "\n".join(out)


def main():
    started = time.time()
    rows = []
    try:
        print(f"fastgate bench: {platform.node() and 'this machine'}, {NCPU} cores, proxy on cpu {PROXY_CPU}, "
              f"load+upstream on cpu {LOAD_CPU}, {DURATION}s x {REPEATS} per point, wrk -c{CONNECTIONS}", flush=True)
        idle_and_startup(rows)
        proxied_scenarios(rows)
        wanted = os.environ.get("SCENARIOS")
        if not wanted or "6" in wanted.split(","):
            backend_scenario(rows)
    finally:
        cleanup()
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H%M")
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    path = os.path.join(ROOT, "bench", "results", f"{stamp}{'-quick' if QUICK else ''}.csv")
    keys = sorted({k for r in rows for k in r})
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    md = markdown(rows)
    with open(path.replace(".csv", ".md"), "w") as f:
        f.write(md + "\n")
    print()
    print(md)
    print(f"\nresults: {os.path.relpath(path, ROOT)} (+ .md), {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
