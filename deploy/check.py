#!/usr/bin/env python3
"""Check the deployment files in deploy/ against each other and against a real node.

    deploy/check.py                       start target/debug/trackmesh on 127.0.0.1, read /metrics
    deploy/check.py --bin PATH            the same with another node binary
    deploy/check.py --metrics FILE|URL    check against a saved /metrics text or a running node
    deploy/check.py --prometheus URL      also run every query on a Prometheus scraping nodes

What it checks:
  - compose.yaml and every YAML file under kubernetes/ parse (multi-document) and hang together
    (ports, seeds, probes, Secret keys, Service selectors, grace period > drain timeout);
  - prometheus/*.yml: scrape configs, rule files with groups/rules (alert, expr, for, labels,
    annotations); `promtool check` too when promtool is on PATH;
  - grafana/trackmesh.json parses and is a provisionable dashboard;
  - every metric that a dashboard query or an alert expression uses exists in the node's
    /metrics (histogram _bucket/_sum/_count map to the histogram), and the labels they select or
    group by exist; alerts may also use Prometheus' `up`;
  - the TRACKMESH_* variables and TOML keys used anywhere name real flags of the node
    (from `trackmesh --help`, when a binary is at hand);
  - systemd/trackmesh.service has the hardening directives (and `systemd-analyze verify` passes,
    when available), and the Dockerfile has its essentials.

Needs Python 3.11+ (tomllib) and PyYAML (deploy/check.sh installs it when missing).
Exits 0 when all is well, 1 on any error (each printed as "error: ..."), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

try:
    import yaml
except ImportError:  # pragma: no cover
    sys.exit("error: PyYAML is missing: pip install pyyaml (deploy/check.sh does it for you)")

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent

# Labels Prometheus or our scrape configs attach to every series.
TARGET_LABELS = {"job", "instance", "node", "node_region", "pod"}
# Flags of the operations contract (issue 4) that a binary built before it may not have yet.
PENDING_FLAGS = {"drain-timeout"}
# Flags that exist but are not settings (no env variable / TOML key).
NOT_SETTINGS = {"help", "version", "config"}

PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan", "start", "end",
}
PROMQL_AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
    "topk", "quantile", "limitk", "limit_ratio",
}
PROMQL_FUNCTIONS = PROMQL_AGGREGATIONS | {
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
    "day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp",
    "floor", "histogram_avg", "histogram_count", "histogram_fraction", "histogram_quantile",
    "histogram_stddev", "histogram_stdvar", "histogram_sum", "holt_winters",
    "double_exponential_smoothing", "hour", "idelta", "increase", "irate", "label_join",
    "label_replace", "ln", "log2", "log10", "minute", "month", "predict_linear", "rate", "resets",
    "round", "scalar", "sgn", "sort", "sort_desc", "sort_by_label", "sort_by_label_desc", "sqrt",
    "time", "timestamp", "vector", "year", "avg_over_time", "min_over_time", "max_over_time",
    "sum_over_time", "count_over_time", "quantile_over_time", "stddev_over_time",
    "stdvar_over_time", "last_over_time", "present_over_time", "mad_over_time", "acos", "acosh",
    "asin", "asinh", "atan", "atanh", "cos", "cosh", "sin", "sinh", "tan", "tanh", "deg", "rad",
    "pi", "atan2",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


class Report:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def error(self, where: str, msg: str) -> None:
        self.errors.append(f"{where}: {msg}")
        print(f"error: {where}: {msg}")

    def warn(self, where: str, msg: str) -> None:
        self.warnings.append(f"{where}: {msg}")
        print(f"warning: {where}: {msg}")

    def ok(self, msg: str) -> None:
        print(f"ok: {msg}")


def rel(p: Path) -> str:
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(p)


# ---------------------------------------------------------------------------------------------
# The node: start it, read /metrics, read its flags.


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    # Never go through a proxy: the node is on 127.0.0.1.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def start_node(binary: Path) -> tuple[subprocess.Popen, dict[str, str]]:
    args = [
        str(binary),
        "--http", "127.0.0.1:0",
        "--media", "127.0.0.1:0",
        "--gossip", f"127.0.0.1:{free_udp_port()}",
        "--relay", "127.0.0.1:0",
        "--app", "check:check-secret",
        "--cluster-secret", "deploy-check-secret",
        "--admin-token", "deploy-check-token",
        "--region", "check",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKMESH_")}
    env.setdefault("RUST_LOG", "warn")
    # stderr to a file: a pipe nobody reads could fill up and stall the node.
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True, env=env,
                            stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("trackmesh ready "):
            fields = dict(kv.split("=", 1) for kv in line.split()[2:] if "=" in kv)
            return proc, fields
    stop_node(proc)
    log.seek(0)
    err = log.read()
    raise RuntimeError(f"{binary} printed no ready line within 30 s (exit {proc.returncode}); "
                       f"stderr:\n{err[-2000:]}")


def stop_node(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def node_flags(binary: Path | None) -> set[str] | None:
    if binary is None or not binary.exists():
        return None
    out = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=30,
                         env={k: v for k, v in os.environ.items()
                              if not k.startswith("TRACKMESH_")})
    flags = set(re.findall(r"--([a-z][a-z0-9-]*)", out.stdout)) - NOT_SETTINGS
    return flags if "http" in flags else None  # not a trackmesh binary otherwise


# ---------------------------------------------------------------------------------------------
# Prometheus text format.


class Metrics:
    """What a /metrics text exposes: sample names with their label names and values."""

    def __init__(self, text: str) -> None:
        self.types: dict[str, str] = {}  # family name -> type
        self.samples: dict[str, dict[str, set[str]]] = {}  # sample name -> label -> values
        sample_re = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+\S+")
        label_re = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"')
        for line in text.splitlines():
            line = line.strip()
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split()
                if len(parts) >= 4 and parts[1] == "TYPE":
                    self.types[parts[2]] = parts[3]
                continue
            m = sample_re.match(line)
            if not m:
                continue
            labels = self.samples.setdefault(m.group(1), {})
            for k, v in label_re.findall(m.group(3) or ""):
                labels.setdefault(k, set()).add(v)

    def resolve(self, name: str) -> tuple[str | None, str]:
        """The family a PromQL metric name selects, and a reason when it selects nothing."""
        if name in self.samples:
            for suf in HISTOGRAM_SUFFIXES:
                base = name[: -len(suf)] if name.endswith(suf) else None
                if base and self.types.get(base) in ("histogram", "summary"):
                    return base, ""
            return name, ""
        typ = self.types.get(name)
        if typ in ("histogram", "summary"):
            return None, (f"{name} is a {typ}: query {name}_bucket, {name}_sum or {name}_count")
        if typ is not None:
            return None, f"{name} is declared (# TYPE {typ}) but has no samples in /metrics"
        for suf in HISTOGRAM_SUFFIXES:
            if name.endswith(suf) and self.types.get(name[: -len(suf)]) == "histogram":
                return None, f"histogram {name[: -len(suf)]} has no {suf} samples"
        return None, "not in /metrics"

    def labels_of(self, name: str) -> dict[str, set[str]]:
        return self.samples.get(name, {})

    def names(self) -> set[str]:
        return set(self.samples) | set(self.types)


# ---------------------------------------------------------------------------------------------
# A small PromQL scanner: enough to find metric names, their label matchers and grouping labels.


class Selector:
    def __init__(self, name: str | None, matchers: list[tuple[str, str, str]]) -> None:
        self.name = name
        self.matchers = matchers


def scan_promql(expr: str) -> tuple[list[Selector], set[str], list[str]]:
    """Returns (selectors, grouping labels, problems)."""
    problems: list[str] = []
    # Grafana's variables: ranges become a duration, anything else a plain word.
    expr = re.sub(r"\$__(rate_)?interval|\$__range", "5m", expr)
    expr = re.sub(r"\$\{?(\w+)(:\w+)?\}?", r"\1", expr)
    selectors: list[Selector] = []
    grouping: set[str] = set()
    i, n = 0, len(expr)

    def skip_ws(j: int) -> int:
        while j < n and expr[j].isspace():
            j += 1
        return j

    def read_string(j: int) -> int:
        q = expr[j]
        j += 1
        while j < n and expr[j] != q:
            j += 2 if expr[j] == "\\" and q != "`" else 1
        return j + 1

    def read_matchers(j: int) -> tuple[list[tuple[str, str, str]], int]:
        # expr[j] == "{"
        j += 1
        out = []
        while True:
            j = skip_ws(j)
            if j >= n:
                problems.append("unclosed '{'")
                return out, j
            if expr[j] == "}":
                return out, j + 1
            if expr[j] == ",":
                j += 1
                continue
            m = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*').match(expr, j)
            if not m or m.end() >= n or expr[m.end()] not in "\"'`":
                problems.append(f"cannot read label matcher at {expr[j:j + 30]!r}")
                return out, n
            end = read_string(m.end())
            out.append((m.group(1), m.group(2), expr[m.end() + 1: end - 1]))
            j = end

    ident_re = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
    num_re = re.compile(r"(0x[0-9a-fA-F]+|\d+(\.\d*)?([eE][+-]?\d+)?)([a-zA-Z]+\d*)*")
    while i < n:
        c = expr[i]
        if c.isspace():
            i += 1
        elif c in "\"'`":
            i = read_string(i)
        elif c == "[":
            close = expr.find("]", i)
            i = n if close < 0 else close + 1
        elif c == "{":
            matchers, i = read_matchers(i)
            name = next((v for k, op, v in matchers if k == "__name__" and op == "="), None)
            selectors.append(Selector(name, matchers))
        elif c.isdigit() or (c == "." and i + 1 < n and expr[i + 1].isdigit()):
            m = num_re.match(expr, i)
            i = m.end() if m else i + 1
        elif ident_re.match(expr, i):
            m = ident_re.match(expr, i)
            assert m is not None
            word = m.group(0)
            j = skip_ws(m.end())
            if word in ("by", "without", "on", "ignoring", "group_left", "group_right"):
                if j < n and expr[j] == "(":
                    close = expr.find(")", j)
                    if close < 0:
                        problems.append(f"unclosed '(' after {word}")
                        return selectors, grouping, problems
                    for lab in expr[j + 1: close].split(","):
                        if lab.strip():
                            grouping.add(lab.strip())
                    i = close + 1
                else:
                    i = j
            elif word in PROMQL_KEYWORDS or word in PROMQL_AGGREGATIONS:
                i = m.end()
            elif j < n and expr[j] == "(":
                if word not in PROMQL_FUNCTIONS:
                    problems.append(f"unknown PromQL function {word}()")
                i = m.end()
            else:
                if j < n and expr[j] == "{":
                    matchers, i = read_matchers(j)
                else:
                    matchers, i = [], m.end()
                selectors.append(Selector(word, matchers))
        else:
            i += 1
    return selectors, grouping, problems


def grafana_query_expr(q: str) -> str:
    """Grafana's template-variable functions around a PromQL expression."""
    q = q.strip()
    m = re.fullmatch(r"label_values\((.*),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)", q, re.S)
    if m:
        return m.group(1)
    m = re.fullmatch(r"label_values\(\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)", q)
    if m:
        return ""
    m = re.fullmatch(r"(query_result|metrics)\((.*)\)", q, re.S)
    if m:
        return m.group(2) if m.group(1) == "query_result" else ""
    return q


