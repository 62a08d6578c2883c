"""What every deploy check shares: paths, the failure type, the scratch context, and small
helpers for processes, ports and HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import yaml

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
        self.live_pg = None  # check_compose.PgCluster of the live run; main stops it

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
