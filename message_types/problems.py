"""Validation problems: what is wrong, where, and which AppRec error code it maps to."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from message_types.codes import ErrorCode


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    code: ErrorCode
    message: str
    severity: Severity = Severity.ERROR
    line: int | None = None
    path: str | None = None

    @property
    def code_text(self) -> str:
        """The code list's own Norwegian text, shown beside the English explanation."""
        return self.code.text

    def describe(self) -> str:
        where = f" (line {self.line}" + (f", {self.path}" if self.path else "") + ")" if self.line else ""
        return f"{self.code} {self.code_text}: {self.message}{where}"

    def to_dict(self) -> dict:
        return {
            "code": str(self.code),
            "code_text": self.code_text,
            "severity": str(self.severity),
            "message": self.message,
            "line": self.line,
            "path": self.path,
        }


class InvalidMessage(Exception):
    """Raised where a caller needs an exception; carries the problems found."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(p.describe() for p in problems))