# (where, expr, kind) of every query checked, for --prometheus.
ALL_EXPRS: list[tuple[str, str, str]] = []


def check_expr(rep: Report, where: str, expr: str, metrics: Metrics | None,
               allow: set[str], used: set[str], kind: str = "panel") -> None:
    ALL_EXPRS.append((where, expr, kind))
    selectors, grouping, problems = scan_promql(expr)
    for p in problems:
        rep.error(where, f"{p} in {expr!r}")
    if not any(s.name for s in selectors):
        rep.error(where, f"no metric in {expr!r}")
    label_pool = set(TARGET_LABELS)
    for s in selectors:
        if s.name is None:
            rep.error(where, f"selector without a metric name in {expr!r}")
            continue
        if s.name in allow:
            continue
        if not s.name.startswith("trackmesh_"):
            rep.error(where, f"metric {s.name} is not a trackmesh metric")
            continue
        used.add(s.name)
        if metrics is None:
            continue
        fam, why = metrics.resolve(s.name)
        if fam is None:
            rep.error(where, f"metric {s.name}: {why}")
            continue
        labels = metrics.labels_of(s.name)
        label_pool |= set(labels)
        for lab, op, val in s.matchers:
            if lab == "__name__" or lab in TARGET_LABELS:
                continue
            if lab not in labels:
                rep.error(where, f"{s.name} has no label {lab!r} (it has: "
                                 f"{', '.join(sorted(labels)) or 'none'})")
            elif op == "=" and val not in labels[lab]:
                rep.warn(where, f"{s.name}{{{lab}={val!r}}}: no such series in /metrics yet "
                                f"(values seen: {', '.join(sorted(labels[lab]))})")
    if metrics is not None:
        for lab in grouping - label_pool:
            rep.error(where, f"groups by label {lab!r}, which none of its metrics has")


