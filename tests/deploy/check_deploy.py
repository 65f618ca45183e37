#!/usr/bin/env python3
"""Consistency checks for the deployment artifacts (stdlib only).

- Every metric the Grafana dashboard queries (in `expr` fields and in templating variable
  queries) is one the proxy exports, as registered in src/metrics.rs; `rate`/`increase`
  are only applied to counters and histogram series; `histogram_quantile` reads `_bucket`.
- The Deployment probes /readyz (readiness) and /healthz (liveness), gives the pod more
  than server.shutdown_grace to stop, mounts the ConfigMap as a directory (no subPath)
  and passes --config inside it; ports line up with the ConfigMap's listen and the Service.
- The Dockerfile points HARMONY_PROXY_CACHE (the variable filters/src/vocab.rs reads) at
  the baked vocabulary, exposes 8001 and health-checks /healthz.

With the optional `promql_parser` module (PyPI: promql-parser) every dashboard expression
is also parsed as PromQL; without it that check is skipped, not failed.

Exits 1 when anything fails. The last line is `N passed, M failed`.
"""

import json
import os
import re
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
METRICS_RS = os.path.join(ROOT, "src", "metrics.rs")
VOCAB_RS = os.path.join(ROOT, "filters", "src", "vocab.rs")
DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "harmony-proxy.json")
K8S = os.path.join(ROOT, "deploy", "kubernetes")
DOCKERFILE = os.path.join(ROOT, "Dockerfile")

passed = 0
failed = 0


