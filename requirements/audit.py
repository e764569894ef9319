"""`make audit`: pip-audit over the locks, with PyPI's vulnerability data as PyPI answers here.

    python requirements/audit.py requirements/service.lock

pip-audit's `pypi` service asks PyPI's per-release JSON (`/pypi/<name>/<version>/json`). Where
only the project JSON (`/pypi/<name>/json`) answers, as on this project's machines, pip-audit
would skip every dependency as "not found on PyPI" and pass having audited nothing. The project
JSON lists the vulnerabilities of the project's newest release, so for a pin on the newest
release it is the same answer; a pin behind it stays skipped, and pip-audit's table of skipped
dependencies says why. IDs in audit-ignore.txt (`ID  reason` a line) are passed as
`--ignore-vuln`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from packaging.version import Version
from pip_audit import _cli
from pip_audit._service import PyPIService
from pip_audit._service.interface import (
    Dependency,
    ResolvedDependency,
    SkippedDependency,
    VulnerabilityResult,
)

IGNORE_FILE = Path(__file__).with_name("audit-ignore.txt")
RELEASE_URL = re.compile(r"https://pypi\.org/pypi/(?P<name>[^/]+)/(?P<version>[^/]+)/json")


def ignored_ids(text: str) -> list[str]:
    """The vulnerability IDs of an ignore file: the first word of each line that is no comment."""
    ids = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        vuln_id, _, reason = line.partition(" ")
        if not reason.strip():
            raise SystemExit(f"{IGNORE_FILE.name}:{number}: {vuln_id!r} has no reason after it")
        ids.append(vuln_id)
    return ids


class ProjectJsonSession:
    """A session that answers a missing per-release page with the project page, when that
    release is the project's newest (whose vulnerabilities the project page lists)."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self.newest: dict[str, Version] = {}  # by project name, for the pages it fetched

    def get(self, url: str, timeout: int | None = None) -> Any:
        response = self._session.get(url=url, timeout=timeout)
        match = RELEASE_URL.fullmatch(url)
        if response.status_code != 404 or match is None:
            return response
        project = self._session.get(
            url=f"https://pypi.org/pypi/{match['name']}/json", timeout=timeout
        )
        if not project.ok:
            return response
        newest = self.newest[match["name"]] = Version(project.json()["info"]["version"])
        return project if newest == Version(match["version"]) else response


class NewestReleaseService(PyPIService):
    """pip-audit's PyPI service over `ProjectJsonSession`, with honest skip reasons."""

    def __init__(self, cache_dir: Path | None = None, timeout: int | None = None) -> None:
        super().__init__(cache_dir=cache_dir, timeout=timeout)
        self.session: ProjectJsonSession = ProjectJsonSession(self.session)

    def query(self, spec: Dependency) -> tuple[Dependency, list[VulnerabilityResult]]:
        found, results = super().query(spec)
        if not isinstance(found, SkippedDependency) or not isinstance(spec, ResolvedDependency):
            return found, results
        newest = self.session.newest.get(spec.canonical_name)
        if newest is None:  # not on PyPI at all: pip-audit's own reason
            return found, results
        reason = (
            f"not audited: {spec.version} is behind the newest release {newest}, and PyPI "
            "answers vulnerabilities here for the newest release only"
        )
        return SkippedDependency(name=spec.name, skip_reason=reason), []


def main(argv: list[str]) -> None:
    # One lock a run: pip-audit refuses a package pinned in two files (the locks share most).
    if len(argv) != 1:
        raise SystemExit("usage: audit.py LOCK (one lock file, e.g. requirements/service.lock)")
    arguments = ["--disable-pip", "--no-deps", "--vulnerability-service", "pypi"]
    arguments += ["--progress-spinner", "off", "--requirement", argv[0]]
    for vuln_id in ignored_ids(IGNORE_FILE.read_text()):
        arguments += ["--ignore-vuln", vuln_id]
    _cli.PyPIService = NewestReleaseService  # the CLI builds its service by this name
    sys.argv = ["pip-audit", *arguments]
    _cli.audit()


if __name__ == "__main__":
    main(sys.argv[1:])
