"""Load `sequences.yaml` into the `Catalog` the engine runs from, or say exactly what is wrong.

`check()` collects every problem in a file (YAML syntax, schema, then the cross-references the
schema cannot see: sequence ids, `start:` targets and cycles, activities and their arguments,
templates and expressions), each at the line and column a person must edit. `load()` is the
same, but raises `InvalidSequences` when there is any error.

Activities are the developer's: the caller passes their argument models (the runtime's registry
does, see `keepflow.runtime.registry.load_catalog`), so reading the language never imports them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from keepflow.language.checks import Activities, Semantics
from keepflow.language.dsl import ActivityOptions, Sequence, SequencesFile, Snapshot
from keepflow.language.problems import InvalidSequences, Problem, Report
from keepflow.language.schema_errors import validate_schema
from keepflow.language.yaml_source import parse


@dataclass(frozen=True)
class Catalog:
    path: Path
    templates_dir: Path
    file: SequencesFile
    # Registered activities' own limits, by name (`@activity(..., timeout=, max_attempts=)`).
    activities: dict[str, ActivityOptions] = field(default_factory=dict)
    # Snapshots taken, by sequence id: the catalog never changes, and every event that starts a run
    # would otherwise dump and hash the same definitions again.
    _snapshots: dict[str, Snapshot] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def sequences(self) -> dict[str, Sequence]:
        return self.file.by_id()

    def snapshot(self, sequence_id: str) -> Snapshot:
        taken = self._snapshots.get(sequence_id)
        if taken is None:
            taken = self._snapshots[sequence_id] = Snapshot.of(sequence_id, self.sequences, self.file.rules, self.activities)
        return taken

    def triggered_by(self, event_type: str) -> list[Sequence]:
        return [s for s in self.file.sequences if s.trigger == event_type]

    def interested_in(self, event_type: str) -> list[Sequence]:
        """Sequences whose runs `wait_for`, `exit_on` or have as `goal` this event type."""
        return [s for s in self.file.sequences if event_type in s.events_heard()]

    def inactivity_sequences(self) -> list[Sequence]:
        return [s for s in self.file.sequences if s.inactivity is not None]


def default_templates_dir(path: Path) -> Path:
    return path.parent / "templates"




def load(path: Path, templates_dir: Path | None = None, activities: Activities | None = None,
         source: str | None = None) -> Catalog:
    catalog, problems = check(path, templates_dir, activities, source)
    if catalog is None or any(p.severity == "error" for p in problems):
        raise InvalidSequences(problems)
    return catalog


def check(path: Path, templates_dir: Path | None = None, activities: Activities | None = None,
          source: str | None = None) -> tuple[Catalog | None, list[Problem]]:
    """Every problem in the file, in line order; the Catalog only when there is no error.

    With no `activities`, none is known and every `do:` step is an error. With `source`, that
    text is checked instead of the file's (a deployed version), and problems still name `path`."""
    path = Path(path)
    templates_dir = Path(templates_dir) if templates_dir is not None else default_templates_dir(path)
    report = Report(path)
    tree = parse(path, report, source)
    if report.problems:
        return None, report.sorted()
    file = validate_schema(tree, report)
    if file is None:
        return None, report.sorted()
    Semantics(file, tree, templates_dir, activities or {}, report).run()
    problems = report.sorted()
    if any(p.severity == "error" for p in problems):
        return None, problems
    limits = {name: known.options for name, known in (activities or {}).items() if known.options is not None}
    return Catalog(path=path, templates_dir=templates_dir, file=file, activities=limits), problems
