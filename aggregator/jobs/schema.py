"""The job spec's JSON Schema (draft 2020-12), built from the constants paroma/jobspec.py
validates against, so the published schema and the parser cannot drift apart.

The schema describes the document a data scientist writes (TOML or JSON): what
``parse_job_spec`` accepts. A few checks need more than a schema can say (a plan's sha256
matching its file, a feature spec file existing); the parser makes those.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from clinical_node.features import ENCODINGS, SOURCES, SPLITS
from clinical_node.plans import BUILTIN_PLANS
from paroma.jobspec import BUILTIN_FEATURE_SPECS, PRIVACY_MODES, PURPOSES, STRATEGIES

SCHEMA_ID = "https://paroma-med.eu/schemas/job-spec.schema.json"
SCHEMA_FILE = Path(__file__).with_name("job-spec.schema.json")


def _number(lo: float, hi: float, default: float, description: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"type": "number", "minimum": lo, "maximum": hi, "default": default}
    if description:
        out["description"] = description
    return out


def _integer(lo: int, hi: int, default: int, description: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"type": "integer", "minimum": lo, "maximum": hi, "default": default}
    if description:
        out["description"] = description
    return out


_CODE = {
    "type": "string",
    "minLength": 1,
    "pattern": r"^([^|]*\|)?[^|]+$",
    "description": "'system|code' or 'code'",
}

_FEATURE = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "source": {"enum": list(SOURCES), "default": "observation"},
        "code": _CODE,
        "encoding": {"enum": list(ENCODINGS), "default": "numeric"},
        "categories": {"type": "array", "items": {"type": ["string", "number"]}},
        "drop_first": {"type": "boolean"},
        "true_values": {"type": "array", "items": {"type": "string"}},
        "missing": {"oneOf": [{"enum": ["drop", "mean"]}, {"type": "number"}], "default": "drop"},
        "absent_value": {"type": "number"},
    },
    # an Observation feature is read by its code (FHIR Observation.code)
    "if": {"not": {"required": ["source"]}},
    "then": {"required": ["code"]},
    "else": {"if": {"properties": {"source": {"const": "observation"}}}, "then": {"required": ["code"]}},
}

_FEATURE_SPEC = {
    "type": "object",
    "description": "An inline feature spec: FHIR codes to model inputs and the label",
    "required": ["name", "features", "label"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "features": {"type": "array", "minItems": 1, "items": _FEATURE},
        "label": {
            "type": "object",
            "required": ["code"],
            "properties": {
                "code": _CODE,
                "rule": {"enum": ["gt", "ge", "eq", "in"], "default": "gt"},
                "threshold": {"type": "number", "default": 0},
                "values": {"type": "array"},
            },
        },
        "normalization": {"enum": ["zscore", "none"], "default": "zscore"},
        "split": {
            "type": "object",
            "properties": {
                "method": {"enum": list(SPLITS), "default": "hash"},
                "test_fraction": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                "seed": {"type": "integer"},
            },
        },
        "reference_date": {"type": "string"},
    },
}


def build_job_spec_schema() -> dict[str, Any]:
    """The schema, as a JSON-ready dict."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "PAROMA-MED job spec",
        "description": "A federated training job: purpose of use, data, training plan, strategy, privacy, deadline.",
        "type": "object",
        "required": ["name", "purpose", "organization", "data", "plan"],
        "properties": {
            "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$"},
            "purpose": {"enum": list(PURPOSES), "description": "purpose of use (HL7 v3-ActReason)"},
            "organization": {
                "type": "string",
                "minLength": 1,
                "description": "the requesting organisation (FHIR reference, e.g. Organization/x)",
            },
            "rounds": _integer(1, 10_000, 3),
            "min_sites": _integer(1, 10_000, 2, "fewest admitting sites the job runs with"),
            "seed": _integer(0, 2**31 - 1, 42),
            "data": {
                "type": "object",
                "description": "the feature spec: a built-in one by name, a .toml file, or inline [data.features]",
                "properties": {
                    "spec": {
                        "anyOf": [
                            {"enum": list(BUILTIN_FEATURE_SPECS)},
                            {"type": "string", "pattern": r"\.toml$"},
                        ]
                    },
                    "features": _FEATURE_SPEC,
                },
                "anyOf": [{"required": ["features"]}, {"required": ["spec"]}],
            },
            "plan": {
                "type": "object",
                "required": ["reference"],
                "properties": {
                    "reference": {
                        "type": "string",
                        "minLength": 1,
                        "description": f"a built-in plan ({', '.join(BUILTIN_PLANS)}) or a plan file",
                    },
                    "sha256": {
                        "type": "string",
                        "pattern": "^[0-9a-f]{64}$",
                        "description": "the plan's sha256 (computed from the reference when absent)",
                    },
                },
            },
            "strategy": {
                "type": "object",
                "properties": {
                    "name": {"enum": list(STRATEGIES), "default": "fedavg"},
                    "params": {"type": "object", "additionalProperties": {"type": "number"}},
                },
            },
            "training": {
                "type": "object",
                "properties": {
                    "lr": _number(1e-8, 10.0, 0.01),
                    "local_steps": _integer(1, 1_000_000, 100),
                    "batch_size": _integer(1, 1_000_000, 4),
                    "optimizer": {"enum": ["sgd", "adam"], "default": "sgd"},
                    "momentum": _number(0.0, 0.999, 0.0),
                    "weight_decay": _number(0.0, 100.0, 0.0),
                    "lr_decay": _number(0.01, 1.0, 1.0, "the learning rate is multiplied by this each round"),
                    "hidden": _integer(1, 4096, 16),
                },
            },
            "privacy": {
                "type": "object",
                "properties": {
                    "clip_norm": _number(0.0, 1e6, 0.0, "0: the job asks for no clipping"),
                    "noise_multiplier": _number(0.0, 1e3, 0.0),
                    "delta": _number(1e-12, 0.1, 1e-5),
                    "secure_aggregation": {"type": "boolean", "default": False},
                    "mode": {"enum": list(PRIVACY_MODES), "default": "site"},
                },
                "allOf": [
                    {
                        "if": {"required": ["mode"], "properties": {"mode": {"not": {"const": "site"}}}},
                        "then": {
                            "required": ["noise_multiplier"],
                            "properties": {"noise_multiplier": {"exclusiveMinimum": 0}},
                        },
                    },
                    {
                        "if": {"required": ["mode"], "properties": {"mode": {"const": "server-fixed"}}},
                        "then": {
                            "required": ["clip_norm"],
                            "properties": {"clip_norm": {"exclusiveMinimum": 0}},
                        },
                    },
                ],
            },
            "deadline": {
                "type": "object",
                "properties": {
                    "round_timeout_s": _number(1.0, 7 * 24 * 3600.0, 600.0),
                    "at": {"type": ["string", "null"], "format": "date-time"},
                },
            },
        },
    }


@cache
def job_spec_schema() -> dict[str, Any]:
    """The published schema (the committed file, which a test keeps equal to the built one)."""
    data: dict[str, Any] = json.loads(SCHEMA_FILE.read_text())
    return data


def write_schema(path: Path = SCHEMA_FILE) -> None:
    path.write_text(json.dumps(build_job_spec_schema(), indent=2) + "\n")
