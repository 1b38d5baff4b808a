"""Write shared/domains/<domain>/client.py: the tenant-bound client of each registered domain.

    .venv/bin/python scripts/gen_clients.py          # rewrite every generated client
    .venv/bin/python scripts/gen_clients.py --check  # exit 1 and name the files that would change

For every domain in ``shared.domains.DOMAINS`` except the hand-written ones
(:data:`HAND_WRITTEN`), the client has one method per public service method whose
first parameter after ``self`` is ``tenant``: same name, same parameters (names,
kinds, defaults, annotations) without ``tenant``, same return annotation, and the
first sentence of the service method's docstring. Parameters, defaults and
annotations are copied from the service's source (``ast``), and so are the imports
the annotations and defaults need, so the client names exactly what the service
names. ``tests/domains/test_clients.py`` compares the signatures and fails, telling
you to run this script, when a service method changes and its client does not.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.domains import DOMAINS, Domain

#: Domains whose client is written by hand, because it does more than bind the tenant.
HAND_WRITTEN = {"objects": "save/load turn Python values into bytes; versions and list_keys follow every page"}
LINE_LENGTH = 120


def client_class_name(domain: Domain) -> str:
    """``memory`` -> ``MemoryClient``."""
    return domain.name.capitalize() + "Client"


@dataclass
class _Method:
    name: str
    parameters: str          # the parameter list after ``self``, ``tenant`` removed
    returns: str
    call: str                # the arguments of the forwarding call, after the tenant
    doc: str
    used_names: set[str]


def _first_sentence(doc: str | None, service: str, name: str) -> str:
    """The docstring's first sentence, on one line that fits; else its first line; else a pointer."""
    if not doc:
        return f"{service}.{name} for this client's tenant."
    text = inspect.cleandoc(doc)
    paragraph = " ".join(text.split("\n\n")[0].split())
    sentence, depth = paragraph, 0
    for i, char in enumerate(paragraph):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "." and depth == 0 and re.match(r"\s+[A-Z`(]", paragraph[i + 1:]):
            sentence = paragraph[: i + 1]
            break
    if len(sentence) > LINE_LENGTH - len('        """') - len('"""'):
        sentence = text.split("\n")[0].strip()
    if not sentence.endswith((".", "!", "?")):
        sentence = sentence.rstrip(",;: ") + "."
    return sentence.replace('"""', "\'\'\'")


def _names(node: ast.AST | None) -> set[str]:
    """Top-level names an annotation or default reads (``Order.asc`` reads ``Order``)."""
    if node is None:
        return set()
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _tenant_first(node: ast.FunctionDef) -> bool:
    positional = [*node.args.posonlyargs, *node.args.args]
    decorators = {ast.unparse(d) for d in node.decorator_list}
    return (not node.name.startswith("_") and len(positional) > 1 and positional[1].arg == "tenant"
            and not decorators & {"staticmethod", "classmethod", "property"})


def _method(node: ast.FunctionDef, service: str, source: str) -> _Method:
    args = node.args

    def text(expression: ast.expr) -> str:
        """The expression as the service spells it, on one line."""
        segment = ast.get_source_segment(source, expression) or ast.unparse(expression)
        return " ".join(segment.split())

    positional = [*args.posonlyargs, *args.args]
    n_posonly = len(args.posonlyargs)
    # Defaults belong to the last parameters; self and tenant never have one.
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    used: set[str] = set()
    parts: list[str] = []
    call: list[str] = []

    def render(arg: ast.arg, default: ast.expr | None) -> str:
        used.update(_names(arg.annotation) | _names(default))
        rendered = arg.arg
        if arg.annotation is not None:
            rendered += f": {text(arg.annotation)}"
            if default is not None:
                rendered += f" = {text(default)}"
        elif default is not None:
            rendered += f"={text(default)}"
        return rendered

    for index, (arg, default) in enumerate(zip(positional, defaults)):
        if index < 2:
            continue  # self, tenant
        parts.append(render(arg, default))
        call.append(arg.arg)
        if n_posonly > 2 and index == n_posonly - 1:
            parts.append("/")
    if args.vararg is not None:
        parts.append("*" + render(args.vararg, None))
        call.append("*" + args.vararg.arg)
    elif args.kwonlyargs:
        parts.append("*")
    for arg, kw_default in zip(args.kwonlyargs, args.kw_defaults):
        parts.append(render(arg, kw_default))
        call.append(f"{arg.arg}={arg.arg}")
    if args.kwarg is not None:
        parts.append("**" + render(args.kwarg, None))
        call.append("**" + args.kwarg.arg)
    if node.returns is None:
        raise SystemExit(f"{service}.{node.name} has no return annotation; give it one first")
    used |= _names(node.returns)
    return _Method(node.name, ", ".join(parts), text(node.returns), ", ".join(call),
                   _first_sentence(ast.get_docstring(node), service, node.name), used)


def _sources_of_names(module: ast.Module, module_name: str) -> dict[str, tuple[str, str]]:
    """name -> (module, name there) for every top-level import and definition of the service's module."""
    found: dict[str, tuple[str, str]] = {}
    for statement in module.body:
        if isinstance(statement, ast.ImportFrom) and statement.level == 0 and statement.module:
            for alias in statement.names:
                found[alias.asname or alias.name] = (statement.module, alias.name)
        elif isinstance(statement, (ast.ClassDef, ast.FunctionDef)):
            found[statement.name] = (module_name, statement.name)
        elif isinstance(statement, (ast.Assign, ast.AnnAssign)):
            targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    found[target.id] = (module_name, target.id)
    return found


