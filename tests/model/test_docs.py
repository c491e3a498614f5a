"""The project carries its own documentation: docs/ exists in a clone,
its links resolve inside it, and the API reference builds with pdoc."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def test_docs_and_readme_point_only_inside_the_project():
    for md in [ROOT / "README.md", *DOCS.glob("*.md")]:
        text = md.read_text()
        assert "../shared" not in text, md
        for target in re.findall(r"\]\(([^)#:]+)\)", text):
            assert (md.parent / target).exists(), (md, target)


def test_api_reference_builds(tmp_path):
    pytest.importorskip("pdoc")
    r = subprocess.run([sys.executable, str(DOCS / "build_api.py"), str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    canpin = (tmp_path / "pygup" / "canpin.html").read_text()
    assert "can_pin" in canpin and "Every (backing, caller, policy) cell" in canpin
    assert (tmp_path / "pygup" / "tools" / "fuzz" / "campaign.html").exists()
