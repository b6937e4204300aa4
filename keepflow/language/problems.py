"""What `keepflow validate` reports: each problem at the line and column a person must edit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, order=True)
class Problem:
    path: Path
    line: int  # 1-based
    column: int  # 1-based
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.message}"

    def format(self) -> str:
        """`PATH:LINE:COL: message`, with `warning: ` after the position for a warning."""
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{self.path}:{self.line}:{self.column}: {prefix}{self.message}"


class InvalidSequences(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(p.format() for p in problems))

    def __str__(self) -> str:
        return "\n".join(p.format() for p in self.problems)


class Report:
    def __init__(self, path: Path):
        self.path = path
        self.problems: list[Problem] = []

    def add(self, pos: tuple[int, int], message: str, severity: Severity = "error") -> None:
        """`pos` is ruamel's 0-based (line, column)."""
        self.problems.append(Problem(self.path, pos[0] + 1, pos[1] + 1, message, severity))

    def sorted(self) -> list[Problem]:
        return sorted(set(self.problems))


START = (0, 0)
