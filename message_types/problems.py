"""Validation problems: what is wrong, where, and which AppRec error code it maps to."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from message_types.codes import ErrorCode

# A fødselsnummer or D-nummer: 11 digits standing alone. Problem texts quote values from the document
# (lxml's schema errors do, e.g. a fødselsnummer typed into DateOfBirth), and they end up in log files,
# .err files and AppRecs, where patient identifiers must not.
_NATIONAL_ID = re.compile(r"(?<![0-9A-Za-z])[0-9]{11}(?![0-9A-Za-z])")
NATIONAL_ID_MASK = "*" * 11


def mask_national_ids(text: str) -> str:
    return _NATIONAL_ID.sub(NATIONAL_ID_MASK, text)


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

    def __post_init__(self) -> None:
        if isinstance(self.message, str):
            object.__setattr__(self, "message", mask_national_ids(self.message))

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
