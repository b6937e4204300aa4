"""Running Keepflow on one machine: `make run` on other ports, the CLI finding the running
`keepflow dev` by itself, one-line errors for everyday mistakes."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_dry_run(*args: str) -> str:
    done = subprocess.run(["make", "-n", "run", *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout


def test_make_run_passes_the_ports_it_is_given_to_keepflow_dev() -> None:
    command = make_dry_run("HTTP_PORT=9100", "TEMPORAL_PORT=7300", "ADMIN_PORT=9101", "UI_PORT=0")
    dev = next(line for line in command.splitlines() if "keepflow dev" in line)
    assert "--http-port 9100" in dev and "--temporal-port 7300" in dev
    assert "--admin-port 9101" in dev and "--ui-port 0" in dev


def test_make_run_without_ports_keeps_the_defaults_of_keepflow_dev() -> None:
    dev = next(line for line in make_dry_run().splitlines() if "keepflow dev" in line)
    assert "--" not in dev
