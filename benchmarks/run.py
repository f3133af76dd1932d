"""The benchmark: distilled vs random-real vs herding vs DM vs the full training set, and speed.

One entry command runs every piece that is not done yet and then rewrites the report::

    python benchmarks/run.py                        # everything (many hours on 2 CPU cores)
    python benchmarks/run.py --only distill eval    # some pieces
    python benchmarks/run.py --only report          # rebuild results.json / BENCHMARKS.md

Pieces (each one's result is cached in ``--work``/pieces/<name>.json, so an interrupted
benchmark resumes where it stopped; delete a file, or pass ``--redo``, to run it again):

* ``distill_<ipc>``: ``rcig distill`` of Fashion-MNIST with ``--preset`` (default ``fast``,
  the CPU recipe; ``depth_3_no_flip`` is the paper's) for a wall-clock budget of ``--minutes``
  per ipc, its setup (a herding start, a learning-rate tuning) included (resumable: a killed
  run goes on from its checkpoint with the budget that is left), scored every
  ``--eval-every`` steps by one protocol network with augmentation (the accuracy-vs-step
  curve). Each preset has its own run folder; a cached piece of another preset is refused.
* ``eval_<ipc>_<method>`` for distilled, random, herding and dm: ``rcig eval --json`` with
  ``--models`` networks per setting, with and without augmentation. The DM set is made by
  ``rcig baseline --method dm`` with the distillation's wall-clock budget (``--minutes``, the
  same threads), its cost (iterations, wall and CPU seconds) kept in its piece as ``made``.
  A killed DM run, or a killed eval, goes on from the progress it keeps beside its output
  when the piece runs again.
  ``--more-networks`` adds ``--models`` networks to each cached eval (the next seeds) and
  pools the scores, so a slow eval can be grown a network at a time.
* ``--adopt IPC=RUN_DIR``: ``distill_<ipc>`` taken from a run made outside this script
  (``rcig distill --out RUN_DIR`` of the same dataset, ipc and preset, e.g. one grown over
  several sittings with ``--resume``): its log gives the steps, the cost and the curve, its
  ``distilled.safetensors`` is the set, and a ``distilled.eval.json`` beside it (``rcig eval
  --json``) becomes ``eval_<ipc>_distilled``. A run of another config is refused. A run of
  another seed than ``--seed`` becomes ``seed_<ipc>_<seed>`` instead (its scores, steps and
  cost): the report gives each seed's scores and the mean over the seeds beside the table's set.
* ``full_train``: the same ConvNet and protocol trained on all 60,000 training images
  (batch 256, ``--full-train-steps`` steps): a reference point for the protocol's short
  training, not a ceiling (2,000 steps are about 8.5 epochs; the ConvNet does better with
  long training, and a distilled set can score above it).
* ``speed``: ``benchmarks/speed.py`` (seconds per outer step, its parts, peak RSS, the
  CPU's conv ceiling and the step's fraction of it).
* ``solvers``: ``benchmarks/solvers.py`` (how close the reference's Adam solves and the
  conjugate-gradient option get to the exact delta* and H^-1 g, and to the exact meta-gradient).
* ``report``: ``benchmarks/results.json``, the figures ``benchmarks/methods.png`` (every
  method's scores side by side) and ``benchmarks/accuracy_vs_step.png`` (for runs scored
  along the way, ``--eval-every``) and the
  tables of ``BENCHMARKS.md`` and the results table of ``README.md`` (each between its
  ``<!-- results -->`` markers); the distilled sets and the DM sets, with their scores, are
  copied to ``distilled/``.

Every piece this script measures or adopts is stamped with when, where and at which commit
it was recorded (``"recorded": {"date", "machine", "commit"}``); the report marks each figure
with its stamp. ``--restore`` keeps the stamps of the pieces it restores, so a report rewritten
on a fresh clone cites the machines and commits the figures came from, and it takes the DM sets
shipped in ``distilled/`` as this work's, so ``--more-networks`` scores the set the report shows::

    python benchmarks/run.py --work W --restore --only report
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from sections import write_section  # benchmarks/ is on sys.path when run as a script
from runlog import read_curve, read_progress
from speed import DEFAULT_CASES, write_json

ROOT = Path(__file__).resolve().parent.parent
DATASET = "fashion_mnist"
PRESET = "fast"  # the CPU recipe (docs/algorithm.md); the paper's is depth_3_no_flip
METHODS = ("random", "herding", "dm", "distilled")  # evaluation order: baselines need no distillation
RUN_FIELDS = ("seed", "steps", "wall_s", "cpu_s", "budget_minutes", "curve", "recorded")  # a distill_<ipc> piece's, in a report row
SECTION = "results"  # the tables' markers in BENCHMARKS.md and README.md
PAPER = {1: 79.8, 10: 88.5}  # RCIG on Fashion-MNIST in the paper (ConvNet, GPU), the README's last column


def rcig(*args: str) -> None:
    """Run the ``rcig`` command line in a child process (its output goes to ours). One that
    fails or is stopped by a signal ends the benchmark with one line and its exit status (128 +
    the signal's number); the pieces done stand, and the same command goes on from them."""
    command = [sys.executable, "-m", "rcig.cli", *args]
    print("$ rcig " + " ".join(args), flush=True)
    code = subprocess.run(command).returncode
    if code != 0:
        status = 128 - code if code < 0 else code  # subprocess gives -N for a child ended by signal N
        print(f"benchmarks: rcig {args[0]} ended with exit status {status}; the pieces done stand, and the same "
              "command goes on from them", file=sys.stderr)
        raise SystemExit(status)


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.work)
        self.pieces = self.work / "pieces"
        self.pieces.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ piece bookkeeping

    def done(self, name: str) -> dict | None:
        path = self.pieces / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def record(self, name: str, result: dict) -> dict:
        write_json(result, self.pieces / f"{name}.json")
        return result

    def run_piece(self, name: str, fn) -> dict:
        if name not in self.args.redo and (cached := self.done(name)) is not None:
            print(f"[{name}] done before; cached in {self.pieces / (name + '.json')}")
            return cached
        print(f"[{name}] running ...", flush=True)
        started = time.perf_counter()
        result = fn()
        print(f"[{name}] finished in {(time.perf_counter() - started) / 60:.1f} min", flush=True)
        return self.record(name, {**result, "recorded": provenance()})

    # -------------------------------------------------------------------------- pieces

    def run_dir(self, ipc: int) -> Path:
        """The folder of the ipc's distillation: an adopted run's, else this script's own."""
        piece = self.done(f"distill_{ipc}") or {}
        return Path(piece["run_dir"]) if piece.get("adopted") else self.own_run_dir(ipc)

    def own_run_dir(self, ipc: int, preset: str | None = None) -> Path:
        return self.work / f"{DATASET}_ipc{ipc}_{preset or self.args.preset}"

    def check_preset(self, ipc: int) -> None:
        """Refuse to mix presets: the cached distillation (and its eval) must be this run's."""
        cached = self.done(f"distill_{ipc}")
        if cached and cached.get("preset", "depth_3_no_flip") != self.args.preset and \
                f"distill_{ipc}" not in self.args.redo:
            raise SystemExit(f"benchmarks: the cached distill_{ipc} used preset {cached.get('preset', 'depth_3_no_flip')}, "
                             f"not {self.args.preset}: pass --redo distill_{ipc} (its eval is then redone too), or another --work")

    def distill(self, ipc: int) -> dict:
        out = self.own_run_dir(ipc)
        budget = self.args.minutes - read_progress(out / "log.jsonl").wall_seconds / 60
        if budget > 0:
            resume = ["--resume"] if (out / "run.json").exists() else \
                ["--preset", self.args.preset, "--seed", str(self.args.seed)]
            rcig("distill", "--dataset", DATASET, "--ipc", str(ipc), "--steps", str(self.args.max_steps),
                 "--max-minutes", f"{budget:.2f}", "--eval-every", str(self.args.eval_every), "--no-eval",
                 "--out", str(out), *resume)
        made = json.loads((out / "run.json").read_text())
        return self.run_record(ipc, out, made["seed"], budget_minutes=self.args.minutes)

    def run_record(self, ipc: int, out: Path, seed: int, **extra) -> dict:
        """The piece of the run in ``out`` (``seed``: its run.json's): steps, cost, curve."""
        progress = read_progress(out / "log.jsonl")
        return {"ipc": ipc, "preset": self.args.preset, "seed": seed, "steps": progress.steps, "wall_s": round(progress.wall_seconds, 1),
                "cpu_s": round(progress.cpu_seconds, 1), **extra, "run_dir": str(out),
                "curve": read_curve(out / "log.jsonl")}

    def adopt(self, ipc: int, run: Path) -> None:
        """Record ``run`` (an ``rcig distill --out`` folder) as ``distill_<ipc>``, and its
        ``distilled.eval.json``, if any, as ``eval_<ipc>_distilled``."""
        run = run.resolve()
        for name in ("run.json", "log.jsonl", "distilled.safetensors"):
            if not (run / name).is_file():
                raise SystemExit(f"benchmarks: --adopt {ipc}={run}: no {name} there (not an rcig distill --out folder?)")
        made = json.loads((run / "run.json").read_text())
        if (made.get("dataset"), made.get("ipc")) != (DATASET, ipc):
            raise SystemExit(f"benchmarks: --adopt {ipc}={run}: that run distilled {made.get('dataset')} at "
                             f"{made.get('ipc')} ipc, not {DATASET} at {ipc}")
        if differences := preset_differences(made["config"], self.args.preset, ipc):
            raise SystemExit(f"benchmarks: --adopt {ipc}={run}: not the {self.args.preset} preset's run "
                             f"({', '.join(differences)})")
        scores = run / "distilled.eval.json"
        seed = made["seed"]
        if seed != self.args.seed:  # another seed of the same recipe: its spread, not the table's set
            if not scores.exists():
                raise SystemExit(f"benchmarks: --adopt {ipc}={run}: a run of seed {seed} (not --seed "
                                 f"{self.args.seed}) is reported by its scores, and it has no distilled.eval.json")
            self.record(f"seed_{ipc}_{seed}", {**self.run_record(ipc, run, seed, budget_minutes=None, adopted=True),
                                               "scores": json.loads(scores.read_text()),
                                               "recorded": provenance()})
            return
        self.record(f"distill_{ipc}", {**self.run_record(ipc, run, seed, budget_minutes=None, adopted=True),
                                       "recorded": provenance()})
        if scores.exists():
            self.record(f"eval_{ipc}_distilled", {**json.loads(scores.read_text()), "recorded": provenance()})

    def restore(self, results: dict) -> list[str]:
        """Cache each piece that ``results`` (a report's ``results.json``) holds and ``--work``
        lacks, the inverse of :meth:`results`, and copy in each scored DM set shipped in
        distilled/ (making one again would cost its budget and give another set). Returns the
        names of the pieces and sets written."""
        written = []

        def keep(name: str, piece: dict | None) -> None:
            if piece and self.done(name) is None:
                self.record(name, piece)
                written.append(name)

        for ipc, row in results.get(DATASET, {}).items():
            for method in METHODS:
                keep(f"eval_{ipc}_{method}", row.get(method))
            # the DM set that was scored, so more networks score the same set, not a new one
            shipped, path = SHIPPED / f"{DATASET}_dm_ipc{ipc}.safetensors", self.set_path(int(ipc), "dm")
            if row.get("dm") and shipped.exists() and not path.exists():
                shutil.copyfile(shipped, path)
                written.append(path.name)
            if row.get("steps") is not None:
                adopted = row.get("adopted_from")
                keep(f"distill_{ipc}", {
                    "ipc": int(ipc), "preset": row.get("preset"), **{field: row.get(field) for field in RUN_FIELDS},
                    "run_dir": adopted or str(self.own_run_dir(int(ipc), row.get("preset"))),
                    **({"adopted": True} if adopted else {})})
            for seed, piece in (row.get("seeds") or {}).items():
                keep(f"seed_{ipc}_{seed}", piece)
        for name in ("full_train", "speed", "solvers"):
            keep(name, results.get(name))
        return written

    def seeds(self, ipc: int) -> dict:
        """The other seeds' runs of the ipc (``--adopt`` of a run whose seed is not ``--seed``),
        by seed."""
        found = {int(path.stem.rsplit("_", 1)[1]): path.stem for path in self.pieces.glob(f"seed_{ipc}_*.json")}
        return {str(seed): self.done(found[seed]) for seed in sorted(found)}

    def set_path(self, ipc: int, method: str) -> Path:
        """Where the ipc's set of ``method`` is (or will be)."""
        if method == "distilled":
            return self.run_dir(ipc) / "distilled.safetensors"
        return self.work / f"{DATASET}_{method}_ipc{ipc}.safetensors"

    def set_file(self, ipc: int, method: str) -> Path:
        """:meth:`set_path`, a baseline's set made first if it is not there."""
        path = self.set_path(ipc, method)
        if method != "distilled" and not path.exists():  # DM: the distillation's budget, per ipc
            budget = ["--max-minutes", str(self.args.minutes)] if method == "dm" else []
            rcig("baseline", "--dataset", DATASET, "--ipc", str(ipc), "--method", method,
                 "--seed", str(self.args.seed), "--out", str(path), *budget)
        return path

    def evaluate(self, ipc: int, method: str) -> dict:
        path = self.set_file(ipc, method)
        if not path.exists():
            raise SystemExit(f"benchmarks: {path} is missing; run the distill_{ipc} piece first")
        name = f"eval_{ipc}_{method}"
        cached = self.done(name) or {}
        settings = ("no_aug", "aug") if self.args.settings == "both" else (self.args.settings,)
        # --more-networks: the new networks' seeds follow the cached ones (rcig eval trains
        # networks seed, seed + 1, ...), so the merged scores are those of one larger eval
        first_seed = networks_done(cached, settings) if self.args.more_networks else 0
        json_out = self.work / f"{name}.json"
        # an earlier eval's output, already in the piece: this eval writes its own (a killed
        # eval's networks stay in json_out's .partial, which rcig eval goes on from)
        json_out.unlink(missing_ok=True)
        rcig("eval", str(path), "--models", str(self.args.models), "--settings", self.args.settings,
             "--seed", str(first_seed), "--json", str(json_out))
        fresh = json.loads(json_out.read_text())
        if method == "dm":
            fresh["made"] = dm_cost(path)
        if self.args.more_networks:
            fresh = {**fresh, **{s: pooled(cached[s], fresh[s]) for s in settings if s in cached},
                     "models": first_seed + self.args.models}
        return self.keep_other_setting(name, fresh)

    def keep_other_setting(self, name: str, fresh: dict) -> dict:
        """An eval of one setting (``--settings aug``) replaces that setting only: the other
        setting's scores stay from the piece's previous record, if it has them and its networks
        started from the same initialisation (a piece has one ``init``; a piece without one
        used torch's), with the stamp of when they were recorded (the report cites it)."""
        previous = self.done(name) or {}
        others = [s for s in ("no_aug", "aug") if s not in fresh and s in previous]
        if others and previous.get("init", "torch") != fresh.get("init", "torch"):
            print(f"[{name}] dropped the cached {' and '.join(others)} scores: their networks used the "
                  f"{previous.get('init', 'torch')} init, this eval's the {fresh.get('init', 'torch')} one", flush=True)
            return fresh
        kept = {s: {**previous[s], **({"recorded": when} if (when := stamp(previous, s)) else {})} for s in others}
        return {**fresh, **kept}

    def full_train(self) -> dict:
        # every training image is a "support" of 6,000 per class; the protocol then uses
        # batches of 256 and this many steps
        path = self.work / f"{DATASET}_full_train.safetensors"
        if not path.exists():
            rcig("baseline", "--dataset", DATASET, "--ipc", "6000", "--method", "random", "--out", str(path))
        json_out = self.work / "eval_full_train.json"
        rcig("eval", str(path), "--models", str(self.args.full_train_models), "--steps",
             str(self.args.full_train_steps), "--settings", self.args.settings, "--json", str(json_out))
        return self.keep_other_setting("full_train", json.loads(json_out.read_text()))

    def speed(self) -> dict:
        out = self.work / "speed.json"
        if "speed" in self.args.redo:  # speed.py goes on from a stopped run's file: start afresh
            out.unlink(missing_ok=True)
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--out", str(out),
                        "--steps", str(self.args.speed_steps), "--cases", *self.args.speed_cases], check=True)
        return json.loads(out.read_text())

    def solvers(self) -> dict:
        out = self.work / "solvers.json"
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "solvers.py"), "--out", str(out),
                        "--ipcs", *map(str, self.args.ipcs)], check=True)
        return json.loads(out.read_text())

    # -------------------------------------------------------------------------- report

    def results(self) -> dict:
        out: dict = {DATASET: {}}
        for ipc in self.args.ipcs:
            row = {}
            for method in METHODS:
                row[method] = self.done(f"eval_{ipc}_{method}")
            run = self.done(f"distill_{ipc}") or {}
            row.update(preset=run.get("preset", "depth_3_no_flip") if run else None,
                       **{field: run.get(field) for field in RUN_FIELDS},
                       adopted_from=run.get("run_dir") if run.get("adopted") else None,
                       seeds=self.seeds(ipc) or None)
            out[DATASET][str(ipc)] = row
        out["full_train"] = self.done("full_train")
        # a stopped speed piece leaves the cases it finished in speed.json: report those
        partial = self.work / "speed.json"
        out["speed"] = self.done("speed") or (json.loads(partial.read_text()) if partial.exists() else None)
        out["solvers"] = self.done("solvers")
        out["machine"] = machine()
        return out

    def report(self) -> dict:
        results = self.results()
        (ROOT / "benchmarks" / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        figures = []
        for name, alt, plot in FIGURES:
            if plot(results, ROOT / "benchmarks" / name):
                figures.append((name, alt))
            else:  # nothing to draw: no figure left behind from an older report
                (ROOT / "benchmarks" / name).unlink(missing_ok=True)
        ship_sets(self, results)
        write_markdown(results, ROOT / "BENCHMARKS.md", self.args, figures)
        write_readme(results, ROOT / "README.md")
        print(f"wrote {ROOT / 'benchmarks' / 'results.json'} and {ROOT / 'BENCHMARKS.md'}")
        return results


# ------------------------------------------------------------------------------ helpers

def provenance() -> dict:
    """When, where and at which commit a piece is recorded (the report cites it per figure)."""
    m = machine()
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"date": m["date"], "machine": f"{m['cpu']}, {m['cores']} cores", "commit": commit}


