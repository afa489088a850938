#!/usr/bin/env python3
"""Import everything cache_action imports; print the standard library files that loaded.

    python3 scripts/image-imports.py

The Dockerfile runs it in the image's build stage, after trimming: every module of the package
is imported, and every module an import statement anywhere in its source names (the lazy ones
inside functions too, and each name a `from ... import` takes), so an import the trimmed image
cannot satisfy fails the build instead of a job. The files it prints are the standard library
modules those imports loaded: the final stage byte-compiles them, because python:*-slim ships
its standard library without .pyc files and the image must not compile them at every start.
Exit 1, with the failures on stderr, when something does not import.
"""

from __future__ import annotations

import ast
import importlib
import os
import sys
import sysconfig
from pathlib import Path

import cache_action


def _imports(source: Path) -> set[tuple[str, str]]:
    """(module, name) of each absolute import in `source`; name "" for `import module`."""
    found: set[tuple[str, str]] = set()
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"), str(source))):
        if isinstance(node, ast.Import):
            found.update((alias.name, "") for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.update((node.module, alias.name) for alias in node.names)
    return found


def main() -> int:
    package = Path(cache_action.__file__).parent
    wanted: set[tuple[str, str]] = set()
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        wanted.add((".".join(parts).removesuffix(".__init__"), ""))
        wanted |= _imports(path)
    failures = []
    for module, name in sorted(wanted):
        try:
            loaded = importlib.import_module(module)
            if name and name != "*" and not hasattr(loaded, name):
                importlib.import_module(f"{module}.{name}")  # a submodule, or ImportError
        except Exception as error:  # ImportError, or anything a module raises while loading
            failures.append(f"{module}{' ' + name if name else ''}: {error!r}")
    if failures:
        print("cannot import:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    stdlib = os.path.join(sysconfig.get_paths()["stdlib"], "")
    files = {
        str(module.__file__)
        for module in list(sys.modules.values())
        if str(getattr(module, "__file__", None) or "").endswith(".py")
        and str(module.__file__).startswith(stdlib)
        and not {"site-packages", "dist-packages"} & set(Path(module.__file__).parts)
    }
    print("\n".join(sorted(files)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