# ---------------------------------------------------------------------------------------------
# Files.


def load_yaml_docs(rep: Report, path: Path) -> list:
    try:
        with path.open() as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
    except (OSError, yaml.YAMLError) as e:
        rep.error(rel(path), f"does not parse: {e}")
        return []
    if not docs:
        rep.error(rel(path), "is empty")
    return docs


def parse_duration(s: str | int | float) -> float | None:
    if isinstance(s, (int, float)):
        return float(s)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", str(s))
    if not m:
        return None
    return float(m.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[m.group(2)]


def env_flag(var: str) -> str:
    return var[len("TRACKMESH_"):].lower().replace("_", "-")


def check_setting_names(rep: Report, where: str, names: set[str], flags: set[str] | None) -> None:
    if flags is None:
        return
    for name in sorted(names):
        if name in flags:
            continue
        if name in PENDING_FLAGS:
            rep.warn(where, f"--{name} is not a flag of this node binary yet (operations contract)")
        else:
            rep.error(where, f"--{name} is not a flag of the node (from {where}); "
                             f"flags: {', '.join(sorted(flags))}")


def check_toml(rep: Report, flags: set[str] | None) -> float | None:
    path = DEPLOY / "systemd/trackmesh.toml"
    try:
        cfg = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        rep.error(rel(path), f"does not parse: {e}")
        return None
    check_setting_names(rep, rel(path), set(cfg), flags)
    for secret in ("app", "cluster-secret", "admin-token"):
        if secret in cfg:
            rep.error(rel(path), f"{secret} is a secret: keep it in the EnvironmentFile")
    rep.ok(f"{rel(path)} parses ({len(cfg)} keys)")
    return parse_duration(cfg.get("drain-timeout", "60s"))


def check_systemd(rep: Report, drain: float | None) -> None:
    path = DEPLOY / "systemd/trackmesh.service"
    try:
        text = path.read_text()
    except OSError as e:
        rep.error(rel(path), str(e))
        return
    directives: dict[str, list[str]] = {}
    section = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if "=" in line:
            k, v = line.split("=", 1)
            directives.setdefault(f"{section}.{k.strip()}", []).append(v.strip())
    want = {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "PrivateDevices": "yes", "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter": "@system-service", "MemoryDenyWriteExecute": "yes",
        "LockPersonality": "yes", "RestrictNamespaces": "yes", "Restart": "on-failure",
        "KillSignal": "SIGTERM",
    }
    for k, v in want.items():
        got = directives.get(f"Service.{k}")
        if got is None or v not in got:
            rep.error(rel(path), f"[Service] needs {k}={v} (has {got})")
    for k in ("LimitNOFILE", "EnvironmentFile", "ExecStart", "TimeoutStopSec"):
        if f"Service.{k}" not in directives:
            rep.error(rel(path), f"[Service] needs {k}=")
    if not ({"Service.DynamicUser", "Service.User"} & set(directives)):
        rep.error(rel(path), "[Service] needs DynamicUser=yes or User=")
    stop = parse_duration(directives.get("Service.TimeoutStopSec", ["0"])[-1])
    if drain is not None and (stop is None or stop <= drain):
        rep.error(rel(path), f"TimeoutStopSec ({stop}s) must exceed the drain timeout ({drain}s)")
    if shutil.which("systemd-analyze"):
        out = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                             text=True, timeout=60)
        for line in (out.stdout + out.stderr).splitlines():
            # The binary is not installed on the checking machine.
            if line.strip() and "is not executable" not in line and "No such file" not in line:
                rep.error(rel(path), f"systemd-analyze verify: {line.strip()}")
    rep.ok(f"{rel(path)} checked")