def stamp(piece: dict, setting: str) -> dict | None:
    """When a piece's scores of one setting were recorded: the setting's own stamp when it was
    kept from an earlier eval of the piece (one setting scored again), else the piece's."""
    return piece[setting].get("recorded") or piece.get("recorded")


class Sources:
    """Numbered citations of pieces' ``recorded`` stamps: ``cite(piece)`` gives " [n]" (the same n
    for the same stamp), ``legend()`` the lines that say what each n is."""

    def __init__(self):
        self.stamps: list[tuple] = []

    def cite(self, piece: dict | None) -> str:
        stamp = (piece or {}).get("recorded")
        if not stamp:
            return ""
        key = (stamp["date"], stamp["machine"], stamp["commit"])
        if key not in self.stamps:
            self.stamps.append(key)
        return f" [{self.stamps.index(key) + 1}]"

    def legend(self) -> list[str]:
        return [f"[{i}] {date}, {where}, commit {commit}" for i, (date, where, commit) in enumerate(self.stamps, 1)]


def machine() -> dict:
    import platform

    import torch

    from speed import cpu_name  # benchmarks/ is on sys.path when this file runs as a script

    # no thread count here: it would be this report process's; the speed piece records the
    # threads its timings used, and each figure's notes in BENCHMARKS.md say how it was run
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}


