#!/usr/bin/env python
"""Build the API reference from the docstrings (pdoc), every warning an error.

    python scripts/build_api_docs.py --out site/api

Documents the public API (:mod:`ecar`: ``load``, ``Pipeline``, ``Output``), the pipeline
package and the method protocol, with the docstrings' reStructuredText roles. Every module is
imported first, so that a warning of a dependency's import is not pdoc's; then any warning
pdoc emits while it reads and renders them (a module it cannot import, an annotation it cannot
evaluate, a docstring it cannot parse) fails the build, listed with the exit code 1.
``.ci/run`` runs it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from pathlib import Path

MODULES = ("ecar", "ecar.pipeline", "ecar.methods")
"""Documented with their submodules (``ecar`` itself: its ``__all__``, the Python API)."""


def build(out: Path) -> list[str]:
    """Render the reference into ``out``; returns the warnings (empty: a clean build)."""
    import pdoc
    import pdoc.extract
    import pdoc.render

    names = [n for n in pdoc.extract.walk_specs(list(MODULES))]
    for name in names:
        importlib.import_module(name)
    pdoc.render.configure(docformat="restructuredtext", show_source=False, search=False,
                          footer_text="ecar: the Python API")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*names, output_directory=out)
    return [f"{w.category.__name__}: {w.message}" for w in caught]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="output folder (HTML)")
    args = ap.parse_args()
    problems = build(args.out)
    if problems:
        print(f"error: the API reference built with {len(problems)} warning(s):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    pages = sorted(args.out.rglob("*.html"))
    print(f"API reference: {len(pages)} pages in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