def check_dockerfile(rep: Report) -> None:
    path = DEPLOY / "Dockerfile"
    try:
        text = path.read_text()
    except OSError as e:
        rep.error(rel(path), str(e))
        return
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    if len(froms) < 2:
        rep.error(rel(path), "should be multi-stage (builder + runtime)")
    elif not froms[0].startswith("rust:1-bookworm"):
        rep.error(rel(path), f"builder should be rust:1-bookworm, is {froms[0]}")
    if not re.search(r"cargo build --release --bin trackmesh --locked", text):
        rep.error(rel(path), "needs `cargo build --release --bin trackmesh --locked`")
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    if not users or users[-1].split(":")[0] in ("root", "0"):
        rep.error(rel(path), "the runtime stage must run as a non-root USER")
    exposed = set(" ".join(re.findall(r"^EXPOSE\s+(.+)$", text, re.M)).split())
    for port in ("7700/tcp", "7701/udp", "7702/udp", "7703/udp"):
        if port not in exposed:
            rep.error(rel(path), f"EXPOSE {port} missing")
    if not re.search(r'^ENTRYPOINT\s+\[\s*"[^"]*trackmesh"', text, re.M):
        rep.error(rel(path), "ENTRYPOINT should be the trackmesh binary (exec form)")
    rep.ok(f"{rel(path)} checked (not built: needs a Docker engine)")


