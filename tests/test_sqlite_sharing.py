"""Several processes share one SQLite file (`keepflow dev` and the commands beside it, or a
worker and an app): a command that opens and closes the store must never take the running
process's writes with it."""

from __future__ import annotations

import subprocess
import sys

from sqlalchemy import text

from keepflow.store import Database, upgrade

WRITE_AND_CLOSE = """
import sys
from sqlalchemy import text
from keepflow.store import Database
db = Database(sys.argv[1])
with db.transaction() as c:
    c.execute(text("INSERT INTO deliveries (source, id, event_id, received_at) VALUES ('cli', 'b', 'e', CURRENT_TIMESTAMP)"))
db.dispose()
"""


def rows(url: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", "import sys\nfrom sqlalchemy import text\nfrom keepflow.store import Database\n"
                          "db = Database(sys.argv[1])\nwith db.transaction() as c:\n"
                          "    print(','.join(sorted(r[0] for r in c.execute(text('SELECT id FROM deliveries')))))",
                          url], capture_output=True, text=True, check=True)
    return out.stdout.strip().split(",")


def test_a_second_store_in_a_process_keeps_its_locks_and_no_write_is_lost(tmp_path):
    url = f"sqlite:///{tmp_path / 'keepflow.db'}"
    upgrade(url)
    running = Database(url)  # e.g. the HTTP app's
    with running.transaction() as c:
        c.execute(text("INSERT INTO deliveries (source, id, event_id, received_at) VALUES ('app', 'a', 'e', CURRENT_TIMESTAMP)"))
    other = Database(url)  # e.g. the worker's, made later in the same process
    subprocess.run([sys.executable, "-c", WRITE_AND_CLOSE, url], check=True)  # `keepflow report`, `deploy`, ...
    with running.transaction() as c:
        c.execute(text("INSERT INTO deliveries (source, id, event_id, received_at) VALUES ('app', 'c', 'e', CURRENT_TIMESTAMP)"))
    assert rows(url) == ["a", "b", "c"]
    other.dispose()
    running.dispose()
