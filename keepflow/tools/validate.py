"""`keepflow validate`: every problem with its position, or a one-line summary."""

from __future__ import annotations

import sys
from pathlib import Path

from keepflow.language.catalog import Catalog, default_templates_dir
from keepflow.language.dsl import SendStep
from keepflow.language.rendering import locale_files
from keepflow.runtime.registry import check_catalog


def run_validate(path: Path, templates: Path | None) -> int:
    """Problems to stderr (exit 1 on any error), else a summary to stdout."""
    path = Path(path)
    templates_dir = Path(templates) if templates is not None else default_templates_dir(path)
    catalog, problems = check_catalog(path, templates_dir)
    for problem in problems:
        print(problem.format(), file=sys.stderr)
    if catalog is None:
        errors = sum(p.severity == "error" for p in problems)
        print(f"{path}: {_plural(errors, 'error')}", file=sys.stderr)
        return 1
    steps = sum(1 for s in catalog.file.sequences for _ in s.walk())
    files, locales = _template_stats(catalog)
    warnings = len(problems)
    suffix = f" ({_plural(warnings, 'warning')})" if warnings else ""
    print(f"{path}: {_plural(len(catalog.file.sequences), 'sequence')}, {_plural(steps, 'step')}, "
          f"{_plural(files, 'template')} in {_plural(locales, 'locale')} — OK{suffix}")
    return 0


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _template_stats(catalog: Catalog) -> tuple[int, int]:
    sends = [s for seq in catalog.file.sequences for _, s in seq.walk() if isinstance(s, SendStep)]
    used = {(s.send, s.template) for s in sends} | {(s.fallback, s.template) for s in sends if s.fallback}
    locales: set[str] = set()
    for channel, name in used:
        locales.update(locale_files(catalog.templates_dir, channel, name))
    return len(used), len(locales)
