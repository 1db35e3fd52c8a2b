"""ci/test runs the unit tests, then the rest in two lanes (ci/lanes.py): no test module may be
left out, or run twice."""

from __future__ import annotations

from pathlib import Path

from ci.lanes import LANES, REPO_ROOT, UNIT


def test_every_test_module_is_in_exactly_one_lane():
    modules = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "tests").rglob("test_*.py"))
    entries = [UNIT, *(entry for lane in LANES.values() for entry in lane)]

    def lanes_of(module: str) -> list[str]:
        return [e for e in entries if module == e or module.startswith(e.rstrip("/") + "/")]

    assert {m: lanes_of(m) for m in modules if len(lanes_of(m)) != 1} == {}
    assert all((REPO_ROOT / e).exists() for e in entries)  # no lane names a module that is gone
    assert Path(REPO_ROOT / "ci/test").read_text().count("ci.lanes") == 1


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
