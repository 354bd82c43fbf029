"""YAML loading whose cost is bounded by the document's size, not by what its aliases expand to.

PyYAML shares an aliased node instead of copying it, so a "billion laughs" document (each level
nine aliases of the previous) loads at once — and then every later walk of the result (validation,
an error message quoting the value, a dump) takes forever. :class:`BoundedLoader` counts the nodes
the document stands for, shared ones as often as they are used, and refuses a document over
:data:`MAX_NODES` or one that contains itself, before anything is built.
"""

from __future__ import annotations

import yaml

MAX_NODES = 200_000


class BoundedLoader(yaml.SafeLoader):
    def construct_document(self, node):
        _check_expansion(node)
        return super().construct_document(node)


def _check_expansion(root) -> None:
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            kids = _children(node)
            sizes[key] = 1 + sum(sizes[id(k)] for k in kids)
            if sizes[key] > MAX_NODES:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the document stands for more than {MAX_NODES} values once its aliases are "
                    "expanded (a document built to exhaust its reader)", node.start_mark)
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise yaml.constructor.ConstructorError(None, None, "the document contains itself through an alias",
                                                    node.start_mark)
        on_path.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node) if id(k) not in sizes)


def _children(node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [x for pair in node.value for x in pair]
    return []
