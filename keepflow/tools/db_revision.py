"""`keepflow db revision`: the next migration, written from the models, the activities' included.

An activity that keeps data of its own defines its table on `keepflow.store.Base` in its module
(docs/activities.md). Alembic compares the tables the models describe with a schema at the
newest revision, built here in a scratch SQLite file so no real database is needed or touched,
and writes the difference as the next numbered revision in keepflow/migrations/versions/: a
draft to read (and correct: autogenerate cannot see everything) before it is committed.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from keepflow.store.db import MIGRATIONS, alembic_config


def new_revision(message: str, version_path: Path | None = None) -> Path | None:
    """Write the next revision (into `version_path`, else keepflow/migrations/versions/); its path,
    or None when the models and the newest revision already agree."""
    from keepflow.runtime.registry import discover

    discover()  # importing the activity modules puts their tables on Base.metadata
    with tempfile.TemporaryDirectory(prefix="keepflow-revision-") as scratch:
        config = alembic_config(f"sqlite:///{Path(scratch) / 'head.db'}")
        if version_path is not None:
            config.set_main_option("path_separator", "os")
            config.set_main_option("version_locations", os.pathsep.join([str(MIGRATIONS / "versions"), str(version_path)]))
        command.upgrade(config, "heads")

        def keep_if_any_change(context, revision, directives) -> None:
            if directives[0].upgrade_ops.is_empty():
                directives[:] = []

        with warnings.catch_warnings():
            # SQLite cannot reflect expression indexes (ix_events_message_id), so autogenerate
            # leaves them out of the comparison and says so each time; nothing to act on.
            warnings.filterwarnings("ignore", message=".*expression-based index")
            scripts = command.revision(config, message=message, autogenerate=True, rev_id=_next_id(config),
                                       version_path=str(version_path) if version_path is not None else None,
                                       process_revision_directives=keep_if_any_change)
    # One script, or a list of them: empty when keep_if_any_change dropped it.
    script = (scripts[0] if scripts else None) if isinstance(scripts, list) else scripts
    return Path(script.path) if script is not None else None


def _next_id(config: Config) -> str | None:
    """Keepflow numbers its revisions 0001, 0002, ...: the next number, while the newest is one."""
    heads = ScriptDirectory.from_config(config).get_heads()
    if len(heads) != 1 or not heads[0].isdigit():
        return None  # Alembic picks an id of its own
    return f"{int(heads[0]) + 1:04d}"