# Each method's name in figures and its colour.
METHOD_STYLE = {"random": ("random real", "#9e9e9e"), "herding": ("herding", "#8d6e63"),
                "dm": ("DM", "#5c6bc0"), "distilled": ("RCIG", "#e53935")}


def plot_methods(results: dict, path: Path) -> bool:
    """Every method's score side by side, one panel per setting (without / with augmentation):
    per ipc a bar per method that was scored (mean over its networks, the spread as an error
    bar, the mean above it and the network count at its foot). Returns whether there was anything to draw."""
    rows = results[DATASET]
    scored = [m for m in METHODS if any((row.get(m) or {}).get(s) for row in rows.values() for s in ("no_aug", "aug"))]
    if not scored:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ipcs = list(rows)
    width = 0.8 / len(scored)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), dpi=120, sharey=True)
    for ax, (setting, title) in zip(axes, (("no_aug", "trained without augmentation"),
                                           ("aug", "trained with augmentation"))):
        for k, method in enumerate(scored):
            name, colour = METHOD_STYLE[method]
            for i, ipc in enumerate(ipcs):
                s = (rows[ipc].get(method) or {}).get(setting)
                if not s:
                    continue
                x = i + (k - (len(scored) - 1) / 2) * width
                ax.bar(x, 100 * s["mean"], width, yerr=100 * s["std"] if len(s["accs"]) > 1 else None,
                       color=colour, label=name if i == next(j for j, q in enumerate(ipcs)
                                                             if (rows[q].get(method) or {}).get(setting)) else None)
                ax.text(x, 1, f"{len(s['accs'])}", ha="center", va="bottom", fontsize=7, color="white")
                ax.text(x, 100 * (s["mean"] + s["std"]) + 1, f"{100 * s['mean']:.1f}", ha="center", va="bottom",
                        fontsize=7)
        ax.set_xticks(range(len(ipcs)), [f"{ipc} ipc" for ipc in ipcs])
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].set_ylim(0, 100)
    handles = {h.get_label(): h for ax in axes for h in ax.get_legend_handles_labels()[0]}
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles), frameon=False)
    fig.suptitle("Fashion-MNIST: each method's set, scored by the same protocol (networks on the bars)", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return True


def plot_curves(results: dict, path: Path) -> bool:
    """Accuracy with augmentation against outer steps, one line per ipc whose run was scored
    along the way (its periodic one-network scores, then the final set's mean over the eval's
    networks). Returns whether any run had such a curve."""
    rows = {ipc: row for ipc, row in results[DATASET].items() if row.get("curve")}
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for ipc, row in rows.items():
        # the curve's points (1 network each) and the final set's protocol score
        points = [(p["iter"], 100 * p["aug"]) for p in row.get("curve") or []]
        final = (row.get("distilled") or {}).get("aug")
        if final and row.get("steps"):
            points.append((row["steps"], 100 * final["mean"]))
        ax.plot(*zip(*points), "o-", label=f"distilled, {ipc} ipc")
        if row.get("random"):
            ax.axhline(100 * row["random"]["aug"]["mean"], ls="--", lw=1, color=ax.lines[-1].get_color(),
                       label=f"random real, {ipc} ipc")
    ax.set_xlabel("outer steps")
    ax.set_ylabel("test accuracy (%), with aug")
    presets = sorted({row["preset"] for row in rows.values() if row.get("preset")})
    ax.set_title(f"Fashion-MNIST, RCIG {', '.join(presets) or 'distilled'}, 2-core CPU")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


# The report's figures: file in benchmarks/, its alt text, the function that draws it.
FIGURES = [("methods.png", "every method's score at each ipc, without and with augmentation", plot_methods),
           ("accuracy_vs_step.png", "accuracy with augmentation against outer steps", plot_curves)]


SHIPPED = ROOT / "distilled"  # the sets the report ships, each beside its scores (NAME.eval.json)


def ship_sets(bench: Bench, results: dict) -> None:
    """Copy each evaluated distilled set, and each evaluated DM set (the peer's, whose making
    costs the distillation's budget), to distilled/ with its scores."""
    for ipc, row in results[DATASET].items():
        for method, name in (("distilled", f"{DATASET}_ipc{ipc}"), ("dm", f"{DATASET}_dm_ipc{ipc}")):
            source = bench.set_path(int(ipc), method)
            if row.get(method) and source.exists():
                SHIPPED.mkdir(exist_ok=True)
                shutil.copyfile(source, SHIPPED / f"{name}.safetensors")
                scores = {**row[method], "file": f"{name}.safetensors"}  # relative to distilled/
                (SHIPPED / f"{name}.eval.json").write_text(json.dumps(scores, indent=2) + "\n")


def preset_differences(config: dict, preset: str, ipc: int) -> list[str]:
    """The fields where a run's config (``run.json``'s) differs from ``preset``'s for Fashion-MNIST,
    as "field: run's value vs preset's"; the description, the step count, the checkpoint steps
    and ``chunk_rows`` (the memory a step takes, recorded as the run took it: the same
    gradients up to float summation order) do not change what a step does and are not
    compared, and ``init`` is compared resolved ("auto" is herding at 1 ipc)."""
    from rcig.algorithm.outer import start_images
    from rcig.config import load_preset

    expected = load_preset(preset, image_size=28, channels=1).to_dict()
    out = []
    for field in sorted(set(expected) - {"description", "steps", "checkpoint_iters", "chunk_rows"}):
        ours, theirs = expected[field], config.get(field)
        if field == "init":
            ours, theirs = start_images(ours, ipc), start_images(theirs, ipc)
        if ours != theirs:
            out.append(f"{field}: {theirs!r} vs {ours!r}")
    return out


def networks_done(cached: dict, settings) -> int:
    """How many networks the cached eval scored in each of ``settings`` (they must agree)."""
    counts = {len(cached[s]["accs"]) if s in cached else 0 for s in settings}
    if len(counts) > 1:
        raise SystemExit(f"benchmarks: --more-networks needs the same number of cached networks in "
                         f"{' and '.join(settings)}; run one setting at a time (--settings)")
    return counts.pop()


def pooled(old: dict, new: dict) -> dict:
    """One score from two evals' networks, summarised as ``rcig eval`` summarises its own
    (the networks that diverged in either kept marked)."""
    from rcig.evaluation.protocol import summarise

    def diverged(scores: dict) -> list[bool]:
        return [i in scores.get("diverged", []) for i in range(len(scores["accs"]))]

    return summarise(old["accs"] + new["accs"], diverged(old) + diverged(new))


def dm_cost(path: Path) -> dict:
    """What the DM set in ``path`` cost: ``{"iterations", "max_minutes", "seconds", "cpu_seconds"}``."""
    from rcig.io import load

    meta = load(path).meta
    return {"iterations": meta["dm"]["iterations"], "max_minutes": meta["dm"]["max_minutes"], **meta["cost"]}


def fmt(score: dict | None, setting: str) -> str:
    if not score or setting not in score:
        return "not run"
    s = score[setting]
    if len(s["accs"]) == 1:  # one network has no spread to show
        return f"{100 * s['mean']:.2f} (1)"
    return f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f} ({len(s['accs'])})"


