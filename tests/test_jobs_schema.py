"""The published job spec schema: the committed file is the one built from paroma/jobspec.py's
constants, it accepts the shipped example, and it rejects what parse_job_spec rejects."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest

from aggregator.jobs.schema import SCHEMA_FILE, build_job_spec_schema, job_spec_schema
from paroma.jobspec import JobSpec, JobSpecError, parse_job_spec

EXAMPLE = Path(__file__).parent.parent / "aggregator" / "jobs" / "examples" / "heart.toml"


def example() -> dict:
    return tomllib.loads(EXAMPLE.read_text())


def schema_errors(doc: object) -> list[str]:
    validator = jsonschema.Draft202012Validator(job_spec_schema())
    return sorted(
        ".".join(str(p) for p in e.absolute_path) or "(document)" for e in validator.iter_errors(doc)
    )


def test_the_committed_schema_is_the_built_one_and_is_valid() -> None:
    assert json.loads(SCHEMA_FILE.read_text()) == build_job_spec_schema(), (
        "regenerate with: python -c 'from aggregator.jobs.schema import write_schema; write_schema()'"
    )
    jsonschema.Draft202012Validator.check_schema(job_spec_schema())


def test_the_example_spec_is_valid_for_both() -> None:
    assert schema_errors(example()) == []
    job = JobSpec.from_toml(EXAMPLE)
    assert (job.name, job.purpose, job.rounds, job.min_sites) == ("heart-disease-lr", "HRESCH", 3, 2)
    # the canonical JSON form the services exchange is valid too
    assert schema_errors(job.to_dict()) == []


def _with(path: str, value: object) -> dict:
    doc = example()
    *parents, last = path.split(".")
    table = doc
    for key in parents:
        table = table.setdefault(key, {})
    if value is _DELETE:
        del table[last]
    else:
        table[last] = value
    return doc


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("purpose", "FUN"),
        ("purpose", _DELETE),
        ("name", "has spaces"),
        ("rounds", 0),
        ("min_sites", "two"),
        ("strategy.name", "fedmagic"),
        ("strategy.params", {"proximal_mu": "high"}),
        ("training.lr", -1),
        ("training.optimizer", "rmsprop"),
        ("training.local_steps", 1.5),
        ("plan.sha256", "XYZ"),
        ("privacy.secure_aggregation", "yes"),
        ("privacy.mode", "server-fixed"),  # needs clip_norm > 0 and a noise multiplier
        ("privacy.mode", "laplace"),
        ("deadline.round_timeout_s", 0),
        ("data.spec", "unknown-spec"),
    ],
)
def test_the_schema_rejects_what_the_parser_rejects(path: str, value: object) -> None:
    doc = _with(path, value)
    with pytest.raises(JobSpecError) as caught:
        parse_job_spec(doc, base=EXAMPLE.parent)
    fields = {f for f, _ in caught.value.problems}
    errors = schema_errors(doc)
    assert errors, f"the schema accepts {path} = {value!r}, which the parser rejects ({caught.value})"
    # both name the same place (the schema names the table when a required key is missing)
    top = path.split(".")[0]
    assert any(f.startswith(top) for f in fields)
    assert any(e.startswith(top) or e == "(document)" for e in errors)


def test_paroma_job_schema_prints_it(tmp_path: Path) -> None:
    out = tmp_path / "schema.json"
    result = subprocess.run(
        [sys.executable, "-m", "paroma.cli", "job", "schema", "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text()) == job_spec_schema()
