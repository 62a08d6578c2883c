"""Lint and render the Helm chart with Helm's own Go engine, offline, through helm-sdkpy.

helm-sdkpy (PyPI) ships Helm's library but binds only `lint` of the chart commands, not
`template`, and its lint result keeps each message's severity and file but drops the
text. Rendering therefore goes through lint too: in a throw-away copy of the chart, the
templates are moved out of templates/ (to dump/) and one template renders each of them
with Helm's `tpl` against the same values and release, and hands the text to `fail`. In
lint mode Helm's `fail` does not stop: it logs its message (on the Go library's stderr)
and goes on. The rendered manifests are read back from those log lines, between markers.
Any other `fail`/`required` message is a real failure of a template, reported as such.
The values are set by writing the merged values.yaml into the copy (lint reads only
that file). Every call runs in a child Python, whose stderr is the Go library's.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

# Helm's lint severities (pkg/lint/support): 1 info, 2 warning, 3 error.
SEVERITY = {0: "unknown", 1: "info", 2: "warning", 3: "error"}

BEGIN, END = "@@AETHERIS-RENDER ", "@@AETHERIS-END@@"

DUMP_TEMPLATE = (
    '{{- range $path, $_ := .Files.Glob "dump/*" }}\n'
    '{{- fail (printf "' + BEGIN + '%s@@\\n%s\\n' + END + '" $path (tpl ($.Files.Get $path) $)) }}\n'
    "{{- end }}\n"
)

LINT_CHILD = """
import asyncio, json, sys
import helm_sdkpy
config = helm_sdkpy.Configuration(kubeconfig=None)
result = asyncio.run(helm_sdkpy.Lint(config).run(sys.argv[1]))
print(json.dumps(result))
"""


class HelmError(Exception):
    pass


def merge(base: dict, override: dict) -> dict:
    """Values merged as Helm merges a values file over the chart's (maps deep, the rest replaced)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def prepare(chart: Path, overrides: dict, dest: Path) -> Path:
    """A copy of `chart` (symbolic links followed, as Helm loads them) with the merged values."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(chart, dest, symlinks=False, ignore=shutil.ignore_patterns("ci"))
    values = yaml.safe_load((chart / "values.yaml").read_text()) or {}
    (dest / "values.yaml").write_text(yaml.safe_dump(merge(values, overrides), sort_keys=False))
    return dest


def _lint_run(chart: Path) -> tuple[dict, str]:
    proc = subprocess.run(
        [sys.executable, "-c", LINT_CHILD, str(chart)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        raise HelmError(f"helm-sdkpy lint of {chart} crashed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout), proc.stderr


def lint(chart: Path) -> list[tuple[str, str]]:
    """Helm lint's messages as (severity, file)."""
    result, _ = _lint_run(chart)
    return [(SEVERITY.get(m.get("Severity"), "?"), m.get("Path", "?")) for m in result.get("Messages") or []]


def _go_unquote(body: str) -> str:
    """The text of a Go-quoted string's body (strconv.Quote escapes)."""
    return body.encode("latin-1", "backslashreplace").decode("unicode_escape")


def render(chart: Path, work: Path) -> tuple[dict[str, str], list[str]]:
    """Renders every template of `chart` (already `prepare`d): {template: text}, problems."""
    copy_dir = work / (chart.name + "-render")
    if copy_dir.exists():
        shutil.rmtree(copy_dir)
    shutil.copytree(chart, copy_dir, symlinks=False)
    dump = copy_dir / "dump"
    dump.mkdir()
    templates = copy_dir / "templates"
    names = []
    for f in sorted(templates.iterdir()):
        if not f.name.startswith("_"):
            f.rename(dump / f.name)
            names.append(f.name)
    (templates / "zz-render.yaml").write_text(DUMP_TEMPLATE)
    result, stderr = _lint_run(copy_dir)
    rendered: dict[str, str] = {}
    problems: list[str] = []
    for m in re.finditer(r'funcMap (\w+) message="((?:[^"\\]|\\.)*)"', stderr):
        text = _go_unquote(m.group(2))
        if m.group(1) == "fail" and text.startswith(BEGIN) and text.endswith(END):
            head, _, body = text.partition("\n")
            rendered[head[len(BEGIN) : -2].removeprefix("dump/")] = body[: -len(END)]
        else:
            problems.append(f"template {m.group(1)}: {text}")
    for m in result.get("Messages") or []:
        if m.get("Severity", 0) >= 2:
            problems.append(f"Helm lint {SEVERITY.get(m.get('Severity'))} in {m.get('Path')} while rendering")
    missing = [n for n in names if n not in rendered]
    if missing:
        problems.append(
            f"not rendered: {', '.join(missing)} (a template failed; helm-sdkpy drops Helm's error "
            "text: `helm template` on a machine with helm shows it)"
        )
    return rendered, problems


def documents(rendered: dict[str, str]) -> list[tuple[str, dict]]:
    """The Kubernetes objects of the rendered .yaml templates, as (template, object)."""
    out = []
    for name, text in sorted(rendered.items()):
        if not name.endswith(".yaml"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                out.append((name, doc))
    return out