def write_markdown(results: dict, path: Path, args, figures: list[tuple[str, str]] = ()) -> None:
    """The results section of BENCHMARKS.md: the scores table, how each set was made, the
    full training set, speed and solvers, the sources, then ``figures`` ((file in
    benchmarks/, alt text) each)."""
    sources = Sources()

    def cell(piece: dict | None, setting: str) -> str:
        text = fmt(piece, setting)
        return text if text == "not run" else text + sources.cite({"recorded": stamp(piece, setting)})

    lines = ["| ipc | setting | distilled (RCIG) | random real | herding | DM | preset | steps | distillation time |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for ipc, row in results[DATASET].items():
        run = {"recorded": row.get("recorded")}
        for setting, label in (("no_aug", "no aug"), ("aug", "aug")):
            wall = minutes(row) + (sources.cite(run) if row.get("wall_s") else "")
            lines.append(f"| {ipc} | {label} | {cell(row['distilled'], setting)} | {cell(row['random'], setting)} | "
                         f"{cell(row['herding'], setting)} | {cell(row.get('dm'), setting)} | {row.get('preset') or '-'} | "
                         f"{row.get('steps') or '-'} | "
                         f"{wall} |")
    dm = [f"{ipc} ipc {m['iterations']} iterations in {m['seconds'] / 60:.0f} min ({m['cpu_seconds'] / 60:.0f} CPU min)"
          for ipc, row in results[DATASET].items() if (m := (row.get("dm") or {}).get("made"))]
    if dm:
        lines += ["", f"DM (Distribution Matching, `rcig baseline --method dm`, the distillation's budget): {'; '.join(dm)}."]
    full = results.get("full_train")
    torch_init = [f"{method} at {ipc} ipc" for ipc, row in results[DATASET].items() for method in METHODS
                  if row.get(method) and row[method].get("init", "torch") != "reference"]
    torch_init += ["the full training set"] if full and full.get("init", "torch") != "reference" else []
    if torch_init:  # an eval without an init trained its networks from torch's initialisation
        lines += ["", f"Scored with torch's initialisation of the protocol's networks (the others with "
                      f"the reference's): {', '.join(torch_init)}."]
    made = [f"* {ipc} ipc: {row['distilled']['made_with']}" for ipc, row in results[DATASET].items()
            if (row.get("distilled") or {}).get("made_with")]
    if made:
        lines += ["", "How the distilled sets were made and scored:", "", *made]
    spread = [(ipc, row) for ipc, row in results[DATASET].items() if row.get("seeds")]
    if spread:
        lines += ["", "Seeds of the distillation (the same preset and budget, another `--seed`; every set scored "
                      "by the protocol's networks 0, 1, ...):", "",
                  "| ipc | seed | no aug | aug | steps | distillation time |", "| --- " * 6 + "|"]
        for ipc, row in spread:
            for run, scores in seed_runs(row):
                which = " (the table's set)" if run is row else ""
                lines.append(f"| {ipc} | {run.get('seed')}{which} | "
                             f"{fmt(scores, 'no_aug')} | {fmt(scores, 'aug')} | {run.get('steps') or '-'} | "
                             f"{minutes(run)}{sources.cite(run)} |")
            lines.append(f"| {ipc} | the seeds' means | {seed_mean(row, 'no_aug')} | {seed_mean(row, 'aug')} | | |")
    adopted = [ipc for ipc, row in results[DATASET].items() if row.get("adopted_from")]
    if adopted:
        lines += ["", f"Distillations at {' and '.join(adopted)} ipc: runs made outside this script and adopted "
                      f"(--adopt); results.json names their folders."]
    lines += ["", f"Full training set (all images, the protocol's short training; not a ceiling): "
                  f"no aug {cell(full, 'no_aug')}, aug {cell(full, 'aug')}"
              + (f", {full['steps']} steps of batch 256" if full else "")]
    speed = results.get("speed")
    if speed:
        lines += ["", f"Seconds per outer step and its parts, {speed.get('threads', '?')} threads"
                      f"{sources.cite(speed)}:",
                  "", "| case | s/step | inner solve | target fwd/bwd (direct) | H^-1 g | implicit | pool | "
                      "peak RSS | GFLOP/step | of ceiling |", "| --- " * 10 + "|"]
        for c in speed["cases"]:
            p = c["parts"]
            frac = f"{100 * c['fraction_of_ceiling']:.0f}%" if c.get("fraction_of_ceiling") else "-"
            gflop = f"{c['gflop_per_step']:.0f}" if c.get("gflop_per_step") else "-"
            lines.append(f"| {c['case']} | {c['seconds_per_step']:.1f} | {p.get('inner_solve', 0):.1f} | "
                         f"{p.get('direct', 0):.1f} | {p.get('hinv', 0):.1f} | {p.get('implicit', 0):.1f} | "
                         f"{p.get('pool', 0):.1f} | {c['peak_rss_mb'] / 1024:.1f} GB | {gflop} | {frac} |")
        ceil = ", ".join(f"{k} {v['gflops_per_s']:.0f} GFLOP/s" for k, v in speed["ceiling"].items())
        lines += ["", f"Conv ceiling (fwd+bwd of the same ConvNet alone, batch 256): {ceil}."]
    solvers = results.get("solvers")
    if solvers:
        lines += ["", f"How close each solver gets to the exact solves{sources.cite(solvers)}:",
                  "", "| ipc | solver | iterations | delta* error | H^-1 g error | cos, image gradient | "
                      "cos, label gradient | networks |", "| --- " * 8 + "|"]
        for r in solvers["summary"]:
            lines.append(f"| {r['ipc']} | {r['solver']} | {r['iterations']} | {r['delta_err']:.2g} | "
                         f"{r['v_err']:.2g} | {r['cos_x']:.4f} | {r['cos_y']:.5f} | {r['networks']} |")
        lines += ["", "Errors relative to CG run to convergence; cos: cosine between the meta-gradient and "
                      "the one from that converged solve."]
    m = results["machine"]
    lines += ["", "Where each figure comes from (date, machine, commit):", ""]
    lines += [f"* {line}" for line in sources.legend()] or ["* not recorded"]
    lines += ["", f"Report written {m['date']} on {m['cpu']}, {m['cores']} cores, torch {m['torch']}, "
                  f"Python {m['python']}."]
    lines += [line for name, alt in figures for line in ("", f"![{alt}](benchmarks/{name})")]
    write_section(path, "\n".join(lines), SECTION)


def seed_runs(row: dict) -> list[tuple[dict, dict | None]]:
    """A report row's distillations, the table's first, then its other seeds': (the run's
    record: seed, steps, time, stamp; its scores)."""
    return [(row, row.get("distilled")), *((run, run["scores"]) for run in (row.get("seeds") or {}).values())]


def seed_mean(row: dict, setting: str) -> str:
    """The mean over a row's seeds of each seed's mean score, and how far apart they are."""
    means = [100 * scores[setting]["mean"] for _, scores in seed_runs(row) if scores and setting in scores]
    if len(means) < 2:
        return "-"
    return f"{sum(means) / len(means):.2f} (seeds {max(means) - min(means):.2f} apart)"


def minutes(run: dict) -> str:
    """A distillation's wall time, and its CPU time where the log has it: "118 min (116 CPU min)"."""
    if not run.get("wall_s"):
        return "-"
    text = f"{run['wall_s'] / 60:.0f} min"
    if run.get("cpu_s") and math.isfinite(run["cpu_s"]):  # NaN: logs without CPU times
        text += f" ({run['cpu_s'] / 60:.0f} CPU min)"
    return text


def summary(score: dict | None) -> str:
    """A set's scores as the README gives them: "no aug / aug (networks)", one decimal,
    ± the spread over several networks; each setting's count when they differ."""
    if not score or not any(s in score for s in ("no_aug", "aug")):
        return "not scored"
    parts, counts = [], []
    for setting in ("no_aug", "aug"):
        s = score.get(setting)
        if s is None:
            parts.append("not scored")
            continue
        n = len(s["accs"])
        parts.append(f"{100 * s['mean']:.1f}" + (f" ± {100 * s['std']:.1f}" if n > 1 else ""))
        counts.append(n)
    if len(set(counts)) == 1:
        return " / ".join(parts) + f" ({counts[0]})"
    return " / ".join(p if p == "not scored" else f"{p} ({counts.pop(0)})" for p in parts)


def write_readme(results: dict, path: Path) -> None:
    """The README's results table (between its markers): each ipc's distilled set with the
    baselines beside it, how it was made, and the paper's figure."""
    rows = results[DATASET]
    dm = any(row.get("dm") for row in rows.values())
    head = ["Fashion-MNIST, images per class", "made with", "RCIG", "random real", "herding", *(["DM"] if dm else []),
            "paper (GPU)"]
    lines = ["| " + " | ".join(head) + " |", "| --- " * len(head) + "|"]
    for ipc, row in rows.items():
        if not row.get("distilled"):
            continue
        made = f"`{row.get('preset')}`" + (f", seed {row['seed']}" if row.get("seed") is not None else "") + \
            f", {row.get('steps')} steps" + (f", {minutes(row)}" if row.get("wall_s") else "")
        cells = [ipc, made, summary(row["distilled"]), summary(row.get("random")), summary(row.get("herding")),
                 *([summary(row.get("dm"))] if dm else []), f"{PAPER.get(int(ipc), '')}"]
        lines.append("| " + " | ".join(cells) + " |")
    for ipc, row in rows.items():
        if row.get("distilled") and row.get("seeds"):
            others = "; ".join(f"seed {run.get('seed')}, {run.get('steps')} steps: {summary(scores)}"
                               for run, scores in seed_runs(row)[1:])
            lines += ["", f"Other seeds at {ipc} ipc, the same preset and budget: {others}; the seeds' means "
                          f"{seed_mean(row, 'no_aug')} / {seed_mean(row, 'aug')}."]
    write_section(path, "\n".join(lines), SECTION)


# --------------------------------------------------------------------------------- main

def adoption(text: str) -> tuple[int, Path]:
    """``--adopt``'s ``IPC=RUN_DIR``."""
    ipc, sep, run = text.partition("=")
    if not sep or not ipc.isdigit() or not run:
        raise argparse.ArgumentTypeError(f"expected IPC=RUN_DIR, got {text!r}")
    return int(ipc), Path(run)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ipcs", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--preset", default=PRESET,
                        help=f"the distillation preset (default {PRESET}, the CPU recipe; depth_3_no_flip: the paper's)")
    parser.add_argument("--minutes", type=float, default=60.0,
                        help="distillation budget per ipc, wall-clock minutes, setup included (default 60)")
    parser.add_argument("--max-steps", type=int, default=10000, help="outer steps if the budget allows")
    parser.add_argument("--eval-every", type=int, default=50, help="steps between curve points")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                        help="which sets to evaluate (default all four)")
    parser.add_argument("--models", type=int, default=5, help="networks per setting in each eval (default 5)")
    parser.add_argument("--settings", choices=("both", "aug", "no_aug"), default="both",
                        help="evaluation settings: with and without augmentation (default both)")
    parser.add_argument("--full-train-steps", type=int, default=2000)
    parser.add_argument("--full-train-models", type=int, default=1)
    parser.add_argument("--speed-cases", nargs="+", default=DEFAULT_CASES,
                        help="shape:ipc[:variant] (benchmarks/speed.py; default: "
                             + " ".join(DEFAULT_CASES) + ")")
    parser.add_argument("--speed-steps", type=int, default=2, help="timed outer steps per speed case (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=str(ROOT / "benchmarks" / "work"), help="runs and cached pieces")
    parser.add_argument("--only", nargs="+", choices=("distill", "eval", "full_train", "speed", "solvers", "report"),
                        help="run these kinds of piece only")
    parser.add_argument("--redo", nargs="*", default=[], help="piece names to run again, e.g. eval_1_random")
    parser.add_argument("--adopt", action="append", default=[], metavar="IPC=RUN_DIR", type=adoption,
                        help="take distill_<IPC> (and its distilled.eval.json) from an rcig distill --out folder "
                             "of the same preset instead of distilling; a run of another seed than --seed is "
                             "reported beside it as a further seed (its distilled.eval.json needed); repeatable")
    parser.add_argument("--restore", nargs="?", const=str(ROOT / "benchmarks" / "results.json"), metavar="RESULTS",
                        help="first cache the pieces a results.json holds (default benchmarks/results.json) "
                             "where --work lacks them, and the DM sets shipped in distilled/")
    parser.add_argument("--more-networks", action="store_true",
                        help="eval pieces: train --models MORE networks and pool them with the cached "
                             "ones (seeds continue after the cached networks'); implies re-running them")
    args = parser.parse_args(argv)
    if args.more_networks:
        args.redo = [*args.redo, *(f"eval_{ipc}_{m}" for ipc in args.ipcs for m in args.methods)]
    # a distillation made again makes its cached score stale
    args.redo += [f"eval_{ipc}_distilled" for ipc in args.ipcs if f"distill_{ipc}" in args.redo]
    bench = Bench(args)
    if args.restore:
        source = Path(args.restore)
        if not source.is_file():
            raise SystemExit(f"benchmarks: --restore {source}: no such file")
        print(f"restored from {source}: {', '.join(bench.restore(json.loads(source.read_text()))) or 'nothing missing'}")
    for ipc, run in args.adopt:
        bench.adopt(ipc, run)
    kinds = set(args.only or ("distill", "eval", "full_train", "speed", "solvers", "report"))
    for ipc in args.ipcs:
        if kinds & {"distill", "eval"}:
            bench.check_preset(ipc)
        if "distill" in kinds:
            bench.run_piece(f"distill_{ipc}", lambda ipc=ipc: bench.distill(ipc))
        if "eval" in kinds:
            for method in args.methods:
                bench.run_piece(f"eval_{ipc}_{method}", lambda ipc=ipc, method=method: bench.evaluate(ipc, method))
    if "speed" in kinds:
        bench.run_piece("speed", bench.speed)
    if "full_train" in kinds:
        bench.run_piece("full_train", bench.full_train)
    if "solvers" in kinds:
        bench.run_piece("solvers", bench.solvers)
    if "report" in kinds:
        bench.report()


if __name__ == "__main__":
    main()