def _wrap_def(name: str, parameters: str, returns: str) -> list[str]:
    """``def`` lines within LINE_LENGTH, continuation lines aligned after the opening parenthesis."""
    head = f"    def {name}("
    tail = f") -> {returns}:"
    items = ["self", *(p.strip() for p in _split_top_level(parameters))] if parameters else ["self"]
    lines: list[str] = []
    current = head
    for i, item in enumerate(items):
        piece = item + ("," if i < len(items) - 1 else "")
        candidate = current + ("" if current.endswith("(") else " ") + piece
        end = tail if i == len(items) - 1 else ""
        if len(candidate + end) > LINE_LENGTH and not current.endswith("("):
            lines.append(current)
            current = " " * len(head) + piece
        else:
            current = candidate
    lines.append(current + tail)
    return lines


def _split_top_level(text: str) -> list[str]:
    """Split a parameter list at commas outside brackets."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _wrap_call(prefix: str, arguments: str) -> list[str]:
    """``return self._service.x(...)`` within LINE_LENGTH."""
    items = [a.strip() for a in _split_top_level(arguments)]
    lines: list[str] = []
    current = prefix
    for i, item in enumerate(items):
        piece = item + ("," if i < len(items) - 1 else ")")
        candidate = current + ("" if current.endswith("(") else " ") + piece
        if len(candidate) > LINE_LENGTH and not current.endswith("("):
            lines.append(current)
            current = " " * len(prefix) + piece
        else:
            current = candidate
    lines.append(current)
    return lines


def render(domain: Domain) -> str:
    """The source of ``shared/domains/<domain>/client.py``."""
    service = domain.service
    if not inspect.isclass(service):
        raise SystemExit(f"domain {domain.name}: its service factory is not a class; write its client by hand")
    module_name = service.__module__
    source = Path(inspect.getfile(service)).read_text(encoding="utf-8")
    tree = ast.parse(source)
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == service.__name__]
    if len(classes) != 1:
        raise SystemExit(f"{module_name}: class {service.__name__} not found at top level")
    methods = [_method(n, service.__name__, source) for n in classes[0].body
               if isinstance(n, ast.FunctionDef) and _tenant_first(n)]
    if not methods:
        raise SystemExit(f"{service.__name__} has no method whose first parameter is tenant")
    inherited = {name for name, member in inspect.getmembers(service, inspect.isfunction)
                 if not name.startswith("_") and name not in vars(service)
                 and list(inspect.signature(member).parameters)[1:2] == ["tenant"]}
    if inherited:
        raise SystemExit(f"{service.__name__} inherits tenant-first methods {sorted(inherited)}: "
                         "this script reads only the class's own body; write them in the class or extend the script")

    sources = _sources_of_names(tree, module_name)
    imports: dict[str, set[str]] = {module_name: {service.__name__}}
    for name in sorted(set().union(*(m.used_names for m in methods))):
        if hasattr(builtins, name):
            continue
        if name not in sources:
            raise SystemExit(f"{module_name}: cannot tell where {name!r} (used in a signature) comes from")
        origin, original = sources[name]
        if original != name:
            raise SystemExit(f"{module_name}: {original} is imported as {name}; import it under its own name")
        imports.setdefault(origin, set()).add(name)

    cls = client_class_name(domain)
    lines = [
        f'"""{cls}: :class:`{service.__name__}` for one tenant, the tenant bound.',
        "",
        "Generated by scripts/gen_clients.py from the service; do not edit by hand: change the",
        "service and run the script (tests/domains/test_clients.py fails until you do). Every",
        "method forwards to the service method of the same name with the client's tenant first,",
        "and nothing else: no caching, no retries of its own, the service's guarantees unchanged.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
    ]
    third_party = [m for m in imports if m.split(".")[0] not in ("shared",)]
    own = [m for m in imports if m.split(".")[0] == "shared"]
    for group in (sorted(third_party), sorted(own)):
        for module in group:
            names = ", ".join(sorted(imports[module], key=lambda n: (n.lower(), n)))
            line = f"from {module} import {names}"
            if len(line) > LINE_LENGTH:
                one_a_line = "".join(f"    {name},\n" for name in names.split(", "))
                line = f"from {module} import (\n{one_a_line})"
            lines.append(line)
        if group:
            lines.append("")
    lines += [
        "",
        f"class {cls}:",
        f'    """Every tenant-first method of :class:`{service.__name__}`, for the tenant given at construction."""',
        "",
        f"    def __init__(self, service: {service.__name__}, tenant: str) -> None:",
        "        self._service = service",
        "        self._tenant = tenant",
    ]
    for method in methods:
        lines.append("")
        lines += _wrap_def(method.name, method.parameters, method.returns)
        lines.append(f'        """{method.doc}"""')
        arguments = ", ".join(["self._tenant", method.call] if method.call else ["self._tenant"])
        # A call of a method that returns None is a statement (mypy refuses ``return`` of it).
        keyword = "" if method.returns == "None" else "return "
        lines += _wrap_call(f"        {keyword}self._service.{method.name}(", arguments)
    return "\n".join(lines) + "\n"


def target(domain: Domain) -> Path:
    return ROOT / "shared" / "domains" / domain.name / "client.py"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a client is out of date")
    options = parser.parse_args(argv)
    stale = []
    for domain in DOMAINS:
        if domain.name in HAND_WRITTEN:
            continue
        path, text = target(domain), render(domain)
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(path.relative_to(ROOT))
        if not options.check:
            path.write_text(text, encoding="utf-8")
    verb = "out of date" if options.check else "written"
    for path in stale:
        print(f"{path}: {verb}")
    return 1 if options.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
