"""Checks of deploy/Dockerfile, .dockerignore and the image's healthcheck script."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import tomllib
from pathlib import Path

import dockerignore
from common import DEPLOY, ROOT, Ctx, free_port, need, stop

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
