#!/usr/bin/env python3
"""Offline checks of deploy/: the Dockerfile, the Docker Compose cluster and the Helm chart.

These machines have no container engine, no helm binary and no Kubernetes cluster, so an
image build, `docker compose up` and `helm install` are NOT run here (docs/deployment.md
says what was and was not exercised). What is checked, each as one line `ok`/`FAIL`:

- dockerfile: its `FROM rust:X.Y.Z` is CI's `rustc --version`; a `--locked` release build;
  a numeric non-root USER (the chart's runAsUser); the build context left by .dockerignore
  resolves the workspace with the lockfile (`cargo metadata --locked --offline`) and holds
  every file the sources embed; the healthcheck script answers a live aetheris and fails
  on a closed port (run for real).
- compose: every service's command is an `aetheris` command; dependencies (postgres
  healthy → migrate completed → server, workers); every referenced file exists; ports
  and addresses agree across compose.yaml, aetheris.toml, prometheus.yml and Grafana's
  data source; init-secrets writes every secret compose names, once (run for real);
  each aetheris service's settings load (`--print-config` with its environment);
  prometheus.yml and the alert rules pass `promtool check config`; and a live run: the
  services' commands and settings on a real PostgreSQL (password auth with the password
  init-secrets made): migrate, server, worker, jobs, the healthcheck, both /metrics (the
  gateway's with Prometheus's token), the README's "With Docker Compose" commands after
  `docker compose up`, a drain on SIGTERM.
- chart: Helm's own lint (helm-sdkpy) and render (helm_render.py) for the default
  values and each ci/*-values.yaml; every object validated by kubernetes-validate in
  strict mode (custom resources by crd_schemas.py); probes, security contexts, grace
  periods, selectors and ports cross-checked; the rendered aetheris.toml accepted by
  `server`, `worker` and `migrate` up to the database; the migration hook; the
  PrometheusRule equal to deploy/prometheus/alerts.yml; the KEDA query equal to
  docs/deployment.md's and counting runnable jobs on the live PostgreSQL.
- controls: each kind of check fails on input made broken on purpose.

Run from anywhere: `python3 deploy/checks/deploy_checks.py [--aetheris target/debug/aetheris]`.
Needs PyYAML, helm-sdkpy, kubernetes-validate (PyPI), promtool and PostgreSQL's server
binaries (.ci/run installs them). Ends with `deploy: N passed, M failed`; exit 1 if
any failed.
"""

from __future__ import annotations

import argparse
import contextlib
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
import traceback
import urllib.error
import urllib.request
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import crd_schemas  # noqa: E402
import dockerignore  # noqa: E402
import helm_render  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "aetheris"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "aetheris.json"
KUBERNETES_VERSION = "1.30.0"  # the oldest Kubernetes the chart's objects are validated for
AETHERIS_SERVICES = ("migrate", "server", "worker")


class Fail(Exception):
    """A check's finding: printed as its FAIL line."""


def need(cond: object, msg: str) -> None:
    if not cond:
        raise Fail(msg)


# ---------------------------------------------------------------------------------------
# Shared state: the binary, a scratch directory, and things several checks use.


class Ctx:
    def __init__(self, aetheris: Path, tmp: Path):
        self.aetheris = aetheris
        self.tmp = tmp
        self._commands: set[str] | None = None
        self._secrets: Path | None = None
        self.renders: dict[str, tuple[dict[str, str], list[tuple[str, dict]]]] = {}
        self.live_pg: PgCluster | None = None

    def run(self, *args: str, env: dict | None = None, timeout: float = 60, cwd: Path | None = None):
        return subprocess.run(
            list(args), capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd
        )

    def commands(self) -> set[str]:
        """The subcommands `aetheris --help` lists."""
        if self._commands is None:
            out = self.run(str(self.aetheris), "--help").stdout
            section = out.split("Commands:", 1)[1].split("\n\n", 1)[0]
            self._commands = {line.split()[0] for line in section.splitlines() if line.strip()}
        return self._commands

    def secrets(self) -> Path:
        """deploy/compose/init-secrets run once into a scratch directory."""
        if self._secrets is None:
            d = self.tmp / "compose-secrets"
            proc = self.run(str(DEPLOY / "compose" / "init-secrets"), env=aetheris_env(self, AETHERIS_SECRETS_DIR=str(d)))
            need(proc.returncode == 0, f"init-secrets failed: {proc.stderr.strip()}")
            self._secrets = d
        return self._secrets

    def env(self, **extra: str) -> dict:
        """This process's environment without any AETHERIS_* variable, plus `extra`."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AETHERIS_")}
        env.update(extra)
        return env


def aetheris_env(ctx: Ctx, **extra: str) -> dict:
    return ctx.env(AETHERIS=str(ctx.aetheris), **extra)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def duration_s(text: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", str(text))
    need(m, f"not a duration: {text!r}")
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def load_compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def load_compose_toml() -> dict:
    return tomllib.loads((DEPLOY / "compose" / "aetheris.toml").read_text())


# ---------------------------------------------------------------------------------------
# Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def dockerfile_stages() -> list[tuple[str, list[tuple[str, str]]]]:
    """The stages as (FROM argument, the stage's instructions)."""
    stages: list[tuple[str, list]] = []
    for word, rest in dockerfile_instructions():
        if word == "FROM":
            stages.append((rest, []))
        elif stages:
            stages[-1][1].append((word, rest))
    return stages


def dockerfile_uid() -> tuple[int, int]:
    user = [rest for word, rest in dockerfile_stages()[-1][1] if word == "USER"]
    need(user, "the runtime stage sets no USER")
    m = re.fullmatch(r"(\d+):(\d+)", user[-1])
    need(m, f"USER {user[-1]}: expected numeric UID:GID (Kubernetes' runAsNonRoot cannot check a name)")
    return int(m.group(1)), int(m.group(2))


def check_dockerfile_rust(ctx: Ctx) -> str:
    build_from = dockerfile_stages()[0][0]
    m = re.match(r"rust:(\d+\.\d+\.\d+)-slim-(\w+)\b", build_from)
    need(m, f"build stage `FROM {build_from}`: expected rust:X.Y.Z-slim-<debian release>")
    rustc = ctx.run("rustc", "--version").stdout
    ci = re.match(r"rustc (\d+\.\d+\.\d+)", rustc)
    need(ci, f"cannot read `rustc --version`: {rustc!r}")
    need(
        m.group(1) == ci.group(1),
        f"deploy/Dockerfile builds with Rust {m.group(1)}, CI tests with {ci.group(1)} "
        f"(`rustc --version`): change `FROM rust:{m.group(1)}-…` to {ci.group(1)}",
    )
    msrv = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["rust-version"]
    need(
        tuple(map(int, m.group(1).split("."))) >= tuple(map(int, (msrv + ".0").split(".")[:3])),
        f"Rust {m.group(1)} is older than the workspace's rust-version {msrv}",
    )
    return f"rust:{m.group(1)} = CI's rustc {ci.group(1)} (rust-version {msrv})"


def check_dockerfile_runtime(ctx: Ctx) -> str:
    stages = dockerfile_stages()
    need(len(stages) >= 2, "expected a build stage and a runtime stage")
    build_from, build = stages[0]
    run_from, runtime = stages[-1]
    builds = [rest for word, rest in build if word == "RUN" and "cargo build" in rest]
    need(builds, "the build stage runs no `cargo build`")
    need("--release" in builds[0] and "--locked" in builds[0], f"`{builds[0]}`: needs --release --locked")
    release = re.search(r"-slim-(\w+)", build_from).group(1)
    need(
        re.fullmatch(rf"debian:{release}-slim(\s+AS\s+\w+)?", run_from, re.I),
        f"runtime `FROM {run_from}`: expected debian:{release}-slim (the build image's Debian, same glibc)",
    )
    uid, gid = dockerfile_uid()
    need(uid != 0 and gid != 0, "USER must not be root")
    words = {word for word, _ in runtime}
    need("HEALTHCHECK" in words, "no HEALTHCHECK in the runtime stage")
    entry = [rest for word, rest in runtime if word == "ENTRYPOINT"]
    need(entry and json.loads(entry[-1])[0].endswith("/aetheris"), "ENTRYPOINT must be the aetheris binary")
    exposed = {int(p) for word, rest in runtime if word == "EXPOSE" for p in rest.split()}
    need({7420, 7421} <= exposed, f"EXPOSE {sorted(exposed)}: expected 7420 (gateway) and 7421 (worker admin)")
    return f"{build_from.split()[0]} → {run_from.split()[0]}, USER {uid}:{gid}, HEALTHCHECK, EXPOSE 7420 7421"


def context_files(ignore_text: str) -> list[str]:
    files = repo_files()
    return dockerignore.context(dockerignore.parse(ignore_text), files)


def repo_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return [f for f in out.splitlines() if (ROOT / f).is_file()]


def verify_context(ctx: Ctx, files: list[str], dest: Path) -> str:
    """Copies `files` to `dest` and checks the image build has what it needs there."""
    if dest.exists():
        shutil.rmtree(dest)
    for f in files:
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dest / f)
    for word, rest in dockerfile_instructions():
        if word == "COPY" and "--from=" not in rest:
            srcs = [a for a in rest.split() if not a.startswith("--")][:-1]
            for src in srcs:
                need(src == "." or (dest / src).exists(), f"COPY {src}: not in the build context (.dockerignore)")
    proc = ctx.run(
        "cargo", "metadata", "--locked", "--offline", "--format-version", "1", "--no-deps",
        "--manifest-path", str(dest / "Cargo.toml"), timeout=120,
    )
    need(proc.returncode == 0, f"`cargo metadata --locked` in the build context fails: {proc.stderr.strip()[-800:]}")
    meta = json.loads(proc.stdout)
    embedded = 0
    for rs in dest.rglob("*.rs"):
        for m in re.finditer(r'include_(?:str|bytes)!\(\s*"([^"]+)"', rs.read_text()):
            embedded += 1
            target = (rs.parent / m.group(1)).resolve()
            need(target.is_file(), f"{rs.relative_to(dest)} embeds {m.group(1)}, which the build context lacks")
    return f"{len(files)} files, {len(meta['workspace_members'])} workspace members, {embedded} embedded files present"


