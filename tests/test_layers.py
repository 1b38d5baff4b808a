"""The layers, enforced by reading imports (ast), not by convention.

    shared/backends   primitives            imports no storage, domain or transport
    shared/storage    mechanics             imports no domain, transport or concrete backend
    shared/domains    one package a domain  no FastAPI/Starlette, functions, cli, offload layer or concrete
                                            backend; another domain only through its public names
    functions, cli    transport and tools   anything below
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONCRETE_BACKENDS = ("shared.backends.local", "shared.backends.azure", "shared.backends.aws")
TRANSPORT = ("fastapi", "starlette", "functions", "cli", "uvicorn", "azure.functions")


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) for every import of a file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            found.append((module, [alias.name for alias in node.names], node.lineno))
    return found


def _under(module: str, prefixes: tuple[str, ...], names: list[str] | None = None) -> bool:
    """Whether the import reaches under a prefix (``from shared.backends import offload`` counts)."""
    targets = [module, *(f"{module}.{name}" for name in names or [])]
    return any(t == p or t.startswith(p + ".") for t in targets for p in prefixes)


def _files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_domains_import_no_transport_no_offload_layer_and_no_concrete_backend():
    bad = []
    for path in _files("shared/domains"):
        for module, imported, line in _imports(path):
            if _under(module, (*TRANSPORT, "shared.backends.offload", *CONCRETE_BACKENDS), imported):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "\n".join(bad)


def test_a_domain_uses_another_only_through_public_names():
    bad = []
    for path in _files("shared/domains"):
        parts = path.relative_to(ROOT / "shared/domains").parts
        if len(parts) < 2:
            continue  # the registry itself
        own = parts[0]
        for module, imported, line in _imports(path):
            if not module.startswith("shared.domains."):
                continue
            other = module.split(".")[2]
            if other in (own, "domain"):
                continue
            private = [name for name in imported if name.startswith("_")]
            if any(part.startswith("_") for part in module.split(".")) or private:
                bad.append(f"{path.relative_to(ROOT)}:{line} uses {module} {private or ''}")
    assert not bad, "\n".join(bad)


def test_storage_mechanics_import_no_domain_transport_or_concrete_backend():
    bad = []
    for path in _files("shared/storage"):
        for module, imported, line in _imports(path):
            if _under(module, ("shared.domains", *TRANSPORT, *CONCRETE_BACKENDS), imported):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "\n".join(bad)


def test_backends_import_nothing_above_them():
    bad = []
    for path in _files("shared/backends"):
        for module, _, line in _imports(path):
            if _under(module, ("shared.storage", "shared.domains", "shared.stores", *TRANSPORT)):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "\n".join(bad)


def test_the_deployed_app_does_not_import_the_cli_or_local_host():
    bad = []
    for path in [ROOT / "function_app.py", *_files("functions"), *_files("shared")]:
        for module, _, line in _imports(path):
            if _under(module, ("cli", "croniter", "rich", "uvicorn")):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_imports(tmp_path):
    """The walk itself: a relative import resolves, so a violation written that way is caught too."""
    probe = ROOT / "shared/domains/objects/_probe_for_layers_test.py"
    probe.write_text("from ...backends import offload\nfrom fastapi import APIRouter\n", encoding="utf-8")
    try:
        modules = [module for module, _, _ in _imports(probe)]
    finally:
        probe.unlink()
    assert modules == ["shared.backends", "fastapi"]
    assert _under("shared.backends", ("shared.backends.offload",), ["offload"])
