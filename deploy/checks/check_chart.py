"""Checks of the Helm chart deploy/helm/aetheris: lint, render, validation, cross-checks."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

import crd_schemas
import helm_render
from check_image import dockerfile_uid
from common import (
    AETHERIS_SERVICES, ALERTS, CHART, KUBERNETES_VERSION, ROOT, Ctx, Fail, need, port_of,
)

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
        for extra in ("limits.json", "llm.json"):
            if extra in cm["data"]:
                (d / extra).write_text(cm["data"][extra])
        local = text.replace("/etc/aetheris/keys/", f"{d}/keys/")
        for extra in ("limits.json", "llm.json"):
            local = local.replace(f"/etc/aetheris/{extra}", str(d / extra))
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

def keda_query(ctx: Ctx) -> str:
    docs = [doc for _, doc in render_set(ctx, "all-features")[1] if doc["kind"] == "ScaledObject"]
    need(docs, "the all-features render has no ScaledObject")
    return docs[0]["spec"]["triggers"][0]["metadata"]["query"]
