"""How the test modules may use conftest.py."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_no_test_imports_conftest_inside_a_function():
    """`conftest` is whichever directory's conftest.py pytest imported last: a test that imports
    from it at run time gets tests/vm's in a whole-suite run (the CI failure of 2026-11-30)."""
    late = [
        f"{p.relative_to(REPO_ROOT)}:{n}"
        for p in (REPO_ROOT / "tests").rglob("test_*.py")
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if line.startswith((" ", "\t")) and line.strip().startswith(("from conftest import", "import conftest"))
    ]
    assert late == []