def check_compose(rep: Report, flags: set[str] | None) -> None:
    path = DEPLOY / "compose.yaml"
    docs = load_yaml_docs(rep, path)
    if not docs:
        return
    where = rel(path)
    services = docs[0].get("services") or {}
    nodes = {}
    env_names: set[str] = set()
    for name, svc in services.items():
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
        env_names |= {k for k in env if k.startswith("TRACKMESH_")}
        if "TRACKMESH_NODE_ID" in env:
            nodes[name] = env
        for vol in svc.get("volumes") or []:
            src = vol.split(":", 1)[0] if isinstance(vol, str) else vol.get("source", "")
            if src.startswith(("./", "../")) and not (DEPLOY / src).exists():
                rep.error(where, f"service {name}: volume source {src} does not exist")
        build = svc.get("build")
        if isinstance(build, dict):
            ctx = DEPLOY / build.get("context", ".")
            if not (ctx / build.get("dockerfile", "Dockerfile")).exists():
                rep.error(where, f"service {name}: Dockerfile {build.get('dockerfile')} not found "
                                 f"in context {build.get('context')}")
    check_setting_names(rep, where, {env_flag(v) for v in env_names}, flags)
    if len(nodes) < 3:
        rep.error(where, f"expected 3 trackmesh nodes, found {sorted(nodes)}")
    regions = {e.get("TRACKMESH_REGION") for e in nodes.values()}
    if len(regions) < 2:
        rep.error(where, f"expected 2 regions, found {regions}")
    gossip = {e.get("TRACKMESH_GOSSIP"): n for n, e in nodes.items()}
    seen_addrs: dict[str, str] = {}
    for n, e in nodes.items():
        for key in ("TRACKMESH_HTTP", "TRACKMESH_MEDIA", "TRACKMESH_GOSSIP", "TRACKMESH_RELAY"):
            addr = str(e.get(key, ""))
            if not addr:
                rep.error(where, f"{n}: {key} is not set")
            elif addr in seen_addrs:
                rep.error(where, f"{n}: {key}={addr} clashes with {seen_addrs[addr]}")
            else:
                seen_addrs[addr] = f"{n} {key}"
        seeds = [s for s in str(e.get("TRACKMESH_SEED", "")).split(",") if s]
        if not seeds:
            rep.error(where, f"{n}: no TRACKMESH_SEED")
        for s in seeds:
            if s not in gossip:
                rep.error(where, f"{n}: seed {s} is no node's TRACKMESH_GOSSIP")
        for secret in ("TRACKMESH_APP", "TRACKMESH_CLUSTER_SECRET", "TRACKMESH_ADMIN_TOKEN"):
            if not str(e.get(secret, "")).startswith("${"):
                rep.error(where, f"{n}: {secret} should come from the environment (${{...}})")
        drain = parse_duration(re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1",
                                      str(e.get("TRACKMESH_DRAIN_TIMEOUT", "60s"))))
        grace = parse_duration(services[n].get("stop_grace_period", "10s"))
        if drain is not None and grace is not None and grace <= drain:
            rep.error(where, f"{n}: stop_grace_period {grace}s must exceed the drain timeout")
    if "prometheus" not in services:
        rep.warn(where, "no prometheus service")
    rep.ok(f"{where} parses: services {', '.join(services)}")


