"""Process-table queries for the server scripts (Linux /proc; no psutil needed).

    python _proc.py alive PGID        exit 0 if the group has a live (non-zombie) member
    python _proc.py descendants PID   print the live descendants of PID, one per line

Zombies count as gone: in a container whose PID 1 does not reap, a stopped server
stays a zombie and ``kill -0`` would report it alive forever.
"""

from __future__ import annotations

import os
import sys


def _table() -> list[tuple[int, str, int, int]]:
    """(pid, state, ppid, pgrp) of every process."""
    rows = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                # the command name may contain spaces and parentheses: split after the last ")"
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        rows.append((int(name), fields[0], int(fields[1]), int(fields[2])))
    return rows


def alive(pgid: int) -> bool:
    return any(grp == pgid and state not in "ZX" for _, state, _, grp in _table())


def descendants(pid: int) -> list[int]:
    table = [row for row in _table() if row[1] not in "ZX"]
    found: list[int] = []
    frontier = {pid}
    while frontier:
        children = {p for p, _, ppid, _ in table if ppid in frontier and p not in found}
        found.extend(sorted(children))
        frontier = children
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("alive", "descendants"):
        print(__doc__, file=sys.stderr)
        return 2
    target = int(argv[1])
    if argv[0] == "alive":
        return 0 if alive(target) else 1
    print("\n".join(map(str, descendants(target))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
