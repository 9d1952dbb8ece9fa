"""Per-study rows of a long run, on disk as each batch finishes, so that an interrupted run
resumes where it stopped and the figures are computed from the file, not from memory."""

from __future__ import annotations

import json
import os
from pathlib import Path


class RowFile:
    """``rows.jsonl``: its first line ``{"run": identity}``, then one JSON object per study
    (with its ``image_id``), appended and flushed to disk batch by batch.

    ``identity`` says what produced the rows (configuration and weights digests, methods,
    options): rows of another run are never mixed in; opening the file with another
    identity is a ``ValueError`` that says so. A crash can leave the last line cut short:
    it is dropped when read (that study runs again).
    """

    def __init__(self, path: str | Path, identity: dict):
        self.path = Path(path)
        self.identity = json.loads(json.dumps(identity))  # as it reads back from the file
        if not self.path.exists() or self.path.stat().st_size == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"run": self.identity}) + "\n")
            return
        self._drop_cut_line()
        with open(self.path) as stream:
            first = stream.readline()
        try:
            found = json.loads(first).get("run")
        except (ValueError, AttributeError):
            found = None
        if found != self.identity:
            changed = sorted(k for k in set(found or {}) | set(self.identity) if (found or {}).get(k) != self.identity.get(k))
            raise ValueError(f"{self.path} holds rows of another run (differs in: {', '.join(changed) or 'its header'}); "
                             "choose another --out folder or delete the file to start over")  # fmt: skip

    def _drop_cut_line(self) -> None:
        """Truncate a last line that a crash cut short, so that appends start on a new line."""
        with open(self.path, "rb+") as stream:
            stream.seek(0, os.SEEK_END)
            size = stream.tell()
            stream.seek(max(0, size - (1 << 20)))
            tail = stream.read()
            if tail and not tail.endswith(b"\n"):
                stream.truncate(size - len(tail) + tail.rfind(b"\n") + 1)

    def rows(self) -> list[dict]:
        """Every complete row, in the order written (a later row of the same study wins)."""
        by_id = {}
        with open(self.path) as stream:
            stream.readline()
            for line in stream:
                if not line.endswith("\n"):
                    break  # cut short by a crash still running (or being written)
                row = json.loads(line)
                by_id[row["image_id"]] = row
        return list(by_id.values())

    def done(self) -> set[str]:
        """The ``image_id`` of every study with a complete row."""
        return {row["image_id"] for row in self.rows()}

    def append(self, rows: list[dict]) -> None:
        """Append ``rows`` and make them durable (flush + fsync) before returning."""
        if not rows:
            return
        with open(self.path, "a") as stream:
            stream.write("".join(json.dumps(row) + "\n" for row in rows))
            stream.flush()
            os.fsync(stream.fileno())