def check_kubernetes(rep: Report, flags: set[str] | None) -> None:
    kdir = DEPLOY / "kubernetes"
    files = sorted(list(kdir.glob("*.yaml")) + list(kdir.glob("*.yml")))
    if not files:
        rep.error(rel(kdir), "no YAML files")
        return
    objs: list[tuple[Path, dict]] = []
    for f in files:
        for d in load_yaml_docs(rep, f):
            if not isinstance(d, dict):
                rep.error(rel(f), "a document is not a mapping")
                continue
            objs.append((f, d))
    by_kind: dict[str, list[dict]] = {}
    for f, d in objs:
        for key in ("apiVersion", "kind"):
            if key not in d:
                rep.error(rel(f), f"a document has no {key}")
        kind = d.get("kind", "?")
        by_kind.setdefault(kind, []).append(d)
        if kind == "Kustomization":
            for r in d.get("resources", []):
                if not (f.parent / r).exists():
                    rep.error(rel(f), f"resource {r} does not exist")
            listed = set(d.get("resources", []))
            for other in files:
                if other != f and other.name not in listed:
                    rep.warn(rel(f), f"{other.name} is not listed in resources")
            continue
        meta = d.get("metadata") or {}
        if not meta.get("name"):
            rep.error(rel(f), f"{kind} has no metadata.name")
        if kind != "Namespace" and meta.get("namespace") != "trackmesh":
            rep.error(rel(f), f"{kind}/{meta.get('name')} is not in namespace trackmesh")
    secrets = {s["metadata"]["name"]: set((s.get("stringData") or {}) | (s.get("data") or {}))
               for s in by_kind.get("Secret", [])}
    cms = {c["metadata"]["name"]: c.get("data") or {} for c in by_kind.get("ConfigMap", [])}
    env_names: set[str] = set()
    for cm in cms.values():
        env_names |= {k for k in cm if k.startswith("TRACKMESH_")}
    dss = by_kind.get("DaemonSet", [])
    if not dss:
        rep.error(rel(kdir), "no DaemonSet")
    pod_labels: dict = {}
    for ds in dss:
        name = f"DaemonSet/{ds['metadata']['name']}"
        tpl = ds.get("spec", {}).get("template", {})
        pod = tpl.get("spec", {})
        pod_labels = tpl.get("metadata", {}).get("labels", {})
        sel = ds.get("spec", {}).get("selector", {}).get("matchLabels", {})
        if not sel or any(pod_labels.get(k) != v for k, v in sel.items()):
            rep.error(name, "spec.selector.matchLabels do not match the pod template labels")
        if pod.get("hostNetwork") is not True:
            rep.error(name, "needs hostNetwork: true (WebRTC UDP straight to the host)")
        if pod.get("dnsPolicy") != "ClusterFirstWithHostNet":
            rep.error(name, "needs dnsPolicy: ClusterFirstWithHostNet")
        drain = 60.0
        for cm in cms.values():
            drain = parse_duration(cm.get("TRACKMESH_DRAIN_TIMEOUT", drain)) or drain
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if grace <= drain:
            rep.error(name, f"terminationGracePeriodSeconds {grace} must exceed the drain "
                            f"timeout {drain}s")
        for c in pod.get("containers", []):
            cname = f"{name} container {c.get('name')}"
            ports = {p.get("name"): p for p in c.get("ports", [])}
            for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
                got = (c.get(probe) or {}).get("httpGet", {})
                if got.get("path") != path:
                    rep.error(cname, f"{probe} must GET {path} (has {got.get('path')})")
                if got.get("port") not in ports and not isinstance(got.get("port"), int):
                    rep.error(cname, f"{probe} port {got.get('port')} is no container port")
            for e in c.get("env", []):
                if e.get("name", "").startswith("TRACKMESH_"):
                    env_names.add(e["name"])
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref and ref.get("key") not in secrets.get(ref.get("name"), set()):
                    rep.error(cname, f"env {e['name']}: Secret {ref.get('name')} has no key "
                                     f"{ref.get('key')}")
            for ef in c.get("envFrom", []):
                ref = ef.get("configMapRef")
                if ref and ref.get("name") not in cms:
                    rep.error(cname, f"envFrom ConfigMap {ref.get('name')} not defined")
            for secret in ("TRACKMESH_APP", "TRACKMESH_CLUSTER_SECRET", "TRACKMESH_ADMIN_TOKEN"):
                e = next((e for e in c.get("env", []) if e.get("name") == secret), None)
                if not e or "secretKeyRef" not in (e.get("valueFrom") or {}):
                    rep.error(cname, f"{secret} must come from a Secret")
            for p in c.get("ports", []):
                if p.get("hostPort") not in (None, p.get("containerPort")):
                    rep.error(cname, f"port {p.get('name')}: hostPort must equal containerPort")
    check_setting_names(rep, rel(kdir), {env_flag(v) for v in env_names}, flags)
    svcs = by_kind.get("Service", [])
    if not any(s.get("spec", {}).get("clusterIP") == "None" for s in svcs):
        rep.error(rel(kdir), "no headless Service (clusterIP: None) for the gossip seeds")
    container_ports = {p.get("name") for ds in dss for c in
                       ds["spec"]["template"]["spec"].get("containers", [])
                       for p in c.get("ports", [])}
    for s in svcs:
        name = f"Service/{s['metadata']['name']}"
        sel = s.get("spec", {}).get("selector", {})
        if not sel or any(pod_labels.get(k) != v for k, v in sel.items()):
            rep.error(name, f"selector {sel} selects no trackmesh pod")
        for p in s.get("spec", {}).get("ports", []):
            tp = p.get("targetPort", p.get("port"))
            if isinstance(tp, str) and tp not in container_ports:
                rep.error(name, f"targetPort {tp} is no container port")
    seeds = " ".join(str(cm.get("TRACKMESH_SEED", "")) for cm in cms.values())
    for s in svcs:
        if s.get("spec", {}).get("clusterIP") == "None" and s["metadata"]["name"] not in seeds:
            rep.error(rel(kdir), f"TRACKMESH_SEED does not name the headless Service "
                                 f"{s['metadata']['name']}")
    if (kdir / "kustomization.yaml").exists() and shutil.which("kubectl"):
        out = subprocess.run(["kubectl", "kustomize", str(kdir)], capture_output=True, text=True,
                             timeout=60)
        if out.returncode != 0:
            rep.error(rel(kdir), f"kubectl kustomize failed: {out.stderr.strip()}")
    rep.ok(f"{rel(kdir)}: {len(objs)} documents in {len(files)} files parse "
           f"({', '.join(sorted(by_kind))})")


def promtool(rep: Report, where: str, *args: str) -> None:
    if not shutil.which("promtool"):
        return
    out = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        text = (out.stdout + out.stderr).strip()
        if "kubernetes_sd_configs not found" in text:
            # Debian's prometheus package is built without Kubernetes service discovery.
            rep.warn(where, "promtool here lacks kubernetes_sd_configs; skipped its check")
            return
        rep.error(where, f"promtool {' '.join(args)}:\n{text}")
    else:
        rep.ok(f"promtool {args[0]} {args[1]} {rel(Path(args[-1]))}")


