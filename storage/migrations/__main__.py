"""``python -m storage.migrations``: the developer's side of schema migrations.

    python -m storage.migrations revision -m "add users.locale"   # after changing storage/models.py
    python -m storage.migrations check                            # do the models match the revisions?

``revision`` upgrades a scratch SQLite database to the newest revision, lets Alembic's autogenerate
compare it with ``storage.models`` and writes ``versions/NNNN_<message>.py``; read it before committing
(autogenerate cannot see renames, new values of an enum, or data that must move). Running the bot, or
any ``Database.open``, applies it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from alembic import command
from sqlalchemy import create_engine

from storage import migrations


def _scratch_database(folder: str) -> str:
    return f"sqlite:///{Path(folder) / 'scratch.db'}"


def revision(message: str) -> int:
    script = migrations.script_directory()
    next_id = f"{max(int(r.revision) for r in script.walk_revisions()) + 1:04d}"
    with tempfile.TemporaryDirectory() as folder:
        engine = create_engine(_scratch_database(folder))
        with engine.begin() as connection:
            migrations.upgrade(connection)
            if not migrations.schema_differences(connection):
                print("storage.models matches the newest revision: nothing to write")
                return 1
            written = command.revision(
                migrations.alembic_config(connection), message, autogenerate=True, rev_id=next_id
            )
        engine.dispose()
    paths = [s.path for s in (written if isinstance(written, list) else [written]) if s is not None]
    for path in paths:
        _tidy(path)
        print(f"wrote {path}: review it, then run the tests")
    return 0


def check() -> int:
    with tempfile.TemporaryDirectory() as folder:
        engine = create_engine(_scratch_database(folder))
        with engine.begin() as connection:
            migrations.upgrade(connection)
            differences = migrations.schema_differences(connection)
        engine.dispose()
    for difference in differences:
        print(difference)
    if differences:
        print('storage.models differs from the revisions: run python -m storage.migrations revision -m "..."')
        return 1
    print(f"storage.models matches revision {migrations.head_revision()}")
    return 0


def _tidy(path: str) -> None:
    """ruff (a dev dependency) fixes imports and formats the generated file, when it is installed."""
    for arguments in (["check", "--fix", "--quiet"], ["format", "--quiet"]):
        try:
            subprocess.run([sys.executable, "-m", "ruff", *arguments, path], check=False)
        except OSError:
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m storage.migrations", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser(
        "revision", help="autogenerate a revision from the changes in storage/models.py"
    )
    add.add_argument("-m", "--message", required=True, help="what changed, e.g. 'add users.locale'")
    commands.add_parser("check", help="exit 1 when storage/models.py has changes no revision makes")
    arguments = parser.parse_args(argv)
    if arguments.command == "revision":
        return revision(arguments.message)
    return check()


if __name__ == "__main__":
    sys.exit(main())