def check_dockerfile_context(ctx: Ctx) -> str:
    dockerignore.self_test()
    files = context_files((ROOT / ".dockerignore").read_text())
    need("Cargo.lock" in files, "Cargo.lock is not in the build context")
    for leak in ("docs/", "tests/", "deploy/compose/secrets/", ".aetheris/"):
        need(not any(f.startswith(leak) for f in files), f"{leak} is in the build context (.dockerignore)")
    return verify_context(ctx, files, ctx.tmp / "docker-context")


def check_healthcheck(ctx: Ctx) -> str:
    port = free_port()
    data = ctx.tmp / "healthcheck-dev"
    proc = subprocess.Popen(
        [str(ctx.aetheris), "dev", "--insecure-no-auth", "--bind", f"127.0.0.1:{port}", "--data-dir", str(data)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ctx.env(), start_new_session=True,
    )
    script = str(DEPLOY / "healthcheck")
    try:
        rc = 1
        for _ in range(100):
            rc = ctx.run(script, env=ctx.env(AETHERIS_HEALTHCHECK_PORTS=f"{free_port()} {port}")).returncode
            if rc == 0:
                break
            time.sleep(0.1)
        need(rc == 0, f"healthcheck: exit {rc} with a live `aetheris dev` on port {port}")
        rc = ctx.run(script, env=ctx.env(AETHERIS_HEALTHCHECK_PORTS=str(port), AETHERIS_HEALTHCHECK_PATH="/readyz")).returncode
        need(rc == 0, f"healthcheck /readyz: exit {rc}")
        rc = ctx.run(script, env=ctx.env(AETHERIS_HEALTHCHECK_PORTS=str(port), AETHERIS_HEALTHCHECK_PATH="/nope")).returncode
        need(rc == 1, f"healthcheck on a 404 path: exit {rc}, expected 1")
    finally:
        stop(proc)
    rc = ctx.run(script, env=ctx.env(AETHERIS_HEALTHCHECK_PORTS=str(port))).returncode
    need(rc == 1, f"healthcheck with nothing listening: exit {rc}, expected 1")
    return "0 on a live /healthz and /readyz; 1 on a 404 and on a closed port"


def stop(proc: subprocess.Popen, timeout: float = 15) -> int | None:
    """SIGTERM, then SIGKILL after `timeout`; the exit code (None if it had to be killed)."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


# ---------------------------------------------------------------------------------------
# Docker Compose


def compose_services(compose: dict) -> dict:
    return compose.get("services") or {}


def check_compose_services(ctx: Ctx, compose: dict | None = None) -> str:
    compose = compose or load_compose()
    services = compose_services(compose)
    want = {"postgres", "migrate", "server", "worker", "prometheus", "grafana"}
    need(want <= set(services), f"services {sorted(services)}: missing {sorted(want - set(services))}")
    for name in AETHERIS_SERVICES:
        svc = services[name]
        cmd = svc.get("command")
        need(isinstance(cmd, list) and cmd, f"{name}: command must be a list (exec form)")
        need(cmd[0] in ctx.commands(), f"{name}: `{cmd[0]}` is not a command of `aetheris --help` ({', '.join(sorted(ctx.commands()))})")
        need(cmd[0] == name, f"{name}: runs `aetheris {cmd[0]}`")
        need(svc.get("build", {}).get("dockerfile") == "deploy/Dockerfile", f"{name}: not built from deploy/Dockerfile")
        need(svc.get("read_only") is True and "ALL" in (svc.get("cap_drop") or []), f"{name}: needs read_only and cap_drop ALL")
        need(svc.get("environment", {}).get("AETHERIS_CONFIG") == "/etc/aetheris/aetheris.toml", f"{name}: AETHERIS_CONFIG")
    need(services["worker"].get("deploy", {}).get("replicas") == 2, "worker: deploy.replicas must be 2")
    dep = lambda s: services[s].get("depends_on") or {}  # noqa: E731
    need(dep("migrate").get("postgres", {}).get("condition") == "service_healthy", "migrate must wait for postgres to be healthy")
    need("healthcheck" in services["postgres"], "postgres needs a healthcheck")
    for s in ("server", "worker"):
        need(
            dep(s).get("migrate", {}).get("condition") == "service_completed_successfully",
            f"{s} must wait for migrate to complete successfully",
        )
    need(services["migrate"].get("restart") == "no", "migrate is one-shot: restart must be \"no\"")
    cfg = load_compose_toml()
    need(cfg["database"].get("no_migrate") is True, "compose/aetheris.toml: no_migrate must be true (the migrate service migrates)")
    grace = duration_s(services["worker"].get("stop_grace_period", "10s"))
    drain = cfg["worker"].get("drain_grace_ms", 10000) / 1000
    need(grace >= drain + 5, f"worker stop_grace_period {grace}s must exceed drain_grace_ms ({drain}s) by 5 s")
    # Each process: its pool and one LISTEN connection (docs/deployment.md, "Sizing").
    pools = (cfg["database"].get("pool_size", 16) + 1) * (1 + services["worker"]["deploy"]["replicas"])
    pg_cmd = " ".join(services["postgres"].get("command") or [])
    m = re.search(r"max_connections=(\d+)", pg_cmd)
    need(m and int(m.group(1)) >= pools + 3, f"postgres max_connections must cover the pools ({pools}) plus a few")
    return (
        f"{len(services)} services; migrate/server/worker are `aetheris` commands; postgres healthy → migrate → "
        f"server, 2 workers; worker stop grace {grace:g}s > drain {drain:g}s; max_connections {m.group(1)} ≥ pools {pools}"
    )


def check_compose_files(ctx: Ctx) -> str:
    compose = load_compose()
    base = DEPLOY
    made = {p.name for p in ctx.secrets().iterdir()}
    count = 0
    for kind in ("configs", "secrets"):
        for name, spec in (compose.get(kind) or {}).items():
            path = (base / spec["file"]).resolve()
            count += 1
            if kind == "secrets":
                need(path.parent == (DEPLOY / "compose" / "secrets").resolve(), f"secret {name}: {spec['file']} is not under compose/secrets/")
                need(path.name in made, f"secret {name}: init-secrets does not write {path.name}")
            else:
                need(path.is_file(), f"config {name}: {spec['file']} does not exist")
    for name, svc in compose_services(compose).items():
        for env_file in svc.get("env_file") or []:
            count += 1
            need(Path(env_file).name in made, f"{name}: env_file {env_file} is not written by init-secrets")
        build = svc.get("build")
        if build:
            need((base / build["context"] / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']} missing")
        for used in svc.get("secrets") or []:
            need(used in (compose.get("secrets") or {}), f"{name}: unknown secret {used}")
        for used in svc.get("configs") or []:
            need(used["source"] in (compose.get("configs") or {}), f"{name}: unknown config {used['source']}")
    need(ALERTS.is_file(), f"{ALERTS.relative_to(ROOT)} is missing (the alert rules Prometheus and the chart load)")
    need((yaml.safe_load(ALERTS.read_text()) or {}).get("groups"), f"{ALERTS.relative_to(ROOT)} has no rule groups")
    need(DASHBOARD.is_file(), f"{DASHBOARD.relative_to(ROOT)} is missing (the dashboard Grafana provisions)")
    json.loads(DASHBOARD.read_text())
    return f"{count} files referenced, all present or written by init-secrets; alerts.yml and the dashboard parse"


def check_compose_ports(ctx: Ctx) -> str:
    compose = load_compose()
    s = compose_services(compose)
    cfg = load_compose_toml()
    gateway, admin = port_of(cfg["gateway"]["bind"]), port_of(cfg["worker"]["admin_bind"])
    need(cfg["gateway"]["bind"].startswith("0.0.0.0:"), "gateway.bind must listen on 0.0.0.0 inside its container")
    need(cfg["worker"]["admin_bind"].startswith("0.0.0.0:"), "worker.admin_bind must listen on 0.0.0.0 (Prometheus scrapes it)")

    def published(name: str) -> list[tuple[str, int, int]]:
        out = []
        for p in s[name].get("ports") or []:
            m = re.fullmatch(r"(127\.0\.0\.1):(\d+):(\d+)", str(p))
            need(m, f"{name}: port {p!r} must be published on 127.0.0.1 only (HOST_IP:HOST:CONTAINER)")
            out.append((m.group(1), int(m.group(2)), int(m.group(3))))
        return out

    need([p[2] for p in published("server")] == [gateway], f"server publishes {published('server')}, gateway listens on {gateway}")
    need(not s["worker"].get("ports"), "worker: the admin listener has no authentication; never publish it")
    need(not s["postgres"].get("ports"), "postgres: not published")
    for name, port in (("server", gateway), ("worker", admin)):
        env = s[name].get("environment") or {}
        need(env.get("AETHERIS_HEALTHCHECK_PORTS") == str(port), f"{name}: AETHERIS_HEALTHCHECK_PORTS must be {port}")
    prom = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    server_targets = [t for sc in jobs["aetheris-server"]["static_configs"] for t in sc["targets"]]
    need(server_targets == [f"server:{gateway}"], f"Prometheus scrapes {server_targets}, the gateway is server:{gateway}")
    need(jobs["aetheris-server"]["authorization"]["credentials_file"] == "/run/secrets/prometheus_token", "gateway scrape needs the token file")
    need("prometheus_token" in (s["prometheus"].get("secrets") or []), "prometheus: the prometheus_token secret is not mounted")
    dns = jobs["aetheris-worker"]["dns_sd_configs"][0]
    need(dns["names"] == ["worker"] and dns["port"] == admin, f"worker scrape {dns}: expected names [worker], port {admin}")
    mounted = {c["target"] for c in s["prometheus"]["configs"]}
    need(set(prom["rule_files"]) <= mounted, f"rule_files {prom['rule_files']} are not all mounted ({sorted(mounted)})")
    ds = yaml.safe_load((DEPLOY / "compose" / "grafana" / "datasources.yaml").read_text())["datasources"][0]
    need(ds["url"] == "http://prometheus:9090", f"Grafana data source {ds['url']}: Prometheus is prometheus:9090")
    need(published("prometheus")[0][2] == 9090 and published("grafana")[0][2] == 3000, "Prometheus 9090, Grafana 3000")
    dash = yaml.safe_load((DEPLOY / "compose" / "grafana" / "dashboards.yaml").read_text())["providers"][0]["options"]["path"]
    need(
        any(c["target"].startswith(dash + "/") for c in s["grafana"]["configs"]),
        f"no dashboard mounted under the provider's path {dash}",
    )
    host_ports = [p[1] for n in s for p in (published(n) if s[n].get("ports") else [])]
    need(len(host_ports) == len(set(host_ports)), f"host ports collide: {host_ports}")
    url = (ctx.secrets() / "database.env").read_text().strip().split("=", 1)[1]
    need(re.search(r"@postgres:5432/", url), f"database.env's URL must name postgres:5432, got {url.split('@')[-1]}")
    return (
        f"gateway {gateway} = published 127.0.0.1:{gateway} = Prometheus target = healthcheck; "
        f"worker admin {admin} = Prometheus dns_sd port = healthcheck; Prometheus 9090 = Grafana's data source"
    )


def check_init_secrets(ctx: Ctx) -> str:
    d = ctx.secrets()
    files = sorted(p.name for p in d.iterdir())
    need(oct(d.stat().st_mode & 0o777) == "0o700", f"secrets directory mode {oct(d.stat().st_mode & 0o777)}, expected 0700")
    for p in d.iterdir():
        need(p.stat().st_size > 0, f"{p.name} is empty")
        need((p.stat().st_mode & 0o777) == 0o644, f"{p.name}: mode {oct(p.stat().st_mode & 0o777)}, expected 0644")
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    again = ctx.run(str(DEPLOY / "compose" / "init-secrets"), env=aetheris_env(ctx, AETHERIS_SECRETS_DIR=str(d)))
    need(again.returncode == 0 and "nothing changed" in again.stdout, f"second run: {again.stdout}{again.stderr}")
    need(before == {p.name: p.read_bytes() for p in d.iterdir()}, "a second run changed a secret")
    return f"wrote {', '.join(files)}; a second run changed nothing"


def compose_service_env(ctx: Ctx, compose: dict, name: str) -> dict:
    svc = compose_services(compose)[name]
    env = ctx.env()
    for env_file in svc.get("env_file") or []:
        for line in (ctx.secrets() / Path(env_file).name).read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                k, _, v = line.partition("=")
                env[k] = v
    env.update({k: str(v) for k, v in (svc.get("environment") or {}).items()})
    env["AETHERIS_CONFIG"] = str(DEPLOY / "compose" / "aetheris.toml")
    return env


def check_compose_settings(ctx: Ctx) -> str:
    compose = load_compose()
    out = []
    for name in AETHERIS_SERVICES:
        cmd = compose_services(compose)[name]["command"]
        proc = ctx.run(str(ctx.aetheris), *cmd, "--print-config", env=compose_service_env(ctx, compose, name))
        need(proc.returncode == 0, f"{name}: `aetheris {' '.join(cmd)} --print-config`: {proc.stderr.strip()}")
        mounted = set(compose_services(compose)[name].get("secrets") or [])
        for secret in re.findall(r"/run/secrets/(\w+)", proc.stdout):
            need(secret in mounted, f"{name} reads /run/secrets/{secret}, which is not mounted into it")
        settings = len(re.findall(r"^\w+ = ", proc.stdout, re.M))
        out.append(f"{name} ({settings} settings)")
    return "settings load: " + ", ".join(out)


def check_promtool(ctx: Ctx) -> str:
    promtool = shutil.which("promtool")
    need(promtool, "promtool not found (Debian package `prometheus`; .ci/run installs it)")
    d = ctx.tmp / "promtool"
    d.mkdir(exist_ok=True)
    text = (DEPLOY / "compose" / "prometheus.yml").read_text()
    for inside, outside in (
        ("/etc/prometheus/alerts.yml", ALERTS),
        ("/run/secrets/prometheus_token", ctx.secrets() / "prometheus.token"),
    ):
        need(inside in text, f"prometheus.yml no longer names {inside}")
        text = text.replace(inside, str(outside))
    (d / "prometheus.yml").write_text(text)
    proc = ctx.run(promtool, "check", "config", str(d / "prometheus.yml"))
    need(proc.returncode == 0, f"promtool check config: {proc.stdout}{proc.stderr}")
    rules = re.search(r"SUCCESS: (\d+) rules found", proc.stdout + proc.stderr)
    return f"promtool check config: SUCCESS ({rules.group(1) if rules else '?'} rules)"


# ---------------------------------------------------------------------------------------
# Live: the compose services' commands and settings on a real PostgreSQL.


class PgCluster:
    """A throwaway PostgreSQL on loopback: trust on its socket, SCRAM passwords over TCP."""

    def __init__(self, tmp: Path):
        self.bin = pg_bin()
        self.dir = tmp / "pg"
        self.port = free_port()
        self.as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.dir.mkdir()
        if self.as_pg:
            shutil.chown(self.dir, "postgres")
        self._cmd("initdb", "-D", str(self.dir / "data"), "-U", "postgres", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "-N")
        opts = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.dir} -c fsync=off"
        self._cmd("pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-w", "-t", "60", "-o", opts, "start")

    def _cmd(self, tool: str, *args: str) -> str:
        proc = subprocess.run([*self.as_pg, str(self.bin / tool), *args], capture_output=True, text=True, timeout=120)
        # (`tool` may be an absolute path: `self.bin / tool` is then that path.)
        need(proc.returncode == 0, f"{tool}: {proc.stderr.strip()[-600:]}")
        return proc.stdout

    def psql(self, sql: str, db: str = "postgres") -> str:
        return self._cmd(psql_path(self.bin), "-h", str(self.dir), "-p", str(self.port), "-U", "postgres", "-d", db,
                         "-v", "ON_ERROR_STOP=1", "-tAc", sql).strip()

    def stop(self) -> None:
        subprocess.run([*self.as_pg, str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "stop", "-m", "immediate"],
                       capture_output=True, timeout=60)


def pg_bin() -> Path:
    if os.environ.get("AETHERIS_PG_BIN"):
        return Path(os.environ["AETHERIS_PG_BIN"])
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    need(versions, "PostgreSQL server binaries not found (apt-get install postgresql; .ci/run installs them)")
    return versions[-1].parent


def psql_path(bin_dir: Path) -> str:
    """psql beside the server binaries, else on PATH (Debian's postgresql-client)."""
    if (bin_dir / "psql").is_file():
        return str(bin_dir / "psql")
    found = shutil.which("psql")
    need(found, "psql not found (apt-get install postgresql-client; .ci/run installs it)")
    return found


def http(url: str, token: str | None = None, body: dict | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def keda_query(ctx: Ctx) -> str:
    docs = [doc for _, doc in render_set(ctx, "all-features")[1] if doc["kind"] == "ScaledObject"]
    need(docs, "the all-features render has no ScaledObject")
    return docs[0]["spec"]["triggers"][0]["metadata"]["query"]


def check_live(ctx: Ctx) -> str:
    """migrate, server and worker as compose runs them, against PostgreSQL; jobs; metrics; drain."""
    secrets = ctx.secrets()
    pg = ctx.live_pg = PgCluster(ctx.tmp)
    password = (secrets / "postgres_password").read_text().strip()
    # What the postgres image does with POSTGRES_USER, POSTGRES_PASSWORD_FILE, POSTGRES_DB.
    pg.psql(f"CREATE ROLE aetheris LOGIN PASSWORD '{password}'")
    pg.psql("CREATE DATABASE aetheris OWNER aetheris")
    compose = load_compose()
    gateway, admin = free_port(), free_port()
    text = (DEPLOY / "compose" / "aetheris.toml").read_text()
    for inside, here in (
        ('"0.0.0.0:7420"', f'"127.0.0.1:{gateway}"'),
        ('"0.0.0.0:7421"', f'"127.0.0.1:{admin}"'),
        ("/run/secrets/auth_key", str(secrets / "auth.key")),
        ("/run/secrets/evidence_key", str(secrets / "evidence.key")),
    ):
        need(inside in text, f"compose/aetheris.toml no longer holds {inside}")
        text = text.replace(inside, here)
    config = ctx.tmp / "live-aetheris.toml"
    config.write_text(text)

    def env(name: str) -> dict:
        e = compose_service_env(ctx, compose, name)
        e["AETHERIS_CONFIG"] = str(config)
        e["AETHERIS_DATABASE_URL"] = e["AETHERIS_DATABASE_URL"].replace("@postgres:5432/", f"@127.0.0.1:{pg.port}/")
        e["AETHERIS_HEALTHCHECK_PORTS"] = str(gateway if name == "server" else admin)
        return e

    def cmd(name: str) -> list[str]:
        return [str(ctx.aetheris), *compose_services(compose)[name]["command"]]

    migrate = ctx.run(*cmd("migrate"), env=env("migrate"))
    need(migrate.returncode == 0, f"migrate: {migrate.stderr.strip()}")
    procs: dict[str, subprocess.Popen] = {}
    logs = ctx.tmp / "live-logs"
    logs.mkdir()
    try:
        procs["server"] = subprocess.Popen(cmd("server"), env=env("server"), stdout=subprocess.DEVNULL,
                                           stderr=open(logs / "server", "w"), start_new_session=True)
        wait_healthy(ctx, env("server"), "server", procs["server"], logs)
        base = f"http://127.0.0.1:{gateway}"
        admin_token = ctx.run(str(ctx.aetheris), "token", "issue", "--secret-file", str(secrets / "auth.key"),
                              "--tenant", "default", "--role", "admin", "--sub", "deploy-checks", "--ttl", "10m").stdout.strip()
        plan = {"plan": {"steps": [{"id": "a", "tool": "echo", "args": {"x": 1}}]}, "input": {}}
        for _ in range(3):
            status, body = http(f"{base}/v1/jobs", admin_token, plan)
            need(status == 201, f"POST /v1/jobs: {status} {body[:300]}")
        runnable = pg.psql(keda_query(ctx), db="aetheris")
        need(runnable == "3", f"the KEDA query counts {runnable} runnable jobs with 3 queued and no worker")
        status, body = http(f"{base}/metrics", (secrets / "prometheus.token").read_text().strip())
        need(status == 200 and "# TYPE" in body, f"gateway /metrics with Prometheus's token: {status} {body[:200]}")
        need(http(f"{base}/metrics")[0] == 401, "gateway /metrics without a token must be refused")
        procs["worker"] = subprocess.Popen(cmd("worker"), env=env("worker"), stdout=subprocess.DEVNULL,
                                           stderr=open(logs / "worker", "w"), start_new_session=True)
        wait_healthy(ctx, env("worker"), "worker", procs["worker"], logs)
        # Sizing (docs/deployment.md): each process holds pool_size connections and one LISTEN.
        pool = load_compose_toml()["database"]["pool_size"]
        held = int(pg.psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'aetheris'"))
        need(held <= 2 * (pool + 1), f"server + worker hold {held} connections, more than 2 × (pool_size {pool} + 1)")
        deadline = time.time() + 30
        while pg.psql(keda_query(ctx), db="aetheris") != "0" and time.time() < deadline:
            time.sleep(0.2)
        done = pg.psql("SELECT count(*) FROM jobs WHERE status = 'succeeded'", db="aetheris")
        need(done == "3", f"{done} of 3 jobs succeeded within 30 s (worker log: {(logs / 'worker').read_text()[-500:]})")
        status, body = http(f"http://127.0.0.1:{admin}/metrics")
        need(status == 200 and "# TYPE" in body, f"worker /metrics: {status}")
        readme_first_job(ctx, base, secrets)
        drain = load_compose_toml()["worker"]["drain_grace_ms"] / 1000
        t0 = time.time()
        rc = stop(procs.pop("worker"), timeout=drain + 5)
        need(rc == 0, f"worker on SIGTERM: exit {rc} (log: {(logs / 'worker').read_text()[-500:]})")
        took = time.time() - t0
        rc = stop(procs.pop("server"))
        need(rc == 0, f"server on SIGTERM: exit {rc}")
    finally:
        for p in procs.values():
            stop(p)
    return (
        f"PostgreSQL (SCRAM, init-secrets' password): migrate; server and worker ready (healthcheck /readyz); "
        f"{held} connections held by server + worker (pool_size {pool} + 1 LISTEN each); "
        f"KEDA query 3 → 0 as the worker ran 3 jobs; the README's compose commands (but docker's) ran a first job; /metrics of both (gateway: 200 with Prometheus's token, "
        f"401 without); worker drained on SIGTERM in {took:.1f}s, exit 0"
    )


def readme_first_job(ctx: Ctx, base: str, secrets: Path) -> None:
    """The README's "With Docker Compose" commands after `docker compose up`, on the live cluster
    (init-secrets ran already, into the scratch directory)."""
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"### With Docker Compose\n.*?```bash\n(.*?)```", readme, re.S)
    need(m, "README: no ```bash block under \"### With Docker Compose\"")
    lines = m.group(1).splitlines()
    docker = [l for l in lines if l.startswith(("deploy/compose/init-secrets", "docker compose"))]
    need(len(docker) == 2, f"README compose block: expected the init-secrets and docker compose lines, got {docker}")
    script = "\n".join(l for l in lines if l not in docker)
    for inside, here in (
        ("http://127.0.0.1:7420", base),
        ("http://server:7420", base),
        ("deploy/compose/secrets/", f"{secrets}/"),
    ):
        need(inside in script, f"README compose block no longer holds {inside}")
        script = script.replace(inside, here)
    bin_dir = ctx.tmp / "readme-bin"
    bin_dir.mkdir(exist_ok=True)
    if not (bin_dir / "aetheris").exists():
        (bin_dir / "aetheris").symlink_to(ctx.aetheris)
    env = ctx.env(PATH=f"{bin_dir}:{os.environ.get('PATH', '')}")
    proc = subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)
    need(proc.returncode == 0 and re.search(r"^job \S+ succeeded$", proc.stdout, re.M),
         f"the README's compose commands failed (exit {proc.returncode}): {proc.stderr.strip()[-600:]} {proc.stdout[-300:]}")


def wait_healthy(ctx: Ctx, env: dict, name: str, proc: subprocess.Popen, logs: Path) -> None:
    env = dict(env, AETHERIS_HEALTHCHECK_PATH="/readyz")
    for _ in range(300):
        if proc.poll() is not None:
            raise Fail(f"{name} exited {proc.returncode}: {(logs / name).read_text()[-600:]}")
        if ctx.run(str(DEPLOY / "healthcheck"), env=env).returncode == 0:
            return
        time.sleep(0.1)
    raise Fail(f"{name} not ready after 30 s: {(logs / name).read_text()[-600:]}")


# ---------------------------------------------------------------------------------------
# Helm chart


VALUE_SETS = {"default": None, **{p.stem.removesuffix("-values"): p for p in sorted((CHART / "ci").glob("*-values.yaml"))}}


def values_of(name: str) -> dict:
    path = VALUE_SETS[name]
    return yaml.safe_load(path.read_text()) if path else {}


def chart_values(name: str) -> dict:
    return helm_render.merge(yaml.safe_load((CHART / "values.yaml").read_text()), values_of(name))


def prepared_chart(ctx: Ctx, name: str, overrides: dict | None = None) -> Path:
    need((CHART / "files" / "alerts.yml").is_file(), "files/alerts.yml (→ deploy/prometheus/alerts.yml) is missing")
    return helm_render.prepare(CHART, values_of(name) if overrides is None else overrides, ctx.tmp / "charts" / name / "aetheris")


def render_set(ctx: Ctx, name: str):
    if name not in ctx.renders:
        chart = prepared_chart(ctx, name)
        rendered, problems = helm_render.render(chart, ctx.tmp / "charts" / name)
        need(not problems, f"render ({name}): " + "; ".join(problems))
        ctx.renders[name] = (rendered, helm_render.documents(rendered))
    return ctx.renders[name]


def check_chart_lint(ctx: Ctx, name: str) -> str:
    messages = helm_render.lint(prepared_chart(ctx, name))
    bad = [m for m in messages if m[0] not in ("info",)]
    need(not bad, f"helm lint ({name}): " + ", ".join(f"{sev} in {path}" for sev, path in bad))
    return f"helm lint (helm-sdkpy {helm_sdkpy_version()}): {len(messages)} message(s), all info"


def helm_sdkpy_version() -> str:
    from importlib.metadata import version

    return version("helm-sdkpy")


def validate_object(doc: dict) -> None:
    import jsonschema
    import kubernetes_validate

    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in crd_schemas.BY_KIND:
        errors = sorted(jsonschema.Draft202012Validator(crd_schemas.BY_KIND[key]).iter_errors(doc), key=str)
        need(not errors, f"{doc['kind']}/{doc['metadata'].get('name')}: " + "; ".join(
            f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors[:3]))
        return
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        raise Fail(f"{doc['kind']}/{doc['metadata'].get('name')}: {'.'.join(map(str, e.path))}: {e.message}")
    except kubernetes_validate.SchemaNotFoundError as e:
        raise Fail(f"no schema to validate {doc['kind']} {doc['apiVersion']}: {e.message}")


def check_chart_render(ctx: Ctx, name: str) -> str:
    rendered, docs = render_set(ctx, name)
    for _, doc in docs:
        validate_object(doc)
    kinds: dict[str, int] = {}
    for _, doc in docs:
        kinds[doc["kind"]] = kinds.get(doc["kind"], 0) + 1
    need(rendered.get("NOTES.txt", "").strip(), "NOTES.txt renders empty")
    return f"{len(docs)} objects valid (Kubernetes {KUBERNETES_VERSION}, strict): " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))