def check_prometheus(rep: Report, metrics: Metrics | None, used: set[str]) -> None:
    pdir = DEPLOY / "prometheus"
    configs = [p for p in sorted(pdir.glob("*.yml")) if p.name != "alerts.yml"]
    for cfg_path in configs:
        where = rel(cfg_path)
        docs = load_yaml_docs(rep, cfg_path)
        if not docs:
            continue
        cfg = docs[0]
        jobs = cfg.get("scrape_configs") or []
        if not jobs:
            rep.error(where, "no scrape_configs")
        names = [j.get("job_name") for j in jobs]
        if "trackmesh" not in names:
            rep.error(where, "no scrape job named trackmesh (the alerts select job=\"trackmesh\")")
        for j in jobs:
            if not j.get("job_name"):
                rep.error(where, "a scrape config has no job_name")
            if not (j.get("static_configs") or any(k.endswith("_sd_configs") for k in j)):
                rep.error(where, f"job {j.get('job_name')} has no targets")
        for rf in cfg.get("rule_files") or []:
            if not (cfg_path.parent / rf).exists():
                rep.error(where, f"rule file {rf} does not exist")
        promtool(rep, where, "check", "config", str(cfg_path))
        rep.ok(f"{where} parses: jobs {', '.join(map(str, names))}")

    path = pdir / "alerts.yml"
    where = rel(path)
    docs = load_yaml_docs(rep, path)
    if not docs:
        return
    groups = docs[0].get("groups") if isinstance(docs[0], dict) else None
    if not groups:
        rep.error(where, "no groups")
        return
    seen: set[str] = set()
    count = 0
    for g in groups:
        if not g.get("name"):
            rep.error(where, "a group has no name")
        for r in g.get("rules") or []:
            count += 1
            name = r.get("alert") or r.get("record")
            rwhere = f"{where} {name}"
            if not r.get("alert"):
                rep.error(where, f"rule {r.get('record') or r} is not an alert")
                continue
            if name in seen:
                rep.error(rwhere, "duplicate alert name")
            seen.add(name)
            if not isinstance(r.get("expr"), str) or not r["expr"].strip():
                rep.error(rwhere, "no expr")
                continue
            if "for" in r and parse_duration(r["for"]) is None:
                rep.error(rwhere, f"bad 'for' duration {r['for']!r}")
            if not (r.get("labels") or {}).get("severity"):
                rep.error(rwhere, "no labels.severity")
            if not (r.get("annotations") or {}).get("summary"):
                rep.error(rwhere, "no annotations.summary")
            check_expr(rep, rwhere, r["expr"], metrics, {"up"}, used, kind="alert")
        if not g.get("rules"):
            rep.error(where, f"group {g.get('name')} has no rules")
    promtool(rep, where, "check", "rules", str(path))
    rep.ok(f"{where}: {len(groups)} groups, {count} alerts")


def check_grafana(rep: Report, metrics: Metrics | None, used: set[str]) -> None:
    path = DEPLOY / "grafana/trackmesh.json"
    where = rel(path)
    try:
        dash = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        rep.error(where, f"does not parse: {e}")
        return
    if "dashboard" in dash:
        rep.error(where, "wrapped in {\"dashboard\": ...}: file provisioning wants the bare model")
        dash = dash["dashboard"]
    for key in ("title", "uid", "panels", "schemaVersion"):
        if key not in dash:
            rep.error(where, f"no {key}")
    variables = {v.get("name"): v for v in (dash.get("templating") or {}).get("list", [])}
    exprs: list[tuple[str, str]] = []
    for name, v in variables.items():
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query", "") if isinstance(q, dict) else (q or "")
            e = grafana_query_expr(q)
            if e:
                exprs.append((f"variable ${name}", e))
    panels: list[dict] = []

    def walk(ps: list[dict]) -> None:
        for p in ps:
            panels.append(p)
            walk(p.get("panels") or [])

    walk(dash.get("panels") or [])
    ids: set = set()
    for p in panels:
        pwhere = f"panel {p.get('id')} {p.get('title')!r}"
        if p.get("id") in ids:
            rep.error(where, f"{pwhere}: duplicate id")
        ids.add(p.get("id"))
        if "gridPos" not in p:
            rep.error(where, f"{pwhere}: no gridPos")
        if p.get("type") == "row":
            continue
        targets = p.get("targets") or []
        if not targets:
            rep.error(where, f"{pwhere}: no targets")
        for t in targets:
            ds = t.get("datasource") or p.get("datasource") or {}
            uid = ds.get("uid", "") if isinstance(ds, dict) else str(ds)
            m = re.fullmatch(r"\$\{?(\w+)\}?", uid or "")
            if m and m.group(1) not in variables:
                rep.error(where, f"{pwhere}: datasource variable {uid} is not defined")
            if not t.get("expr"):
                rep.error(where, f"{pwhere}: target {t.get('refId')} has no expr")
                continue
            exprs.append((f"{pwhere} {t.get('refId')}", t["expr"]))
    for w, e in exprs:
        check_expr(rep, f"{where} {w}", e, metrics, set(), used,
                   kind="variable" if w.startswith("variable") else "panel")
    rep.ok(f"{where}: {len(panels)} panels, {len(exprs)} queries")


