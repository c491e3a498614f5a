"""Build the API reference from the docstrings with pdoc:

    pip install -e '.[docs]' && python docs/build_api.py docs/api

Every module of the package is documented (pdoc alone stops at a package
whose ``__all__`` does not name its submodules); the compiled ``_core`` is
left out: ``pygup._native.Core`` documents every C entry point.
"""
from __future__ import annotations

import pkgutil
import sys
from pathlib import Path


def modules() -> list[str]:
    import pygup
    names = ["pygup"] + [m.name for m in pkgutil.walk_packages(pygup.__path__, "pygup.")]
    return [n for n in names if n != "pygup._core" and n != "pygup.__main__"]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python docs/build_api.py OUTPUT_DIR", file=sys.stderr)
        return 2
    try:
        import pdoc
    except ImportError:
        print("the API reference needs pdoc: pip install 'pygup[docs]'", file=sys.stderr)
        return 2
    out = Path(argv[0])
    import warnings
    # a package and its submodules both named: pdoc notes the repeat, harmlessly
    warnings.filterwarnings("ignore", message="The module specification")
    pdoc.pdoc(*modules(), output_directory=out)
    print(f"API reference: {out / 'index.html'} ({len(list(out.rglob('*.html')))} pages)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
