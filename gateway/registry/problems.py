"""Problems found in a registry file, and the error that carries all of them at once.

A registry file is refused as a whole, but an operator fixing it wants every problem in one go
rather than one per attempt, so loading collects problems instead of raising at the first.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the registry. `her_id` is None for file-level problems (and for a
    party whose HER-id is itself unusable, where `field` names the party by position)."""

    her_id: int | None
    field: str
    message: str
    severity: Severity = Severity.ERROR

    def __str__(self) -> str:
        where = f"{self.her_id} " if self.her_id is not None else ""
        return f"{self.severity}: {where}{self.field}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {
            "severity": str(self.severity),
            "her_id": self.her_id,
            "field": self.field,
            "message": self.message,
        }


class RegistryError(Exception):
    """A registry file that cannot be used, with every problem found in it.

    `files` are the files the attempt read or tried to read, so a file watcher can retry once
    one of them changes (e.g. the missing certificate appears).
    """

    def __init__(self, problems: Iterable[Problem], *, source: str = "", files: Iterable[Path] = ()) -> None:
        self.problems = list(problems)
        self.source = source
        self.files = tuple(files)
        super().__init__(self._summary())

    def _summary(self) -> str:
        head = f"registry {self.source} refused" if self.source else "registry refused"
        lines = [f"{head}: {len(self.problems)} problem(s)"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)