def evaluate_on_prometheus(rep: Report, base: str) -> None:
    """Runs every query against a Prometheus that scrapes trackmesh nodes."""
    base = base.rstrip("/")
    empty = 0
    for where, expr, kind in ALL_EXPRS:
        q = expr.replace("$__rate_interval", "1m").replace("$__interval", "1m")
        q = re.sub(r"\$\{?(job|instance)\}?", ".*", q)
        url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": q})
        try:
            status, body = http_get(url, timeout=30)
            answer = json.loads(body)
        except (OSError, ValueError) as e:
            rep.error("prometheus", f"cannot query {base}: {e}")
            return
        if answer.get("status") != "success":
            rep.error(where, f"Prometheus rejects the query: {answer.get('error')} ({q!r})")
        elif not answer["data"]["result"] and kind != "alert":
            empty += 1
            print(f"note: {where}: no data yet")
    try:
        _, body = http_get(f"{base}/api/v1/rules", timeout=30)
        for g in json.loads(body)["data"]["groups"]:
            for r in g["rules"]:
                if r.get("health") not in ("ok", "unknown"):
                    rep.error(f"rule {r.get('name')}", f"health {r.get('health')}: "
                                                       f"{r.get('lastError')}")
    except (OSError, ValueError, KeyError) as e:
        rep.error("prometheus", f"cannot read {base}/api/v1/rules: {e}")
    rep.ok(f"{len(ALL_EXPRS)} queries evaluated on {base} ({empty} without data yet)")


# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--metrics", help="a /metrics text file, or an http:// URL of a running node's "
                                      "/metrics, instead of starting a node")
    ap.add_argument("--bin", type=Path,
                    default=Path(os.environ.get("TRACKMESH_BIN", ROOT / "target/debug/trackmesh")),
                    help="node binary to start (default: $TRACKMESH_BIN or target/debug/trackmesh)")
    ap.add_argument("--prometheus", metavar="URL",
                    help="also run every dashboard query and alert expression on this Prometheus "
                         "(which scrapes trackmesh nodes), and read its rules' health")
    opts = ap.parse_args()
    rep = Report()

    binary: Path | None = opts.bin if opts.bin.exists() else None
    text = None
    source = ""
    if opts.metrics:
        if re.match(r"https?://", opts.metrics):
            try:
                http_get(opts.metrics)  # so that the HTTP metrics have a series for /metrics
                status, text = http_get(opts.metrics)
            except OSError as e:
                rep.error("metrics", f"cannot fetch {opts.metrics}: {e}")
                status = 0
            if status != 200:
                rep.error("metrics", f"GET {opts.metrics} answered {status}")
                text = None
        else:
            try:
                text = Path(opts.metrics).read_text()
            except OSError as e:
                rep.error("metrics", str(e))
        source = opts.metrics
    elif binary is None:
        rep.error("metrics", f"no node binary at {opts.bin}: build it (cargo build --bin "
                             f"trackmesh), or pass --bin PATH or --metrics FILE|URL")
    else:
        proc = None
        try:
            proc, ready = start_node(binary)
            url = f"http://{ready['http']}/metrics"
            # Serve a few requests first: the HTTP metrics have a series per route only once
            # that route was called, as on any node in service.
            for path in ("/healthz", "/readyz", "/metrics"):
                http_get(f"http://{ready['http']}{path}")
            status, body = http_get(url)
            if status == 200:
                text = body
                source = f"{url} (a live {rel(binary)})"
            else:
                rep.error("metrics", f"GET {url} on a live {rel(binary)} answered {status}: this "
                                     f"node has no /metrics yet (operations contract). To check "
                                     f"against the contract instead: --metrics "
                                     f"deploy/testdata/contract-metrics.txt")
            for path, want in (("/healthz", 200), ("/readyz", 200)):
                status, _ = http_get(f"http://{ready['http']}{path}")
                if status != want:
                    rep.error("node", f"GET {path} answered {status}, expected {want}")
        except (RuntimeError, OSError, KeyError) as e:
            rep.error("node", str(e))
        finally:
            if proc is not None:
                stop_node(proc)

    metrics = Metrics(text) if text is not None else None
    if metrics is not None:
        tm = sorted(n for n in metrics.names() if n.startswith("trackmesh_"))
        if not tm:
            rep.error("metrics", f"{source} has no trackmesh_* metric")
        else:
            rep.ok(f"metrics from {source}: {len(tm)} trackmesh_* names")

    flags = node_flags(binary)
    if flags is None:
        print("note: no node binary, so TRACKMESH_* variables and TOML keys are not checked "
              "against its flags")

    drain = check_toml(rep, flags)
    check_systemd(rep, drain)
    check_dockerfile(rep)
    check_compose(rep, flags)
    check_kubernetes(rep, flags)
    used: set[str] = set()
    check_prometheus(rep, metrics, used)
    check_grafana(rep, metrics, used)

    if opts.prometheus:
        evaluate_on_prometheus(rep, opts.prometheus)

    if metrics is not None:
        families = {metrics.resolve(n)[0] or n for n in used}
        unused = sorted(n for n in metrics.types if n.startswith("trackmesh_") and n not in families)
        if unused:
            print(f"note: metrics no dashboard panel or alert uses: {', '.join(unused)}")

    print()
    if rep.errors:
        print(f"FAILED: {len(rep.errors)} error(s), {len(rep.warnings)} warning(s)")
        return 1
    print(f"PASSED with {len(rep.warnings)} warning(s)" if rep.warnings else "PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
