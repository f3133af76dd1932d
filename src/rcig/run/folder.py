"""A run folder: what ``rcig distill --out DIR`` writes, the checks before a resume, and its lock.

Layout::

    DIR/run.json                dataset, ipc, seed, config: what --resume checks against; and the
                                command, device and versions of its last part (environment)
    DIR/log.jsonl               one JSON record per iteration (+ "eval" records, and an
                                iteration-0 "tuning" record: the tuned rates, its wall and CPU seconds;
                                with init=herding an iteration-0 "init" record: its seconds)
    DIR/checkpoints/latest.pt   the run's whole state, every `checkpoint_every` iterations and at the
                                end (a finished run's without the pool's trained networks: see
                                :func:`finished_state`)
    DIR/checkpoints/iter_N.safetensors   the EMA support at the config's checkpoint_iters
    DIR/distilled.safetensors   the EMA support (rcig.io format), written at the end
    DIR/grid.png                the distilled images, one row per class
    DIR/report.html             the run's page (:mod:`rcig.report`), written at the end; ``rcig
                                distill`` rewrites it once it has scored the set (eval.json)
    DIR/run.lock                the lock of the process running in DIR (pid, host, start time)

Every file but the log is written whole or not at all (:func:`rcig.atomic.atomic_write`), so a
reader (``rcig eval``, ``rcig report``) of a folder whose run is still going sees either the old
or the new version of each. The log is appended one line per record; a reader drops a last
line cut short (:func:`rcig.validate.log_records`).

One process per folder: :meth:`RunFolder.lock` takes an exclusive ``flock`` on ``run.lock``,
which the operating system releases when the process ends, however it ends, so a killed run
leaves no stale lock. Readers take no lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rcig.atomic import WriteError, atomic_write, atomic_write_text
from rcig.errors import RcigError
from rcig.run.checkpoint import load_checkpoint, save_checkpoint

LOCK_FILE = "run.lock"
RUN_FILES = ("run.json", "log.jsonl", "distilled.safetensors", "grid.png", "report.html", "eval.json",
             "checkpoints/latest.pt", "checkpoints/iter_*.safetensors")


def finished_state(saved: dict[str, Any]) -> dict[str, Any]:
    """A finished run's checkpoint state: ``saved`` with each pool network back at its initial
    weights (its seed alone, zero steps), which makes the checkpoint a few MB instead of the
    pool's size (hundreds of MB at width 128). Extending the finished run (``--resume --steps
    MORE``) is then deterministic but not the run a larger ``steps`` would have made: the pool's
    networks start again from their seeds. ``keep_checkpoint`` keeps the whole state."""
    pool = saved["pool"]
    members = [{"seed": member["seed"], "steps": 0} for member in pool["members"]]
    return {**saved, "pool": {**pool, "members": members}}


class RunFolder:
    """The folder of one run (``path``), as the process that runs it sees it."""

    def __init__(self, path: Path):
        self.path = path
        self.run_file = path / "run.json"
        self.log = path / "log.jsonl"
        self.latest = path / "checkpoints" / "latest.pt"
        self._lock_fd: int | None = None
        self._created = False

    # ------------------------------------------------------------------ the lock

    def lock(self) -> None:
        """Hold ``run.lock`` for as long as this process runs in the folder; an RcigError naming
        the holder when another process holds it."""
        self._created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise RcigError(f"cannot write {self.path / LOCK_FILE}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 1000).decode(errors="replace")
            os.close(fd)
            raise RcigError(f"{self.path} is in use by another rcig process ({describe_holder(holder)}); "
                            "wait for it to end, or stop it (its last checkpoint stands)") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode())
        self._lock_fd = fd

    def release(self, failed: bool = False) -> None:
        """Give the lock back; ``failed``: a folder this process created and left holding nothing
        but the lock file goes too."""
        if self._lock_fd is None:
            return
        os.close(self._lock_fd)
        self._lock_fd = None
        if failed and self._created and [p.name for p in self.path.iterdir()] == [LOCK_FILE]:
            (self.path / LOCK_FILE).unlink(missing_ok=True)
            self.path.rmdir()

    def open(self, resume: bool) -> dict[str, Any] | None:
        """Lock the folder, then :meth:`stored_run`."""
        self.lock()
        return self.stored_run(resume)

    def close(self, failed: bool = False) -> None:
        self.release(failed)

    def resume_hint(self) -> str:
        return f"continue with: rcig distill --out {self.path} --resume"

    @contextmanager
    def writing(self):
        """Writes of the run's files: one the filesystem refuses (full disk, size limit, quota,
        read-only folder) ends the run with one line naming the file, the reason and the way on
        (every write is atomic: the last checkpoint stands)."""
        try:
            yield
        except WriteError as exc:
            raise RcigError(f"{exc}; the last checkpoint stands: {self.resume_hint()} once the folder "
                            "can be written again") from None

    # ------------------------------------------------------------ before a run

    def stored_run(self, resume: bool) -> dict[str, Any] | None:
        """The run description to resume (validated), or None for a fresh run, which must not go
        into a folder holding another run (it would mix two runs' files)."""
        from rcig import validate

        if not resume:
            if self.run_file.exists() or self.latest.exists():
                raise RcigError(f"{self.path} already holds a run; pass --resume to continue it or choose another --out")
            return None
        if not self.run_file.is_file():
            raise RcigError(f"nothing to resume: {self.run_file} does not exist")
        return validate.run_description(self.run_file.read_text(errors="replace"), str(self.run_file))

    def check_same_run(self, identity: dict[str, Any], stored: dict[str, Any]) -> None:
        """RcigError naming what differs between this call's run and the stored one (the step
        count may differ: a run can be extended; the environment is not compared)."""
        now = json.loads(json.dumps(identity))
        diff = [k for k in now if k not in ("config", "environment") and stored.get(k) != now[k]]
        diff += [f"config.{k}" for k in now["config"] if k != "steps" and stored["config"].get(k) != now["config"][k]]
        if diff:
            raise RcigError(f"cannot resume {self.path}: the run there differs in {', '.join(diff)}")

    def checkpoint(self, check) -> dict[str, Any] | None:
        """The latest checkpoint's state, passed through ``check(state, where)`` (which raises on a
        checkpoint of another run); None when there is none yet (a run killed before its first
        checkpoint starts from the beginning)."""
        if not self.latest.exists():
            return None
        stored = load_checkpoint(self.latest)
        check(stored, str(self.latest))
        return stored

    def begin(self, identity: dict[str, Any], resume: bool, resumed_at: int | None) -> None:
        """The writes that start (or restart) a run: a fresh run's empty log, or a resumed one's
        log cut back to its checkpoint's iteration ``resumed_at`` (None: no checkpoint, the run
        restarts) and its interrupted writes' temporaries removed; then run.json."""
        with self.writing():
            if resume:
                self.truncate_log(resumed_at if resumed_at is not None else -1)
                self.remove_stale_temporaries()
            else:
                atomic_write(self.log, lambda fh: None)  # a fresh run never appends to an older log
            atomic_write_text(self.run_file, json.dumps(identity, indent=2) + "\n")

    def truncate_log(self, iteration: int) -> None:
        """Drop log records past ``iteration`` (and a line a kill cut short), so the log matches
        the state."""
        from rcig import validate

        if not self.log.exists():
            return
        keep = [r for r in validate.log_records(self.log.read_text(errors="replace"), str(self.log))
                if r["iter"] <= iteration]
        atomic_write_text(self.log, "".join(json.dumps(r) + "\n" for r in keep))

    def remove_stale_temporaries(self) -> None:
        """The temporary files (``.NAME.XXXX.tmp``, rcig.atomic) of writes of a run's own files
        that a kill interrupted; a checkpoint's can be large. Nothing else is touched."""
        for name in RUN_FILES:
            folder, _, base = name.rpartition("/")
            for tmp in (self.path / folder).glob(f".{base}.*.tmp"):
                tmp.unlink(missing_ok=True)

    # -------------------------------------------------------------- during a run

    def append_log(self, record: dict[str, Any]) -> None:
        with self.writing():
            try:
                with open(self.log, "a") as fh:
                    fh.write(json.dumps(record) + "\n")
            except OSError as exc:
                raise WriteError(self.log, exc) from None

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        from rcig.crashpoints import crash_point

        with self.writing():
            save_checkpoint(self.latest, state)
        crash_point("checkpointed")

    def save_set(self, distilled, name: str) -> None:
        from rcig.io import save

        with self.writing():
            save(distilled, self.path / name)

    def save_outputs(self, distilled) -> None:
        """distilled.safetensors, grid.png and report.html, the run's result."""
        from rcig.crashpoints import crash_point
        from rcig.report import write_report
        from rcig.viz import save_grid

        self.save_set(distilled, "distilled.safetensors")
        crash_point("outputs")
        with self.writing():
            save_grid(distilled, self.path / "grid.png")
            write_report(self.path)


class NoFolder(RunFolder):
    """A run that writes nothing: no ``out``, or a rank other than the leader."""

    def __init__(self):
        pass

    def open(self, resume: bool) -> None:
        return None

    def close(self, failed: bool = False) -> None:
        pass

    def resume_hint(self) -> str:
        return "nothing was saved (no --out folder)"

    def begin(self, identity: dict[str, Any], resume: bool, resumed_at: int | None) -> None:
        pass

    def append_log(self, record: dict[str, Any]) -> None:
        pass

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        pass

    def save_set(self, distilled, name: str) -> None:
        pass

    def save_outputs(self, distilled) -> None:
        pass


def describe_holder(text: str) -> str:
    """The lock file's ``{"pid", "host", "started"}`` as ``pid P on HOST, started T``."""
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


__all__ = ["LOCK_FILE", "NoFolder", "RUN_FILES", "RunFolder", "describe_holder", "finished_state"]
