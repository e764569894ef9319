"""requirements/audit.py: pip-audit's PyPI service over the pages PyPI answers here.

PyPI cannot run in a test, so a session holding real `requests.Response` objects in the shape
of PyPI's JSON API stands in for it; pip-audit's own service parses them.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests
from packaging.version import Version
from pip_audit._service.interface import ResolvedDependency, SkippedDependency

from pipelines.settings import PROJECT_ROOT

AUDIT = PROJECT_ROOT / "requirements" / "audit.py"
VULNERABILITY = {
    "id": "PYSEC-2099-1",
    "aliases": ["CVE-2099-0001"],
    "summary": "A bad thing",
    "fixed_in": ["2.0.1"],
    "withdrawn": None,
    "published": "2099-01-01T00:00:00Z",
}


@pytest.fixture(scope="module")
def audit() -> ModuleType:
    spec = importlib.util.spec_from_file_location("audit", AUDIT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _response(url: str, status: int, body: dict[str, Any] | None = None) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.url = url
    response._content = json.dumps(body or {}).encode()
    return response


class PyPIPages:
    """The JSON pages of one project as PyPI answers them here: the per-release page missing."""

    def __init__(self, newest: str, vulnerabilities: list[dict[str, Any]]) -> None:
        self.newest = newest
        self.vulnerabilities = vulnerabilities
        self.asked: list[str] = []

    def get(self, url: str, timeout: int | None = None) -> requests.Response:
        self.asked.append(url)
        if url == "https://pypi.org/pypi/demo/json":
            body = {"info": {"version": self.newest}, "vulnerabilities": self.vulnerabilities}
            return _response(url, 200, body)
        return _response(url, 404)


def _service(audit: ModuleType, pages: PyPIPages) -> Any:
    service = audit.NewestReleaseService()
    service.session = audit.ProjectJsonSession(pages)
    return service


def test_a_pin_on_the_newest_release_gets_its_vulnerabilities(audit: ModuleType) -> None:
    pages = PyPIPages("2.0.0", [VULNERABILITY])
    spec = ResolvedDependency(name="demo", version=Version("2.0.0"))
    found, results = _service(audit, pages).query(spec)
    assert found == spec
    assert [(r.id, r.aliases, r.fix_versions) for r in results] == [
        ("PYSEC-2099-1", {"CVE-2099-0001"}, [Version("2.0.1")])
    ]
    assert pages.asked == [
        "https://pypi.org/pypi/demo/2.0.0/json",
        "https://pypi.org/pypi/demo/json",
    ]


def test_a_pin_behind_the_newest_release_is_skipped_saying_why(audit: ModuleType) -> None:
    # The project page's vulnerabilities are the newest release's: they say nothing of 1.0.
    pages = PyPIPages("2.0.0", [VULNERABILITY])
    found, results = _service(audit, pages).query(
        ResolvedDependency(name="demo", version=Version("1.0"))
    )
    assert results == []
    assert isinstance(found, SkippedDependency)
    assert "1.0 is behind the newest release 2.0.0" in found.skip_reason


def test_a_project_missing_from_pypi_keeps_pip_audits_reason(audit: ModuleType) -> None:
    found, results = _service(audit, PyPIPages("2.0.0", [])).query(
        ResolvedDependency(name="elsewhere", version=Version("1.0"))
    )
    assert results == []
    assert isinstance(found, SkippedDependency)
    assert "not found on PyPI" in found.skip_reason


def test_ignored_ids_read_the_first_word_and_require_a_reason(audit: ModuleType) -> None:
    text = "# comment\n\nGHSA-aaaa-bbbb-cccc  no fixed release yet; look again in May\n"
    assert audit.ignored_ids(text) == ["GHSA-aaaa-bbbb-cccc"]
    with pytest.raises(SystemExit, match="'PYSEC-1' has no reason"):
        audit.ignored_ids("PYSEC-1\n")
    assert isinstance(audit.ignored_ids(Path(audit.IGNORE_FILE).read_text()), list)


def test_the_makefile_audits_both_locks_in_lint(audit: ModuleType) -> None:
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    assert "\nlint: audit " in makefile or "\nlint: install audit " in makefile
    recipe = makefile.split("\naudit:", 1)[1].split("\n\n", 1)[0]
    assert "requirements/audit.py" in recipe
    assert "service.lock" in recipe
    assert "dev.lock" in recipe
