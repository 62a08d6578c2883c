"""Checks of deploy/compose.yaml and its files, and the live run of its aetheris services."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import yaml

from check_chart import keda_query
from common import (
    AETHERIS_SERVICES, ALERTS, DASHBOARD, DEPLOY, ROOT, Ctx, Fail, aetheris_env, duration_s, free_port, http,
    load_compose, load_compose_toml, need, port_of, stop,
)

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

