"""Strict JSON Schemas of the custom resources the chart makes, for the fields it uses.

kubernetes-validate knows the built-in kinds only. These schemas follow the CRDs of
prometheus-operator (monitoring.coreos.com/v1 ServiceMonitor, PrometheusRule) and KEDA
(keda.sh/v1alpha1 ScaledObject, TriggerAuthentication): each field the chart writes, with
its type and required siblings, and nothing else (`additionalProperties: false`), so a
misspelt or misplaced field fails here as the API server would refuse it. Fields the
chart never writes are not described; a chart change that adds one must add it here,
after checking it against the operator's CRD.
"""

from __future__ import annotations

STR = {"type": "string"}
INT = {"type": "integer"}
MAP_STR = {"type": "object", "additionalProperties": {"type": "string"}}


def obj(required: list[str], **props) -> dict:
    return {"type": "object", "required": required, "properties": props, "additionalProperties": False}


METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": STR, "namespace": STR, "labels": MAP_STR, "annotations": MAP_STR},
    "additionalProperties": False,
}

LABEL_SELECTOR = obj([], matchLabels=MAP_STR)

SECRET_KEY = obj(["name", "key"], name=STR, key=STR, optional={"type": "boolean"})

SERVICE_MONITOR = obj(
    ["apiVersion", "kind", "metadata", "spec"],
    apiVersion={"const": "monitoring.coreos.com/v1"},
    kind={"const": "ServiceMonitor"},
    metadata=METADATA,
    spec=obj(
        ["selector", "endpoints"],
        selector=LABEL_SELECTOR,
        endpoints={
            "type": "array",
            "minItems": 1,
            "items": obj(
                [],
                port=STR,
                path={"type": "string", "pattern": "^/"},
                interval={"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                scrapeTimeout={"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                authorization=obj(["credentials"], type=STR, credentials=SECRET_KEY),
            ),
        },
    ),
)

RULE = {
    "type": "object",
    "required": ["expr"],
    "properties": {
        "alert": STR,
        "record": STR,
        "expr": {"anyOf": [STR, INT]},
        "for": STR,
        "keep_firing_for": STR,
        "labels": MAP_STR,
        "annotations": MAP_STR,
    },
    "additionalProperties": False,
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
}

PROMETHEUS_RULE = obj(
    ["apiVersion", "kind", "metadata", "spec"],
    apiVersion={"const": "monitoring.coreos.com/v1"},
    kind={"const": "PrometheusRule"},
    metadata=METADATA,
    spec=obj(
        ["groups"],
        groups={
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "interval": STR,
                    "limit": INT,
                    "labels": MAP_STR,
                    "query_offset": STR,
                    "rules": {"type": "array", "items": RULE},
                },
                "additionalProperties": False,
            },
        },
    ),
)

TRIGGER_AUTHENTICATION = obj(
    ["apiVersion", "kind", "metadata", "spec"],
    apiVersion={"const": "keda.sh/v1alpha1"},
    kind={"const": "TriggerAuthentication"},
    metadata=METADATA,
    spec=obj(
        [],
        secretTargetRef={
            "type": "array",
            "items": obj(["parameter", "name", "key"], parameter=STR, name=STR, key=STR),
        },
    ),
)

SCALED_OBJECT = obj(
    ["apiVersion", "kind", "metadata", "spec"],
    apiVersion={"const": "keda.sh/v1alpha1"},
    kind={"const": "ScaledObject"},
    metadata=METADATA,
    spec=obj(
        ["scaleTargetRef", "triggers"],
        scaleTargetRef=obj(["name"], apiVersion=STR, kind=STR, name=STR),
        minReplicaCount={"type": "integer", "minimum": 0},
        maxReplicaCount={"type": "integer", "minimum": 1},
        pollingInterval={"type": "integer", "minimum": 1},
        cooldownPeriod={"type": "integer", "minimum": 0},
        # Passed through from values (keda.advanced): KEDA's own schema applies.
        advanced={"type": "object"},
        triggers={
            "type": "array",
            "minItems": 1,
            "items": obj(
                ["type", "metadata"],
                type=STR,
                name=STR,
                # KEDA's trigger metadata is a map of strings.
                metadata=MAP_STR,
                authenticationRef=obj(["name"], name=STR, kind={"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]}),
            ),
        },
    ),
)

BY_KIND = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): TRIGGER_AUTHENTICATION,
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT,
}
