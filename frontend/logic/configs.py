"""Run configurations: the diff between configs, and the launch form: its fields derived from the server's
RunConfig JSON schema, its values from a stored config and back, a 422's errors under the fields."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

# --- config diff -----------------------------------------------------------------------------------------

_ABSENT = "(absent)"


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"batch_size": 8}} -> {"train.batch_size": 8} (lists are values)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, value in flat.items():
        node = out
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def config_diff(configs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Only the fields whose values differ between the configs: index = dotted field, one column per
    config (its label), values as text ('(absent)' where a config lacks the field)."""
    flats = {label: flatten(cfg) for label, cfg in configs.items()}
    keys = sorted(set().union(*[f.keys() for f in flats.values()])) if flats else []
    rows = {}
    for key in keys:
        values = [f.get(key, _ABSENT) for f in flats.values()]
        if any(v != values[0] for v in values[1:]):
            rows[key] = [_show(v) for v in values]
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(flats)).rename_axis("field")


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- launch form from the RunConfig JSON schema ----------------------------------------------------------


@dataclass
class FormField:
    """One input of the launch form: ``path`` is the dotted config field (e.g. 'train.batch_size')."""

    path: str
    kind: str  # "int", "float", "str", "bool", "choice", "list"
    default: Any = None
    nullable: bool = False
    choices: list[Any] | None = None
    description: str = ""
    title: str = ""
    bounds: str = ""

    @property
    def section(self) -> str:
        return self.path.split(".", 1)[0] if "." in self.path else ""

    @property
    def name(self) -> str:
        return self.path.rsplit(".", 1)[-1]


def _resolve(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    if ref:
        return defs[ref.rsplit("/", 1)[-1]]
    return schema


def _bounds(s: Mapping[str, Any]) -> str:
    parts = []
    if "minimum" in s:
        parts.append(f">= {_num(s['minimum'])}")
    if "exclusiveMinimum" in s:
        parts.append(f"> {_num(s['exclusiveMinimum'])}")
    if "maximum" in s:
        parts.append(f"<= {_num(s['maximum'])}")
    if "exclusiveMaximum" in s:
        parts.append(f"< {_num(s['exclusiveMaximum'])}")
    if "maxLength" in s:
        parts.append(f"at most {s['maxLength']} characters")
    return ", ".join(parts)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(v)


def form_fields(defs: Mapping[str, Any], root: str = "RunConfig") -> list[FormField]:
    """The launch form's fields from a JSON schema's definitions (an OpenAPI document's
    ``components.schemas``, or ``RunConfig.model_json_schema()['$defs']`` plus the root), in schema order;
    nested models become dotted paths. Defaults are the schema's (the paper's)."""
    out: list[FormField] = []

    def walk(schema: Mapping[str, Any], prefix: str) -> None:
        for name, prop in (schema.get("properties") or {}).items():
            path = prefix + name
            target = _resolve(prop, defs)
            if target.get("type") == "object" or "properties" in target:
                walk(target, path + ".")
                continue
            variants = [_resolve(v, defs) for v in prop.get("anyOf", [])] or [target]
            nullable = any(v.get("type") == "null" for v in variants)
            main = next((v for v in variants if v.get("type") != "null"), {})
            kind, choices = "str", None
            if "enum" in main:
                kind, choices = "choice", list(main["enum"])
            elif "const" in main:
                kind, choices = "choice", [main["const"]]
            elif main.get("type") == "integer":
                kind = "int"
            elif main.get("type") == "number":
                kind = "float"
            elif main.get("type") == "boolean":
                kind = "bool"
            elif main.get("type") == "array":
                kind = "list"
            default = prop.get("default", [] if kind == "list" else None)
            out.append(
                FormField(
                    path=path,
                    kind=kind,
                    default=default,
                    nullable=nullable,
                    choices=choices,
                    description=prop.get("description", "") or main.get("description", ""),
                    title=prop.get("title", name),
                    bounds=_bounds(main),
                )
            )

    walk(defs[root], "")
    return out


def schema_defs_from_openapi(doc: Mapping[str, Any]) -> dict[str, Any] | None:
    """The schemas of an OpenAPI document, with the run configuration under 'RunConfig' (FastAPI names it
    'RunConfig-Input' when its input and output schemas differ)."""
    schemas = dict((doc.get("components") or {}).get("schemas") or {})
    for name in ("RunConfig", "RunConfig-Input"):
        if name in schemas:
            schemas["RunConfig"] = schemas[name]
            return schemas
    return None


def local_schema_defs() -> dict[str, Any]:
    """The RunConfig schema of the locally installed klq (when the server's is unavailable)."""
    from klq.config import RunConfig

    schema = RunConfig.model_json_schema()
    defs = dict(schema.pop("$defs", {}))
    defs["RunConfig"] = schema
    return defs


def defaults_of(fields: Iterable[FormField]) -> dict[str, Any]:
    return {f.path: f.default for f in fields}


def values_from_config(fields: Iterable[FormField], config: Mapping[str, Any]) -> dict[str, Any]:
    """Form values (dotted path -> value) of a stored config; fields it lacks keep their default, or under
    `convention: paper` take that convention's value, as the server would fill them."""
    from klq.config import PAPER_CONVENTION, apply_convention

    if config.get("convention") == "paper":
        config = apply_convention(dict(config), PAPER_CONVENTION)
    flat = flatten(config)
    values = {}
    for f in fields:
        values[f.path] = flat.get(f.path, f.default)
    return values


def config_from_values(fields: Iterable[FormField], values: Mapping[str, Any]) -> dict[str, Any]:
    """The nested config of the form's values (all fields: the backend validates it as a whole)."""
    flat: dict[str, Any] = {}
    for f in fields:
        value = values.get(f.path, f.default)
        if f.kind == "list" and isinstance(value, str):
            value = [line for line in value.splitlines() if line.strip()]
        if f.kind == "str" and f.nullable and isinstance(value, str) and not value.strip():
            value = None
        if f.kind == "str" and isinstance(value, str):
            value = value.strip()
        flat[f.path] = value
    return unflatten(flat)


def config_overrides(base: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted overrides turning ``base`` into ``new`` (for POST /runs/{id}/clone)."""
    a, b = flatten(base), flatten(new)
    return {k: v for k, v in b.items() if k not in a or a[k] != v}


def errors_for_form(field_errors: Mapping[str, Sequence[str]], paths: Iterable[str]) -> dict[str, list[str]]:
    """A 422's field errors keyed by the form's config paths: 'config.train.batch_size' and
    'overrides.train.batch_size' both become 'train.batch_size'; an error on a section (a model-level
    check, e.g. 'config.train') stays on the section; other fields ('name', 'queue', 'tags.0') keep their
    first part; what matches nothing is under ''."""
    known = set(paths)
    sections = {p.split(".", 1)[0] for p in known if "." in p}
    out: dict[str, list[str]] = {}
    for raw, msgs in field_errors.items():
        path = raw
        for prefix in ("config.", "overrides."):
            if path.startswith(prefix):
                path = path[len(prefix) :]
                break
        else:
            if path in ("config", "overrides"):
                path = ""
        target = ""
        if path in known or path in sections:
            target = path
        else:
            parts = path.split(".")
            for i in range(len(parts) - 1, 0, -1):
                candidate = ".".join(parts[:i])
                if candidate in known or candidate in sections:
                    target = candidate
                    break
            else:
                if parts[0] in ("name", "queue", "tags", "notes"):
                    target = parts[0]
        out.setdefault(target, []).extend(msgs)
    return out