def check(ok, what, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok    {what}")
    else:
        failed += 1
        print(f"FAIL  {what}" + (f": {detail}" if detail else ""))
    return ok


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def strip_rust_comments(src):
    src = re.sub(r"/\*.*?\*/", "", src, flags=re.S)
    return re.sub(r"//[^\n]*", "", src)


# ---------------------------------------------------------------- exported metrics


def rust_sources():
    out = []
    for top in ("src", os.path.join("filters", "src")):
        for d, _, files in os.walk(os.path.join(ROOT, top)):
            out += [os.path.join(d, f) for f in sorted(files) if f.endswith(".rs")]
    return sorted(out)


def exported_metrics():
    """{name: kind} for every metric src/metrics.rs registers, plus the histogram suffix
    matchers that get buckets (the others render as summaries: _sum and _count only)."""
    # Registered in src/metrics.rs, and where labels are known only later (per pool server in
    # src/upstream/pool.rs, per store in filters/src/store/redis.rs): every Rust source is read.
    src = strip_rust_comments("\n".join(read(f) for f in rust_sources()))
    kinds = {}
    # `counter!("name"`, `gauge!("name"`, `histogram!("name"` register (and emit) a series;
    # \b keeps `describe_counter!(` out (the `_` before `counter` is a word character).
    for kind, name in re.findall(r'\b(counter|gauge|histogram)!\(\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"', src):
        if kinds.get(name, kind) != kind:
            check(False, f"metrics.rs: {name} registered as one kind", f"{kinds[name]} and {kind}")
        kinds[name] = kind
    described = {}
    for kind, name in re.findall(r'\bdescribe_(counter|gauge|histogram)!\(\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"', src):
        described[name] = kind
    bucket_suffixes = re.findall(r'Matcher::Suffix\(\s*"([^"]+)"', src)
    bucket_full = re.findall(r'Matcher::Full\(\s*"([^"]+)"', src)
    bucket_prefixes = re.findall(r'Matcher::Prefix\(\s*"([^"]+)"', src)

    def has_buckets(name):
        return (any(name.endswith(s) for s in bucket_suffixes) or name in bucket_full
                or any(name.startswith(p) for p in bucket_prefixes))

    return kinds, described, has_buckets


def series_names(kinds, has_buckets):
    """{series name as scraped: (metric, kind)}."""
    out = {}
    for name, kind in kinds.items():
        if kind == "histogram":
            out[name + "_sum"] = (name, kind)
            out[name + "_count"] = (name, kind)
            if has_buckets(name):
                out[name + "_bucket"] = (name, kind)
            else:
                out[name] = (name, "summary")  # quantile series of a summary
        else:
            out[name] = (name, kind)
    return out


# ---------------------------------------------------------------- dashboard


def walk(obj, key):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key and isinstance(v, str):
                yield v
            else:
                yield from walk(v, key)
    elif isinstance(obj, list):
        for v in obj:
            yield from walk(v, key)


def dashboard_queries(dash):
    exprs = list(walk(dash.get("panels", []), "expr"))
    variables = []
    for var in dash.get("templating", {}).get("list", []):
        q = var.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if isinstance(q, str) and var.get("type") == "query":
            variables.append(q)
    return exprs, variables


METRIC_RE = re.compile(r"\bharmony_proxy_[a-z_]+")


def check_dashboard(kinds, has_buckets):
    try:
        dash = json.loads(read(DASHBOARD))
    except (OSError, ValueError) as e:
        check(False, "dashboard is valid JSON", str(e))
        return
    check(True, "dashboard is valid JSON")
    exprs, variables = dashboard_queries(dash)
    check(len(exprs) > 0, "dashboard has queries", f"{len(exprs)} expr fields")
    series = series_names(kinds, has_buckets)

    used = {}
    for q in exprs + variables:
        for name in METRIC_RE.findall(q):
            used.setdefault(name, q)
    unknown = sorted(n for n in used if n not in series)
    check(not unknown, f"every metric the dashboard queries is exported ({len(used)} series names)",
          "unknown: " + ", ".join(unknown))

    bad_rate = []
    for q in exprs:
        for name in re.findall(r"\b(?:rate|irate|increase)\(\s*(harmony_proxy_[a-z_]+)", q):
            kind = series.get(name, (None, None))[1]
            if kind not in ("counter", "histogram"):
                bad_rate.append(f"{name} ({kind or 'unknown'})")
    check(not bad_rate, "rate()/increase() only over counters and histogram series", ", ".join(bad_rate))

    bad_hq = []
    for q in exprs:
        if "histogram_quantile" in q:
            names = METRIC_RE.findall(q)
            if not names or not all(n.endswith("_bucket") for n in names) or not re.search(r"\bby\s*\([^)]*\ble\b", q):
                bad_hq.append(q)
    check(not bad_hq, "histogram_quantile reads _bucket series aggregated by le", "; ".join(bad_hq))

    ds = [v for v in dash.get("templating", {}).get("list", []) if v.get("name") == "DS_PROMETHEUS"]
    check(len(ds) == 1 and ds[0].get("type") == "datasource" and ds[0].get("query") == "prometheus",
          "dashboard has a DS_PROMETHEUS datasource variable")
    uids = {d.get("uid") for d in walk_datasources(dash)}
    check(uids == {"${DS_PROMETHEUS}"}, "every panel and query uses ${DS_PROMETHEUS}", f"uids: {sorted(map(str, uids))}")

    # What the dashboard is meant to show (the brief): each exported metric appears.
    missing = sorted(n for n in kinds if not any(s in used for s, (m, _) in series.items() if m == n))
    check(not missing, "every exported metric has a panel", "no panel: " + ", ".join(missing))

    try:
        import promql_parser  # optional (PyPI: promql-parser)
    except ImportError:
        print("skip  PromQL syntax (module promql_parser not installed)")
        return
    errors = []
    for q in exprs:
        try:
            promql_parser.parse(q.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h"))
        except Exception as e:  # noqa: BLE001 - the parser raises ValueError, be lenient
            errors.append(f"{q}: {e}")
    check(not errors, f"all {len(exprs)} dashboard expressions parse as PromQL", "; ".join(errors))


def walk_datasources(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "datasource" and isinstance(v, dict) and v.get("type") == "prometheus":
                yield v
            else:
                yield from walk_datasources(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from walk_datasources(v)


# ---------------------------------------------------------------- kubernetes (regex, no PyYAML)


def block(text, key):
    """The lines indented under the first `key:` line (a YAML-subset helper)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)(?:- )?" + re.escape(key) + r":\s*(#.*)?$", line)
        if m:
            indent = len(m.group(1))
            out = []
            for nxt in lines[i + 1:]:
                if nxt.strip() and (len(nxt) - len(nxt.lstrip())) <= indent:
                    break
                out.append(nxt)
            return "\n".join(out)
    return None


def no_comments(text):
    return "\n".join(re.sub(r"(^|\s)#.*$", "", line) for line in text.splitlines())


def duration_seconds(s):
    m = re.fullmatch(r"\s*([0-9.]+)\s*(ms|s|m|h)?\s*", s)
    if not m:
        return None
    v = float(m.group(1))
    return v * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def configmap_toml():
    text = read(os.path.join(K8S, "configmap.yaml"))
    m = re.search(r"^(\s*)proxy\.toml:\s*\|\s*\n", text, flags=re.M)
    if not m:
        return None
    lines, indent = [], None
    for line in text[m.end():].splitlines():
        if line.strip():
            ind = len(line) - len(line.lstrip())
            if indent is None:
                indent = ind
            if ind < indent:
                break
        lines.append(line[indent:] if indent and len(line) >= indent else line.strip())
    return "\n".join(lines) + "\n"


def interpolate(text):
    """${VAR:-default} -> default, ${VAR} -> '' (as with an empty environment)."""
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}", lambda m: m.group(2) or "", text)


def check_kubernetes():
    dep = no_comments(read(os.path.join(K8S, "deployment.yaml")))
    svc = no_comments(read(os.path.join(K8S, "service.yaml")))

    rp = block(dep, "readinessProbe") or ""
    lp = block(dep, "livenessProbe") or ""
    rpath = re.search(r"\bpath:\s*(\S+)", rp)
    lpath = re.search(r"\bpath:\s*(\S+)", lp)
    check(rpath is not None and rpath.group(1).strip("'\"") == "/readyz", "readinessProbe is httpGet /readyz",
          rpath.group(1) if rpath else "no readinessProbe path")
    check(lpath is not None and lpath.group(1).strip("'\"") == "/healthz", "livenessProbe is httpGet /healthz",
          lpath.group(1) if lpath else "no livenessProbe path")

    grace = re.search(r"\bterminationGracePeriodSeconds:\s*(\d+)", dep)
    g = int(grace.group(1)) if grace else None
    check(g is not None and g > 30, "terminationGracePeriodSeconds > 30", str(g))

    toml_text = configmap_toml()
    check(toml_text is not None, "configmap.yaml holds proxy.toml")
    cfg = None
    if toml_text is not None:
        try:
            import tomllib  # Python 3.11+
        except ImportError:
            print("skip  proxy.toml TOML parse (Python < 3.11 has no tomllib)")
        else:
            try:
                cfg = tomllib.loads(interpolate(toml_text))
                check(True, "ConfigMap proxy.toml parses as TOML (after ${VAR:-default})")
            except tomllib.TOMLDecodeError as e:
                check(False, "ConfigMap proxy.toml parses as TOML (after ${VAR:-default})", str(e))
    if cfg is not None:
        server = cfg.get("server", {})
        sg = duration_seconds(str(server.get("shutdown_grace", "30s")))
        check(g is not None and sg is not None and g > sg,
              "terminationGracePeriodSeconds > server.shutdown_grace", f"{g} vs {sg}")
        listen = str(server.get("listen", ""))
        check(listen.startswith("0.0.0.0:") or listen.startswith("[::]:"), "ConfigMap listens on all interfaces", listen)
        port = listen.rsplit(":", 1)[-1]
        check(re.search(r"\bcontainerPort:\s*" + re.escape(port) + r"\b", dep) is not None,
              f"Deployment containerPort is the listen port {port}")
        check(server.get("log_format") == "json", "ConfigMap log_format is json", str(server.get("log_format")))
        pipes = [r.get("pipeline") for r in cfg.get("routes", [])]
        check("ide-tools-shared" in pipes, "ConfigMap routes agents to ide-tools-shared", str(pipes))
        stages = cfg.get("pipelines", {}).get("ide-tools-shared", {}).get("stages", [])
        stores = [s.get("store") for s in stages if s.get("type") == "reasoning-memory"]
        check(stores == ["redis://harmony-proxy-redis:6379/"], "ide-tools-shared keeps reasoning memory in redis.yaml's Redis", str(stores))
        kust = read(os.path.join(K8S, "kustomization.yaml"))
        check(re.search(r"^\s*-\s*redis\.yaml\b", kust, flags=re.M) is not None, "kustomization.yaml includes redis.yaml")
        redis = no_comments(read(os.path.join(K8S, "redis.yaml")))
        check(re.search(r"name:\s*harmony-proxy-redis\b", redis) is not None and re.search(r"\bport:\s*6379\b", redis) is not None,
              "redis.yaml's Service is harmony-proxy-redis:6379")

    check(re.search(r"\bsubPath\b", dep) is None, "ConfigMap volume is mounted without subPath (live reload)")
    mount = re.search(r"mountPath:\s*(\S+)", block(dep, "volumeMounts") or "")
    mdir = mount.group(1).strip("'\"").rstrip("/") if mount else None
    args = re.search(r"\bargs:\s*\[([^\]]*)\]", dep)
    argv = [a.strip().strip("'\"") for a in args.group(1).split(",")] if args else []
    cfg_arg = argv[argv.index("--config") + 1] if "--config" in argv and argv.index("--config") + 1 < len(argv) else None
    check(mdir is not None and cfg_arg is not None and os.path.dirname(cfg_arg) == mdir,
          "--config points into the ConfigMap mount directory", f"mount {mdir}, --config {cfg_arg}")

    check(re.search(r"runAsNonRoot:\s*true", dep) is not None, "runAsNonRoot: true")
    check(re.search(r"readOnlyRootFilesystem:\s*true", dep) is not None, "readOnlyRootFilesystem: true")
    check(re.search(r"^\s*replicas:\s*2\b", dep, flags=re.M) is not None, "2 replicas")

    check(re.search(r"\btype:\s*ClusterIP\b", svc) is not None, "Service is ClusterIP")
    check(re.search(r"\bport:\s*80\b", svc) is not None and re.search(r"\btargetPort:\s*(8001|http)\b", svc) is not None,
          "Service port 80 -> 8001")
    if "targetPort: http" in svc:
        check(re.search(r"-\s*name:\s*http\s*\n\s*containerPort:\s*8001", dep) is not None,
              "the Deployment's port named http is 8001")

    kust = no_comments(read(os.path.join(K8S, "kustomization.yaml")))
    res = re.findall(r"^\s*-\s*(\S+\.ya?ml)\s*$", block(kust, "resources") or "", flags=re.M)
    missing = [r for r in res if not os.path.exists(os.path.join(K8S, r))]
    check(res and not missing, "kustomization resources exist", f"{res}, missing {missing}")


# ---------------------------------------------------------------- Dockerfile


def check_dockerfile():
    df = read(DOCKERFILE)
    vocab = strip_rust_comments(read(VOCAB_RS))
    env_var = re.search(r'var_os\("(HARMONY_PROXY_CACHE)"\)', vocab)
    check(env_var is not None, "filters/src/vocab.rs reads HARMONY_PROXY_CACHE")
    cache = re.search(r"^ENV\s+(?:[^\n]*\\\n)*?[^\n]*\bHARMONY_PROXY_CACHE=(\S+)", df, flags=re.M)
    built = re.search(r"HARMONY_PROXY_CACHE=(\S+)\s*\\?\s*\n?\s*/usr/local/bin/harmony-proxy check", df)
    check(cache is not None and built is not None and cache.group(1) == built.group(1),
          "runtime HARMONY_PROXY_CACHE is where the build materialised the vocabulary",
          f"ENV {cache.group(1) if cache else None}, build {built.group(1) if built else None}")
    check(re.search(r"^EXPOSE\s+8001\b", df, flags=re.M) is not None, "Dockerfile EXPOSE 8001")
    check(re.search(r"^ENV\s+(?:[^\n]*\\\n)*?[^\n]*\bLISTEN=0\.0\.0\.0:8001\b", df, flags=re.M) is not None,
          "Dockerfile ENV LISTEN=0.0.0.0:8001")
    hc = re.search(r"^HEALTHCHECK\b(?:[^\n]*\\\n)*[^\n]*", df, flags=re.M)
    check(hc is not None and "/healthz" in hc.group(0), "Dockerfile HEALTHCHECK probes /healthz")
    users = re.findall(r"^USER\s+(\S+)", df, flags=re.M)
    check(bool(users) and users[-1].split(":")[0] not in ("root", "0"), "Dockerfile runs as a non-root user", str(users))


def main():
    kinds, described, has_buckets = exported_metrics()
    check(len(kinds) > 0, f"src/metrics.rs registers metrics ({len(kinds)})", "none found")
    check(set(described) <= set(kinds), "every described metric is registered",
          ", ".join(sorted(set(described) - set(kinds))))
    check(all(has_buckets(n) for n, k in kinds.items() if k == "histogram"),
          "every histogram has buckets (histogram_quantile works)",
          ", ".join(n for n, k in kinds.items() if k == "histogram" and not has_buckets(n)))
    check_dashboard(kinds, has_buckets)
    check_kubernetes()
    check_dockerfile()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
