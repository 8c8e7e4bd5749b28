"""Write klq/api_types.py: one ``TypedDict`` per response model of the REST API, made from the OpenAPI
document of ``backend.main``'s app, so that the client's types cannot drift from backend/schemas/.

    python scripts/gen_api_types.py           # rewrite klq/api_types.py
    python scripts/gen_api_types.py --check   # exit 1 if the committed file is out of date

tests/test_api_types.py runs the check. This script imports backend (a dev tool, outside the library's
import graph); the module it writes imports only ``typing``.

Which models: every schema that a JSON 2xx response of a path refers to, and every schema those refer to.
Names are backend's without an ``Out`` suffix (``JudgementOut`` -> ``Judgement``). Every property is a
required key, also one with a default (the API sends fields with defaults, FastAPI's default); date-times
are ISO 8601 strings.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "klq" / "api_types.py"
COMMAND = "python scripts/gen_api_types.py"
WIDTH = 110
REF_PREFIX = "#/components/schemas/"
SCALARS = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "null": "None"}


def openapi_document() -> tuple[dict[str, Any], str]:
    """The API's OpenAPI document (as GET /api/v1/openapi.json serves it; no database needed) and the
    prefix of its paths (``/api/v1``, which the client's base URL carries)."""
    sys.path.insert(0, str(ROOT))
    from backend.main import API_PREFIX, create_app

    return create_app().openapi(), API_PREFIX


def client_name(schema_name: str) -> str:
    """The TypedDict's name for a component schema: ``SampleOut`` -> ``Sample`` (``-Output``: pydantic's
    name of a model's serialization schema when it differs from its input one)."""
    name = schema_name.removesuffix("-Output")
    if name.endswith("Out") and len(name) > 3:
        name = name[:-3]
    if not name.isidentifier():
        raise ValueError(f"schema {schema_name!r} makes no Python name")
    return name


def _refs(schema: Any) -> Iterator[str]:
    """Names of the component schemas that a schema refers to, directly or inside nested schemas."""
    if isinstance(schema, Mapping):
        ref = schema.get("$ref")
        if isinstance(ref, str):
            yield ref.removeprefix(REF_PREFIX)
        for value in schema.values():
            yield from _refs(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from _refs(item)


def response_models(doc: Mapping[str, Any], prefix: str) -> dict[str, list[str]]:
    """Every schema a response refers to (transitively), mapped to the operations that return it directly
    (``GET /runs/{run_id}``; a list of it counts) - empty for one that is only nested in others."""
    components = doc["components"]["schemas"]
    returned: dict[str, list[str]] = {}
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            for status, response in op.get("responses", {}).items():
                schema = (response.get("content") or {}).get("application/json", {}).get("schema")
                if not status.startswith("2") or not schema:
                    continue
                for name in _refs(schema):
                    returned.setdefault(name, [])
                ref = schema.get("items", schema).get("$ref")
                if ref:
                    returned[ref.removeprefix(REF_PREFIX)].append(
                        f"{method.upper()} {path.removeprefix(prefix)}"
                    )
    todo = list(returned)
    while todo:
        for name in _refs(components[todo.pop()]):
            if name not in returned:
                returned[name] = []
                todo.append(name)
    return returned


def py_type(schema: Mapping[str, Any]) -> str:
    """The Python annotation of a JSON schema, as text (``list[float | None]``)."""
    if "$ref" in schema:
        return client_name(schema["$ref"].removeprefix(REF_PREFIX))
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return _union(py_type(s) for s in schema[key])
    if "allOf" in schema:
        if len(schema["allOf"]) != 1:
            raise ValueError(f"allOf of {len(schema['allOf'])} schemas is not supported: {schema}")
        return py_type(schema["allOf"][0])
    if "const" in schema:
        return f"Literal[{json.dumps(schema['const'])}]"
    if "enum" in schema:
        return "Literal[" + ", ".join(json.dumps(v) for v in schema["enum"]) + "]"
    kind = schema.get("type")
    if isinstance(kind, list):
        return _union(py_type({**schema, "type": k}) for k in kind)
    if kind in SCALARS:
        return SCALARS[kind]
    if kind == "array":
        return f"list[{py_type(schema['items']) if 'items' in schema else 'Any'}]"
    if kind == "object" or kind is None and "additionalProperties" in schema:
        values = schema.get("additionalProperties")
        return f"dict[str, {py_type(values) if isinstance(values, Mapping) else 'Any'}]"
    if kind is None:
        return "Any"
    raise ValueError(f"unsupported JSON schema: {schema}")


def _union(parts: Iterator[str]) -> str:
    return " | ".join(dict.fromkeys(parts))


def _comment(text: str, indent: str) -> list[str]:
    return textwrap.wrap(
        " ".join(text.split()),
        WIDTH - len(indent) - 2,
        initial_indent=f"{indent}# ",
        subsequent_indent=f"{indent}# ",
        break_on_hyphens=False,
    )


def render_class(
    schema_name: str, schema: Mapping[str, Any], returned_by: list[str], used_in: list[str]
) -> list[str]:
    """The lines of one TypedDict: a docstring naming the backend model, the requests that return it and
    the keys of other types that hold it, then one key per property (its description as a comment)."""
    about = f"``{schema_name}``"
    if returned_by:
        about += ": " + ", ".join(returned_by)
    if used_in:
        about += ("; in " if returned_by else ": in ") + ", ".join(used_in)
    if schema.get("description"):
        about += ". " + " ".join(schema["description"].split()).rstrip(".")
    doc = textwrap.wrap(
        about + '."""',
        WIDTH - 4,
        initial_indent='    """',
        subsequent_indent="    ",
        break_on_hyphens=False,
        break_long_words=False,
    )
    lines = [f"class {client_name(schema_name)}(TypedDict):", *doc, ""]
    for field, prop in schema.get("properties", {}).items():
        if not field.isidentifier():
            raise ValueError(f"{schema_name}.{field} is not a Python name: a TypedDict cannot hold it")
        if prop.get("description"):
            lines += _comment(prop["description"], "    ")
        lines.append(f"    {field}: {py_type(prop)}")
    return lines


def render(doc: Mapping[str, Any], prefix: str) -> str:
    """The text of klq/api_types.py for an OpenAPI document whose paths start with ``prefix``."""
    components = doc["components"]["schemas"]
    models = response_models(doc, prefix)
    names = {client_name(n): n for n in models}
    if len(names) != len(models):
        raise ValueError(f"two response schemas get one client name: {sorted(models)}")
    used_in: dict[str, list[str]] = {n: [] for n in models}
    for parent in sorted(names):
        for field, prop in components[names[parent]].get("properties", {}).items():
            for ref in dict.fromkeys(_refs(prop)):
                used_in[ref].append(f"{parent}.{field}")
    classes = [
        render_class(n, components[n], models[n], used_in[n]) for n in (names[c] for c in sorted(names))
    ]
    annotations = " ".join(py_type(p) for n in models for p in components[n].get("properties", {}).values())
    imports = [t for t in ("Any", "Literal") if re.search(rf"\b{t}\b", annotations)] + ["TypedDict"]
    header = (
        f'''"""Shapes of the REST API's JSON responses (``{prefix}``): one ``TypedDict`` per response model of
backend/schemas/, named as there without ``Out``, each saying which requests return it.

Generated by scripts/gen_api_types.py from the API's OpenAPI document; do not edit by hand: run
``{COMMAND}`` after changing a response model (tests/test_api_types.py
fails while this file is out of date). Every key is present in a response, also one with a default;
date-times are ISO 8601 strings.
"""

from __future__ import annotations

from typing import {", ".join(imports)}

__all__ = [
'''
        + "".join(f'    "{n}",\n' for n in sorted(names))
        + "]\n"
    )
    return header + "".join("\n\n" + "\n".join(lines) + "\n" for lines in classes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed file is out of date")
    args = parser.parse_args(argv)
    text = render(*openapi_document())
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(
                f"{OUT.relative_to(ROOT)} is out of date with backend/schemas/: run {COMMAND}",
                file=sys.stderr,
            )
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
