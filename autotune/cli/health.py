"""`autotune health`: is the agent's loop alive? For container liveness probes.

Under systemd the sample job pings the watchdog (WATCHDOG=1) after every tick; a container has
no systemd manager to ping, so this reads the same heartbeat from the state DB instead: the
timestamp of the newest stored sample, which the sample job writes every ``sample_period_s``.
A stalled scheduler, a hung tick or a DB the agent can no longer write all age it.

Exit 0: fresh; 1: stale or no sample yet; 2: no state DB / bad input. Opens the DB through
``open_db(probe=True)`` (read-only, no integrity check), so a probe every few seconds costs an
interpreter start and one query.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from autotune.cli.common import ConfigOpt, JsonOpt, fail, load_config_or_exit, print_json


def newest_sample_ts(db_path: Path) -> float | None:
    """Wall-clock time (s) of the newest raw sample in the state DB; None when it has none."""
    import sqlite3

    from autotune.errors import StateError
    from autotune.store.db import describe, open_db

    try:
        db = open_db(db_path, probe=True)
    except StateError as err:
        raise OSError(str(err)) from err
    try:
        if "samples_raw" not in db.table_names():
            return None
        row = db.execute("SELECT max(ts) FROM samples_raw").fetchone()
    except sqlite3.DatabaseError as err:  # also "file is not a database": one line, exit 2
        raise OSError(str(describe(err, str(db_path)))) from err
    finally:
        db.conn.close()
    return None if row is None or row[0] is None else float(row[0])


def register(app: typer.Typer) -> None:
    @app.command()
    def health(
        config: ConfigOpt = None,
        state: Annotated[Path | None, typer.Option("--state", help="State DB (default: config).")] = None,
        max_age: Annotated[float, typer.Option(
            "--max-age", min=0.001, help="Seconds the newest sample may be old before the agent counts as stalled.")
        ] = 60.0,
        json_out: JsonOpt = False,
    ) -> None:
        """Exit 0 while the running agent keeps sampling (newest stored sample younger than --max-age)."""
        db = state or load_config_or_exit(config).state_path()
        if not db.is_file():
            fail(f"{db}: no state DB (is the agent running with this --config/--state?)")
        try:
            ts = newest_sample_ts(db)
        except OSError as err:
            fail(str(err))
            return
        age = None if ts is None else max(0.0, time.time() - ts)
        ok = age is not None and age <= max_age
        if json_out:
            print_json({"ok": ok, "state": str(db), "last_sample_ts": ts, "age_s": age, "max_age_s": max_age})
        elif ts is None:
            typer.echo(f"stalled: no sample in {db} yet", err=True)
        else:
            typer.echo(f"{'ok' if ok else 'stalled'}: last sample {age:.1f} s ago (limit {max_age:g} s)",
                       err=not ok)
        raise typer.Exit(0 if ok else 1)
