"""klq/api_types.py is what scripts/gen_api_types.py makes from the API's OpenAPI document today, and every
type that klq.client's methods name exists there (tests/frontend/test_frontend_client.py checks the
server's answers against those types)."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path
from typing import get_type_hints

import pandas as pd
import pytest

from klq import api_types
from klq.client import Client

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("gen_api_types", ROOT / "scripts" / "gen_api_types.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_committed_types_are_current(gen):
    doc, prefix = gen.openapi_document()
    assert (ROOT / "klq" / "api_types.py").read_text() == gen.render(doc, prefix), (
        "klq/api_types.py is out of date with backend/schemas.py: run python scripts/gen_api_types.py"
    )


def test_check_mode_exit_status(gen, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gen, "OUT", tmp_path / "api_types.py")
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    assert gen.main(["--check"]) == 1  # missing
    assert "run python scripts/gen_api_types.py" in capsys.readouterr().err
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0
    (tmp_path / "api_types.py").write_text((tmp_path / "api_types.py").read_text().replace("last_error", "x"))
    assert gen.main(["--check"]) == 1


def test_every_response_model_has_a_type(gen):
    """Each schema a response refers to gets its TypedDict with the same field names (its name without
    ``Out``), and the types are exactly those."""
    doc, prefix = gen.openapi_document()
    schemas = doc["components"]["schemas"]
    models = gen.response_models(doc, prefix)
    assert {"RunDetail", "JudgementOut", "ExperimentResults", "SampleOut", "LatestValue"} <= set(models)
    assert models["RunDetail"] == [
        "POST /runs",
        "GET /runs/{run_id}",
        "PATCH /runs/{run_id}",
        "POST /runs/{run_id}/cancel",
        "POST /runs/{run_id}/clone",
    ]
    for name in models:
        typed = getattr(api_types, gen.client_name(name))
        assert list(typed.__annotations__) == list(schemas[name]["properties"]), name
    assert sorted(api_types.__all__) == sorted(gen.client_name(n) for n in models)


def test_type_rendering(gen):
    assert gen.py_type({"anyOf": [{"type": "string"}, {"type": "null"}]}) == "str | None"
    assert (
        gen.py_type({"type": "array", "items": {"$ref": "#/components/schemas/SampleOut"}}) == "list[Sample]"
    )
    assert gen.py_type({"type": "object", "additionalProperties": {"type": "number"}}) == "dict[str, float]"
    assert gen.py_type({"type": "object", "additionalProperties": True}) == "dict[str, Any]"
    assert gen.py_type({"type": "string", "enum": ["ab", "ba"]}) == 'Literal["ab", "ba"]'
    assert gen.py_type({"type": ["integer", "null"]}) == "int | None"
    with pytest.raises(ValueError, match="unsupported"):
        gen.py_type({"type": "tuple"})


def test_client_annotations_name_existing_types():
    """Every public method's annotations resolve (a type renamed by the generator would break this)."""
    for name, method in inspect.getmembers(Client, inspect.isfunction):
        if not name.startswith("_"):
            get_type_hints(method, localns={"pd": pd})