def objects(docs, kind: str) -> list[dict]:
    return [d for _, d in docs if d["kind"] == kind]


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def rendered_config(docs) -> tuple[str, dict]:
    cm = [d for d in objects(docs, "ConfigMap") if "aetheris.toml" in d["data"]]
    need(len(cm) == 1, "expected one ConfigMap with aetheris.toml")
    return cm[0]["data"]["aetheris.toml"], tomllib.loads(cm[0]["data"]["aetheris.toml"])


def check_chart_pods(ctx: Ctx, name: str) -> str:
    _, docs = render_set(ctx, name)
    values = chart_values(name)
    _, cfg = rendered_config(docs)
    uid, gid = dockerfile_uid()
    deployments = {d["spec"]["template"]["spec"]["containers"][0]["name"]: d for d in objects(docs, "Deployment")}
    need(set(deployments) == {"server", "worker"}, f"deployments {sorted(deployments)}")
    secret_names = {d["metadata"]["name"] for d in objects(docs, "Secret")}
    existing = {values["database"]["existingSecret"], values["keys"]["existingSecret"]}
    pods = [(d["metadata"]["name"], d["spec"]["template"]) for d in objects(docs, "Deployment")]
    pods += [(j["metadata"]["name"], j["spec"]["template"]) for j in objects(docs, "Job")]
    for pod_name, template in pods:
        spec = template["spec"]
        psc = spec.get("securityContext", {})
        need(psc.get("runAsNonRoot") is True and psc.get("runAsUser") == uid and psc.get("runAsGroup") == gid,
             f"{pod_name}: pod securityContext must run as non-root {uid}:{gid} (the image's USER)")
        need(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{pod_name}: seccompProfile RuntimeDefault")
        need(spec.get("automountServiceAccountToken") is False, f"{pod_name}: no service account token")
        for c in spec["containers"]:
            sc = c.get("securityContext", {})
            need(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
                 and sc.get("capabilities", {}).get("drop") == ["ALL"],
                 f"{pod_name}/{c['name']}: read-only root filesystem, no privilege escalation, drop ALL")
            need(c.get("args", [None])[0] in ctx.commands(), f"{pod_name}: args {c.get('args')} is not an aetheris command")
            need(c.get("resources", {}).get("requests"), f"{pod_name}/{c['name']}: resources.requests")
            need(any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", [])), f"{pod_name}: /tmp must be writable (emptyDir)")
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    need(ref["name"] in secret_names | existing, f"{pod_name}: env {e['name']} from unknown Secret {ref['name']}")
        for v in spec.get("volumes", []):
            if "secret" in v:
                need(v["secret"]["secretName"] in secret_names | existing, f"{pod_name}: unknown Secret {v['secret']['secretName']}")
    for comp, port_key, port in (("server", "http", port_of(cfg["gateway"]["bind"])), ("worker", "admin", port_of(cfg["worker"]["admin_bind"]))):
        d = deployments[comp]
        tpl = d["spec"]["template"]
        c = tpl["spec"]["containers"][0]
        need(matches(d["spec"]["selector"]["matchLabels"], tpl["metadata"]["labels"]), f"{comp}: selector does not match its pods")
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        need(ports.get(port_key) == port, f"{comp}: containerPort {port_key}={ports.get(port_key)}, aetheris listens on {port}")
        for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = c.get(probe, {}).get("httpGet", {})
            need(get.get("path") == path and get.get("port") == port_key, f"{comp}: {probe} must GET {path} on {port_key}")
        need(tpl["metadata"].get("annotations", {}).get("checksum/config"), f"{comp}: no config checksum annotation")
    worker = deployments["worker"]
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    drain = cfg["worker"]["drain_grace_ms"]
    need(grace * 1000 >= drain + 5000, f"worker terminationGracePeriodSeconds {grace} must exceed drain_grace_ms {drain} by 5 s")
    need(("replicas" in worker["spec"]) != values["keda"]["enabled"], "worker replicas must be set unless KEDA owns them")
    for svc in objects(docs, "Service"):
        target = [d for d in objects(docs, "Deployment") if matches(svc["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
        need(len(target) == 1, f"Service {svc['metadata']['name']} selects {len(target)} deployments")
        names = {p["name"] for p in target[0]["spec"]["template"]["spec"]["containers"][0]["ports"]}
        for p in svc["spec"]["ports"]:
            need(p["targetPort"] in names, f"Service {svc['metadata']['name']}: targetPort {p['targetPort']} not a container port")
    for pdb in objects(docs, "PodDisruptionBudget"):
        need(any(matches(pdb["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"])
                 for d in objects(docs, "Deployment")), f"PDB {pdb['metadata']['name']} selects nothing")
    for sm in objects(docs, "ServiceMonitor"):
        svcs = [s for s in objects(docs, "Service") if matches(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        need(svcs, f"ServiceMonitor {sm['metadata']['name']} selects no Service")
        for ep in sm["spec"]["endpoints"]:
            need(any(ep["port"] in {p["name"] for p in s["spec"]["ports"]} for s in svcs),
                 f"ServiceMonitor {sm['metadata']['name']}: no selected Service has port {ep['port']}")
            if ep["port"] == "http":
                need(ep.get("authorization", {}).get("credentials"), "the gateway's ServiceMonitor needs a bearer token")
    for so in objects(docs, "ScaledObject"):
        need(so["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"], "ScaledObject must scale the workers")
        ta = objects(docs, "TriggerAuthentication")
        db_ref = next(e["valueFrom"]["secretKeyRef"] for e in worker["spec"]["template"]["spec"]["containers"][0]["env"]
                      if e["name"] == "AETHERIS_DATABASE_URL")
        need(ta and ta[0]["spec"]["secretTargetRef"][0]["name"] == db_ref["name"]
             and ta[0]["spec"]["secretTargetRef"][0]["key"] == db_ref["key"], "KEDA must read the workers' database Secret")
    return (
        f"non-root {uid}:{gid}, read-only root fs; probes /healthz,/healthz,/readyz on the listening ports; "
        f"worker grace {grace}s > drain {drain / 1000:g}s; Services, PDBs"
        + (", ServiceMonitors, ScaledObject" if values["keda"]["enabled"] else "")
        + " select what they name"
    )


def documented_settings() -> set[str]:
    """`table.key` of every setting in docs/configuration.md's generated reference."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    ref = text.split("<!-- BEGIN settings", 1)[1].split("<!-- END settings", 1)[0]
    keys, table = set(), None
    for line in ref.splitlines():
        m = re.match(r"### `\[(\w+)\]`", line)
        if m:
            table = m.group(1)
        m = re.match(r"\| `(\w+)` \|", line)
        if m and table:
            keys.add(f"{table}.{m.group(1)}")
    need(len(keys) > 10, "could not read the settings of docs/configuration.md")
    return keys


def flatten(cfg: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in cfg.items():
        if isinstance(v, dict) and k != "limits":
            out |= flatten(v, f"{k}.")
        else:
            out.add(prefix + k)
    if "limits" in cfg:
        out |= {f"limits.{k}" for k in cfg["limits"]}
    return out


def check_chart_config(ctx: Ctx) -> str:
    """The rendered aetheris.toml: every command accepts it, with its files, up to the database."""
    seen: set[str] = set()
    starts = 0
    for name in VALUE_SETS:
        _, docs = render_set(ctx, name)
        text, cfg = rendered_config(docs)
        seen |= flatten(cfg)
        d = ctx.tmp / "chart-config" / name
        d.mkdir(parents=True)
        files = {}
        for secret in objects(docs, "Secret"):
            files.update(secret.get("stringData", {}))
        if not any(s["metadata"]["name"].endswith("-keys") for s in objects(docs, "Secret")):
            # The default values name an existing Secret: make the files it would hold.
            ctx.run(str(ctx.aetheris), "token", "keygen", "--hs256", "--out", str(d / "auth"))
            ctx.run(str(ctx.aetheris), "evidence", "keygen", "--out", str(d / "evidence"))
            files.update({"auth.key": (d / "auth.key").read_text(), "evidence.key": (d / "evidence.key").read_text()})
        (d / "keys").mkdir()
        for fname, content in files.items():
            if fname != "url":
                (d / "keys" / fname).write_text(content)
        cm = [c for c in objects(docs, "ConfigMap") if "aetheris.toml" in c["data"]][0]
        if "limits.json" in cm["data"]:
            (d / "limits.json").write_text(cm["data"]["limits.json"])
        local = text.replace("/etc/aetheris/keys/", f"{d}/keys/").replace("/etc/aetheris/limits.json", str(d / "limits.json"))
        local = re.sub(r'"0\.0\.0\.0:\d+"', '"127.0.0.1:0"', local)
        (d / "aetheris.toml").write_text(local)
        # A closed port: every check made before the database is touched must pass, so the
        # first error is the connection.
        env = ctx.env(AETHERIS_CONFIG=str(d / "aetheris.toml"), AETHERIS_DATABASE_URL="postgres://aetheris@127.0.0.1:1/aetheris")
        for command in AETHERIS_SERVICES:
            proc = ctx.run(str(ctx.aetheris), command, env=env, timeout=30)
            need(proc.returncode == 1 and "cannot connect to PostgreSQL" in proc.stderr,
                 f"{name}: `aetheris {command}` with the chart's aetheris.toml: {proc.stderr.strip()[-400:]}")
            starts += 1
    missing = documented_settings() - seen - {"database.url", "dev.data_dir"}
    need(not missing, f"settings of docs/configuration.md no value of the chart reaches: {sorted(missing)}")
    return (
        f"{starts} starts (server, worker, migrate × {len(VALUE_SETS)} value sets) pass every check up to the database; "
        "every documented setting but database.url (the Secret) and dev.data_dir is set by a value"
    )


def check_chart_migrations(ctx: Ctx) -> str:
    _, docs = render_set(ctx, "default")
    jobs = objects(docs, "Job")
    need(len(jobs) == 1, "the default values must render the migration Job")
    ann = jobs[0]["metadata"]["annotations"]
    need(ann.get("helm.sh/hook") == "pre-install,pre-upgrade", f"hook {ann.get('helm.sh/hook')}")
    need(ann.get("helm.sh/hook-delete-policy") == "before-hook-creation,hook-succeeded", f"delete policy {ann.get('helm.sh/hook-delete-policy')}")
    need(jobs[0]["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"], "the Job must run `aetheris migrate`")
    need(rendered_config(docs)[1]["database"]["no_migrate"] is True, "with the hook, servers and workers must not migrate")
    _, all_docs = render_set(ctx, "all-features")
    db = [s for s in objects(all_docs, "Secret") if s["metadata"]["name"].endswith("-database")]
    need(db and db[0]["metadata"]["annotations"].get("helm.sh/hook") == "pre-install,pre-upgrade"
         and int(db[0]["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(objects(all_docs, "Job")[0]["metadata"]["annotations"]["helm.sh/hook-weight"]),
         "a chart-made database Secret must be a hook created before the migration Job")
    _, ext = render_set(ctx, "external-migrations")
    need(not objects(ext, "Job"), "migrations.hook.enabled=false must render no Job")
    need(rendered_config(ext)[1]["database"]["no_migrate"] is False, "applyOnStart must let processes migrate")
    return "pre-install,pre-upgrade Job (before-hook-creation,hook-succeeded) runs `migrate`, pods no_migrate; switch: no Job, migrate at start"


def check_chart_rules(ctx: Ctx) -> str:
    need(ALERTS.is_file(), f"{ALERTS.relative_to(ROOT)} is missing")
    need((CHART / "files" / "alerts.yml").resolve() == ALERTS.resolve(), "files/alerts.yml must be a link to deploy/prometheus/alerts.yml")
    _, docs = render_set(ctx, "all-features")
    rules = objects(docs, "PrometheusRule")
    need(len(rules) == 1, "metrics.prometheusRule.enabled must render one PrometheusRule")
    want = yaml.safe_load(ALERTS.read_text())["groups"]
    need(rules[0]["spec"]["groups"] == want, "the PrometheusRule's groups differ from deploy/prometheus/alerts.yml")
    n = sum(len(g.get("rules") or []) for g in want)
    return f"PrometheusRule = deploy/prometheus/alerts.yml ({len(want)} groups, {n} rules)"


def check_chart_keda_docs(ctx: Ctx) -> str:
    text = (ROOT / "docs" / "deployment.md").read_text()
    blocks = re.findall(r"```sql\n(.*?)```", text, re.S)
    norm = lambda s: " ".join(s.split()).rstrip(";")  # noqa: E731
    query = keda_query(ctx)
    need(any(norm(b) == norm(query) for b in blocks), "docs/deployment.md has no ```sql block equal to the chart's KEDA query")
    return "the ScaledObject's query is docs/deployment.md's (its count on a live database: the live check)"


# ---------------------------------------------------------------------------------------
# Controls: each kind of check fails when its input is broken on purpose.


def check_controls(ctx: Ctx) -> str:
    # kubernetes-validate is strict: an unknown field fails.
    _, docs = render_set(ctx, "default")
    bad = json.loads(json.dumps(objects(docs, "Deployment")[0]))
    bad["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with expect_fail("strict validation of a Deployment with a misspelt field"):
        validate_object(bad)
    bad = json.loads(json.dumps(objects(render_set(ctx, "all-features")[1], "ScaledObject")[0]))
    bad["spec"]["triggers"][0]["metadata"]["targetQueryValue"] = 64
    with expect_fail("a ScaledObject with a number where KEDA wants a string"):
        validate_object(bad)
    # A template's own `fail` is reported by the renderer.
    chart = prepared_chart(ctx, "control", {"worker": {"terminationGracePeriodSeconds": 10}})
    _, problems = helm_render.render(chart, ctx.tmp / "charts" / "control")
    need(any("terminationGracePeriodSeconds" in p for p in problems), f"a too short worker grace rendered without error: {problems}")
    # values.schema.json: a misspelt value fails lint.
    typo = prepared_chart(ctx, "control-typo", {"worker": {"maxjobs": 8}})
    need(any(sev == "error" for sev, _ in helm_render.lint(typo)), "lint accepted the misspelt value worker.maxjobs")
    # A key file the settings name but keys.files lacks.
    missing = prepared_chart(ctx, "control-keys", {"keys": {"files": {"auth.key": "hex:00"}}})
    _, problems = helm_render.render(missing, ctx.tmp / "charts" / "control-keys")
    need(any("evidence.key" in p for p in problems), f"keys.files without evidence.key rendered without error: {problems}")
    # A template that does not parse is an error of lint and of the renderer.
    (chart / "templates" / "broken.yaml").write_text("{{ if }}\n")
    need(any(sev == "error" for sev, _ in helm_render.lint(chart)), "lint accepted a template that does not parse")
    _, problems = helm_render.render(chart, ctx.tmp / "charts" / "control")
    need(problems, "the renderer accepted a template that does not parse")
    # compose: a command aetheris does not have.
    compose = load_compose()
    compose["services"]["worker"]["command"] = ["wrker"]
    with expect_fail("a compose service running `aetheris wrker`"):
        check_compose_services(ctx, compose)
    # The image context without the migrations the store embeds.
    ignore = (ROOT / ".dockerignore").read_text().replace("!migrations/\n", "")
    with expect_fail("a build context without migrations/"):
        verify_context(ctx, context_files(ignore), ctx.tmp / "docker-context-control")
    return (
        "strict schema, CRD schema, values schema, template fails (grace, key files), unparsable template, "
        "unknown command, incomplete image context: each caught"
    )


@contextlib.contextmanager
def expect_fail(what: str):
    try:
        yield
    except Fail:
        return
    raise Fail(f"not caught: {what}")


# ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--aetheris", default=str(ROOT / "target" / "debug" / "aetheris"), help="the aetheris binary")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory and print its path")
    args = parser.parse_args()
    aetheris = Path(args.aetheris).resolve()
    if not aetheris.is_file():
        print(f"deploy-checks: {aetheris} not found: build it (cargo build) or pass --aetheris", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="aetheris-deploy-checks-"))
    os.chmod(tmp, 0o755)  # PostgreSQL's own user must reach its directory below
    ctx = Ctx(aetheris, tmp)
    checks = [
        ("dockerfile: Rust version", check_dockerfile_rust),
        ("dockerfile: stages", check_dockerfile_runtime),
        ("dockerfile: build context", check_dockerfile_context),
        ("dockerfile: healthcheck script", check_healthcheck),
        ("compose: services", check_compose_services),
        ("compose: files", check_compose_files),
        ("compose: ports", check_compose_ports),
        ("compose: init-secrets", check_init_secrets),
        ("compose: settings", check_compose_settings),
        ("compose: prometheus", check_promtool),
        ("compose: live run", check_live),
    ]
    for name in VALUE_SETS:
        checks += [
            (f"chart: lint [{name}]", lambda c, n=name: check_chart_lint(c, n)),
            (f"chart: render + validate [{name}]", lambda c, n=name: check_chart_render(c, n)),
            (f"chart: pods [{name}]", lambda c, n=name: check_chart_pods(c, n)),
        ]
    checks += [
        ("chart: aetheris.toml", check_chart_config),
        ("chart: migrations", check_chart_migrations),
        ("chart: alert rules", check_chart_rules),
        ("chart: KEDA query", check_chart_keda_docs),
        ("controls", check_controls),
    ]
    passed = failed = 0
    started = time.time()
    try:
        for name, fn in checks:
            t0 = time.time()
            try:
                detail = fn(ctx)
                passed += 1
                print(f"ok    {name}: {detail} ({time.time() - t0:.1f}s)", flush=True)
            except Fail as e:
                failed += 1
                print(f"FAIL  {name}: {e}", flush=True)
            except Exception as e:  # a bug of the check itself, or a tool missing: still a failure
                failed += 1
                print(f"FAIL  {name}: {type(e).__name__}: {e}", flush=True)
                traceback.print_exc(limit=3)
    finally:
        if ctx.live_pg:
            ctx.live_pg.stop()
        if args.keep:
            print(f"deploy-checks: scratch directory kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"deploy-checks: {time.time() - started:.0f}s")
    print(f"deploy: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
