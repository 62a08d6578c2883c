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

The checks live in check_image.py, check_compose.py and check_chart.py (shared pieces in
common.py; helm_render.py, crd_schemas.py and dockerignore.py are their tools); this file
runs them, and the controls. Run from anywhere:
`python3 deploy/checks/deploy_checks.py [--aetheris target/debug/aetheris] [--keep]`. Needs PyYAML, helm-sdkpy, kubernetes-validate (PyPI), promtool and PostgreSQL's server
binaries (.ci/run installs them). Ends with `deploy: N passed, M failed`; exit 1 if
any failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import helm_render  # noqa: E402
from check_chart import (  # noqa: E402
    VALUE_SETS, check_chart_config, check_chart_keda_docs, check_chart_lint, check_chart_migrations,
    check_chart_pods, check_chart_render, check_chart_rules, objects, prepared_chart, render_set,
    validate_object,
)
from check_compose import (  # noqa: E402
    check_compose_files, check_compose_ports, check_compose_services, check_compose_settings,
    check_init_secrets, check_live, check_promtool,
)
from check_image import (  # noqa: E402
    check_dockerfile_context, check_dockerfile_runtime, check_dockerfile_rust, check_healthcheck,
    context_files, verify_context,
)
from common import ROOT, Ctx, Fail, load_compose, need  # noqa: E402


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
