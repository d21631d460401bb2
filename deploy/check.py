#!/usr/bin/env python3
"""What a schema cannot see in deploy/: the checks a new user would otherwise learn from a
failed first apply. Run by deploy/check (from the repository root); exits 1 with one line per
problem.

Kubernetes, every pod template:
  - restricted Pod Security: runAsNonRoot, RuntimeDefault seccomp, no privilege escalation,
    every capability dropped, for every container; requests and a memory limit on each;
  - fastgate's user is the Dockerfile's numeric USER;
  - fastgate's memory limit covers its cache's max_size plus 64 MiB;
  - shutdown order: terminationGracePeriodSeconds covers fastgate's preStop sleep plus its
    shutdown_grace, and in a sidecar pod the backend's preStop waits for fastgate's probe port
    to close, so the backend outlives fastgate's drain.
Compose: every service has an image or a build, bind-mounted files exist, depends_on names
exist, and the collector's pipeline exporters are defined.
"""

import glob
import os
import re
import sys
import tomllib

import yaml

problems = []


def problem(where, what):
    problems.append(f"{where}: {what}")


def size_bytes(text):
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]i?B?|B)?\s*", text)
    if not m:
        raise ValueError(text)
    unit = (m.group(2) or "B").rstrip("B").rstrip("i")
    return int(m.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[unit]


def k8s_quantity(text):
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", str(text))
    if not m:
        raise ValueError(text)
    return int(m.group(1)) * {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}[m.group(2)]


def duration_s(text):
    m = re.fullmatch(r"(\d+)(ms|s|m)", text)
    n, unit = int(m.group(1)), m.group(2)
    return n / 1000 if unit == "ms" else n * 60 if unit == "m" else n


def dockerfile_user():
    for line in open("Dockerfile"):
        if line.startswith("USER "):
            return line.split()[1]
    return None


def check_kubernetes():
    user = dockerfile_user()
    if not user or not re.fullmatch(r"\d+:\d+", user):
        problem("Dockerfile", f"USER {user!r} is not numeric uid:gid: runAsNonRoot cannot verify it")
    for path in sorted(glob.glob("deploy/kubernetes/*.yaml")):
        docs = [d for d in yaml.safe_load_all(open(path)) if d]
        configs = {}
        for d in docs:
            if d["kind"] == "ConfigMap" and "fastgate.toml" in d.get("data", {}):
                configs[d["metadata"]["name"]] = tomllib.loads(d["data"]["fastgate.toml"])
        for d in docs:
            if d["kind"] != "Deployment":
                continue
            name = f"{path} {d['metadata']['name']}"
            spec = d["spec"]["template"]["spec"]
            pod_sc = spec.get("securityContext", {})
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            containers = {c["name"]: c for c in spec["containers"]}
            for c in spec["containers"]:
                where = f"{name} container {c['name']}"
                sc = {**pod_sc, **c.get("securityContext", {})}
                if not sc.get("runAsNonRoot"):
                    problem(where, "runAsNonRoot is not set (pod or container)")
                if sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                    problem(where, "no RuntimeDefault seccompProfile")
                if sc.get("allowPrivilegeEscalation") is not False:
                    problem(where, "allowPrivilegeEscalation is not false")
                if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                    problem(where, "capabilities are not all dropped")
                res = c.get("resources", {})
                if "requests" not in res or "memory" not in res.get("limits", {}):
                    problem(where, "no resource requests or memory limit")
            fg = next((c for c in spec["containers"] if "fastgate" in c["image"]), None)
            if not fg:
                continue
            where = f"{name} container {fg['name']}"
            sc = {**pod_sc, **fg.get("securityContext", {})}
            if user and f"{sc.get('runAsUser')}:{sc.get('runAsGroup')}" != user:
                problem(where, f"runAsUser:runAsGroup {sc.get('runAsUser')}:{sc.get('runAsGroup')} is not the image's USER {user}")
            mounts = [m for m in fg.get("volumeMounts", []) if m["mountPath"] == "/etc/fastgate"]
            cm = volumes.get(mounts[0]["name"], {}).get("configMap", {}).get("name") if mounts else None
            conf = configs.get(cm)
            if conf is None:
                problem(where, "its routes file is not a ConfigMap of this file")
                continue
            cache = size_bytes(conf.get("cache", {}).get("max_size", "256MiB"))
            limit = k8s_quantity(fg["resources"]["limits"]["memory"])
            if limit < cache + 64 * 2**20:
                problem(where, f"memory limit {limit >> 20} MiB < cache max_size {cache >> 20} MiB + 64 MiB")
            grace = duration_s(conf.get("server", {}).get("shutdown_grace", "30s"))
            pre = fg.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
            sleep = int(pre[1]) if len(pre) == 2 and pre[0] == "sleep" else 0
            total = spec.get("terminationGracePeriodSeconds", 30)
            if total < sleep + grace + 5:
                problem(where, f"terminationGracePeriodSeconds {total} < preStop {sleep} s + shutdown_grace {grace:.0f} s + 5 s")
            others = [c for c in spec["containers"] if c is not fg and "configmap-reload" not in c["image"]]
            probe_port = conf.get("server", {}).get("probe_listen", "").rsplit(":", 1)[-1]
            for other in others:
                hook = " ".join(other.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", []))
                if probe_port not in hook or "create_connection" not in hook:
                    problem(f"{name} container {other['name']}",
                            f"its preStop does not wait for fastgate (probe port {probe_port}) to exit: it would stop during the drain")


def check_compose(path):
    doc = yaml.safe_load(open(path))
    services = doc.get("services", {})
    for name, svc in services.items():
        where = f"{path} service {name}"
        if "image" not in svc and "build" not in svc:
            problem(where, "neither image nor build")
        deps = svc.get("depends_on", [])
        for dep in deps if isinstance(deps, list) else deps.keys():
            if dep not in services:
                problem(where, f"depends_on unknown service {dep}")
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith(".") and not os.path.exists(os.path.join("deploy", src)):
                problem(where, f"mounts {src}, which does not exist")
    col = yaml.safe_load(open("deploy/otel-collector.yaml"))
    for pipeline in col["service"]["pipelines"].values():
        for e in pipeline["exporters"]:
            if e not in col["exporters"]:
                problem("deploy/otel-collector.yaml", f"pipeline exporter {e} is not defined")


check_kubernetes()
for compose in sorted(glob.glob("deploy/docker-compose*.yml")):
    check_compose(compose)
for p in problems:
    print(p)
print(f"deploy/check: {len(problems)} problem(s)")
sys.exit(1 if problems else 0)
