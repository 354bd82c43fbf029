"""Values that may enter generated files: Python literals, identifiers, YAML scalars.

The render environment's ``finalize`` (:func:`finalize_only`) lets only these types through, so a
template cannot interpolate raw text by mistake; :func:`check_declaration` proves afterwards that
a generated model declaration is data (imports, one registered class, literal assignments).
"""

from __future__ import annotations

import ast
import keyword

import jinja2

class PyLiteral(str):
    """Python source of a literal, made by ``ascii()``."""


class Identifier(str):
    """A checked Python identifier."""


class YamlScalar(str):
    """A YAML double-quoted scalar on one line."""


_LITERAL_TYPES = (str, int, float, bool, type(None), list, tuple, dict)


def to_literal(value) -> PyLiteral:
    def ok(v) -> bool:
        if isinstance(v, (list, tuple)):
            return all(ok(x) for x in v)
        if isinstance(v, dict):
            return all(ok(k) and ok(x) for k, x in v.items())
        return isinstance(v, _LITERAL_TYPES)

    if not ok(value):
        raise jinja2.TemplateError(f"not a literal: {type(value).__name__}")
    if isinstance(value, list):
        value = tuple(value)
    src = ascii(value)
    if ast.literal_eval(src) != value:  # the literal reads back as the very value
        raise jinja2.TemplateError("value does not round-trip as a literal")
    return PyLiteral(src)


def to_identifier(value) -> Identifier:
    if not (isinstance(value, str) and value.isascii() and value.isidentifier() and not keyword.iskeyword(value)):
        raise jinja2.TemplateError(f"not an identifier: {value!r:.60}")
    return Identifier(value)


def to_yaml_scalar(value) -> YamlScalar:
    import yaml

    text = yaml.safe_dump(str(value), default_style='"', width=float("inf"), allow_unicode=False,
                          explicit_end=False).rstrip("\n")
    if text.endswith("\n..."):
        text = text[:-4].rstrip("\n")
    if "\n" in text or yaml.safe_load(text) != str(value):
        raise jinja2.TemplateError("value does not round-trip as a YAML scalar")
    return YamlScalar(text)


def to_yaml_key(value) -> YamlScalar:
    """A mapping key written bare: a Python identifier only (option names of the engine)."""
    if not isinstance(value, str) or not value.isidentifier() or value in ("true", "false", "null", "yes", "no",
                                                                             "on", "off", "y", "n"):
        raise jinja2.TemplateError(f"{value!r} is not a plain YAML key")
    return YamlScalar(value)


def finalize_only(allowed: tuple[type, ...]):
    def finalize(value):
        if isinstance(value, bool) or value is None:
            return str(value)
        if isinstance(value, allowed):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, str):
            return repr(value)
        raise jinja2.TemplateError(f"unescaped value in a template ({type(value).__name__} {str(value)[:40]!r}); "
                                   "pass it through |py, |ident or |yamlq")

    return finalize


_ALLOWED_IMPORTS = {"llmc.models.hf_vlm", "llmc.models.vila", "llmc.models.llava_lineage", "llmc.models.registry"}


def check_declaration(text: str) -> dict:
    """Prove a generated model declaration is data: only a docstring, imports from the engine's
    model modules, and one class decorated ``@register(<literal>)`` whose body assigns literals.
    Returns ``{"type": ..., "class": ..., <attribute>: <value>}``; raises ValueError otherwise."""
    tree = ast.parse(text)
    out: dict = {}
    for i, node in enumerate(tree.body):
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, ast.ImportFrom) and node.module in _ALLOWED_IMPORTS and node.level == 0:
            continue
        if isinstance(node, ast.ClassDef) and "class" not in out:
            if len(node.decorator_list) != 1 or node.keywords:
                raise ValueError("the declaration class must have exactly one decorator and no keywords")
            deco = node.decorator_list[0]
            if not (isinstance(deco, ast.Call) and isinstance(deco.func, ast.Name) and deco.func.id == "register"
                    and len(deco.args) == 1 and not deco.keywords):
                raise ValueError("the declaration class must be decorated with @register(<name>)")
            out["type"] = ast.literal_eval(deco.args[0])
            out["class"] = node.name
            for stmt in node.body:
                if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                        and isinstance(stmt.targets[0], ast.Name)):
                    raise ValueError(f"line {stmt.lineno}: only `name = <literal>` belongs in a declaration")
                out[stmt.targets[0].id] = ast.literal_eval(stmt.value)
            continue
        raise ValueError(f"line {node.lineno}: unexpected {type(node).__name__} in a model declaration")
    if "class" not in out:
        raise ValueError("no declaration class")
    return out
