"""Where the accuracy goes: accuracy against CPU time for one-change variants of the paper's preset.

Each variant is the faithful preset (``depth_3_no_flip``, seed 0) with one change
(``variant_overrides``), distilled on ``--dataset`` at ``--ipc`` (default Fashion-MNIST, 1 ipc)
until each budget of ``--points`` CPU minutes, where its EMA set is copied and scored with
``rcig eval`` (``--models`` networks, ``--settings``)::

    OMP_NUM_THREADS=1 nohup python benchmarks/variants.py --points 5,10,20,40 &   # the sweep
    python benchmarks/variants.py --variants faithful,cg5 --points 5              # a subset
    python benchmarks/variants.py --only report                                   # outputs from the cache
    python benchmarks/variants.py --section levers --work W2 --variants fast_herding_lr3x,fast_w64 \\
        --points 20 --models 2 --settings no_aug --baselines none                 # another screen, own section

The variants (``B`` = ``--boost-steps``, ``A`` = ``--anneal-step``):

* ``faithful``: the preset as it is.
* ``lr3x``, ``lr10x``: the support's learning rate starts 3x / 10x higher and decays (cosine)
  to the paper's over the first B outer steps.
* ``tb256``, ``tb512``: 256 / 512 target images per meta-gradient instead of 1,024.
* ``cg5``: conjugate gradients, 5 iterations for delta* and 5 for H^-1 g (no tuning).
* ``direct``: ``n_hinv_steps=0``: the H^-1 g solve (Adam from v = 0) takes no step, so
  v = 0 and the implicit gradient ``-d/dS [v . grad L_in]`` is exactly zero (checked: the
  log's ``implicit_norm`` is 0): only the direct gradient through delta*, the FRePo-like
  ablation. Its steps still pay for the (zero) implicit gradient's two JVPs and backward
  pass and the tuning still runs one H^-1 g trial, so it is a little slower than a
  direct-only implementation would be.
* ``fixed_labels``: labels stay the centred one-hot start.
* ``nonlinear``: the inner model is the network itself, not its linearisation.
* ``aug``: the support is augmented during distillation (crop, rotate, translate, cutout);
  ``aug_rep``: the same plus one augmented meta-gradient pass per step.
* ``torch_init``: torch's default initialisation of the networks (``network_init=torch``).
* ``tb256_cg5``: ``tb256`` and ``cg5`` together (the two that cut a step's cost: the target
  batch and the solves; no tuning): ``--preset fast`` without its 1 ipc start and boost. Then one
  change each on top of it:
* ``fast_aug``: every meta-gradient pass augmented, one transform per row held through the
  pass (``aug_per_pass``, so CG can solve it; ``normal_repeats=0, aug_repeats=1``), pool
  steps augmented; ``fast_aug4``: the same with 4 transformed copies of each image per pass.
* ``fast_herding``: the support starts from the herding baseline's images (``init=herding``).
* ``fast_lr3x``: ``lr3x`` decaying over 300 outer steps (fast's steps are 4x cheaper).
* ``fast_herding_lr3x``: ``fast_herding`` and ``fast_lr3x`` together: ``--preset fast --set width=128``
  at 1 ipc (the recipe on the paper's width).
  Then one change each on top of it, because it gains less per CPU minute once the boost has decayed:
* ``fast_boost900``: the boost decays over 900 outer steps instead of 300 (about the steps
  that 2 hours of one thread make at 1 ipc).
* ``fast_lr10x``: the boost starts at 10x instead of 3x (still decaying over 300 steps).
* ``fast_w64``, ``fast_w96``: a narrower distillation network (64 / 96 channels per layer, a
  convolution about 4x / 1.8x cheaper); scored, like every variant, on the protocol's width 128.
  ``fast_w64`` is ``--preset fast`` at 1 ipc. ``fast_w32``, ``fast_w48``: narrower still (a
  convolution about 16x / 7x cheaper than width 128; the step's other parts do not shrink).
* ``fast_tb128``: 128 target images per meta-gradient instead of 256.
* ``fast_pool4``: a used pool network trains 1-4 steps instead of 1-16 (``n_max_steps_pool``).
* ``fast_cg3``: 3 conjugate-gradient iterations per solve instead of 5.
* ``fast_ema995``: the saved set is the EMA with decay 0.995 instead of 0.99.
* ``fast_anneal``: after the boost, the support's learning rate anneals (cosine) to 0.1 x
  ``proto_lr``, reached at outer step A = ``--anneal-step`` (``proto_lr_final``,
  ``proto_lr_final_step``). A is a config field of the run, not its ``steps``, so the chunks
  below (each a ``--resume --steps S``) follow the schedule a run given all its steps at once
  would; a budget that ends before step A scores a set not yet fully annealed. The default A,
  870, is about the outer steps 120 CPU minutes make at 1 ipc.
* ``fast_w32_tb1024``, ``fast_w32_online300``: width 32's cheaper step spent on the paper's
  target batch of 1,024, or on pool networks kept for 300 training steps instead of 100
  (``max_online_steps``).
* ``fast_w64_l2x4``, ``fast_w64_l2d4``, ``fast_w64_online30``: on ``--preset fast`` itself (the
  report's base "fast"), what each step fits rather than how many steps run: a ridge
  (``l2_rate``) 4x stronger or 4x weaker than the paper's (at width 64 the kernel has half the
  features of width 128's, so the same ridge weighs about twice as much), and pool networks
  replaced after 30 training steps instead of 100 (kept for 300 they scored lower, above).
  More conjugate-gradient iterations are not among them: with 5, delta* is within 6e-5 (1 ipc)
  and 1e-3 (10 ipc) of the converged solve and the meta-gradient's cosine to its is 1.0000
  (the solvers table of BENCHMARKS.md), so more cannot change what a step fits.

Budgets are CPU time, not wall time (the machine is shared): the sum of the run's log
``cpu_seconds``, the learning-rate tuning's included (``solver=cg`` needs none, so it starts
the race earlier). A variant's run is driven in chunks of at most ``--chunk`` outer steps
(``rcig distill ... --resume --steps S``), each sized from the CPU seconds per step so far
to stop at the first step past the budget; a point records the steps, CPU and wall seconds
actually spent. The work lives in ``--work`` (default benchmarks/work/variants): a run
directory ``<name>/``, its scored snapshots ``<name>/points/<budget>min.safetensors`` and
the piece ``<name>.json``, written atomically after every change, so a killed sweep goes on
where it stopped: scored points are not run again, a snapshot not yet scored is scored,
and a distillation resumes from its checkpoint. A variant whose distillation fails with an
``rcig: error`` (e.g. it diverged) records the error and is skipped from then on.

The sweep goes budget by budget (every variant to 5 minutes, then every variant to 10, ...),
so the comparison is complete at each budget as early as possible; variants run in the
order of ``ORDER``; then ``--baselines`` (random real and herding sets of the same size and
seed, ``rcig baseline``) are made and scored once each. ``--only report`` writes
``benchmarks/SECTION.json``, ``benchmarks/SECTION.png`` and the table between the
``<!-- SECTION -->`` markers of BENCHMARKS.md (``--section``, default ``variants``), the
baselines as rows and dashed lines; each row's "change" is the variant as the one it starts
from (faithful, tb256_cg5 or fast_herding_lr3x) plus the fields it sets on top.
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
from runlog import Progress, read_progress
from speed import VARIANTS as SPEED_VARIANTS, write_json

ROOT = Path(__file__).resolve().parent.parent
PRESET = "depth_3_no_flip"
SEED = 0
PROTOCOL_WIDTH = 128  # every set is scored on the paper's network, whatever width distilled it
SETTINGS = ("no_aug", "aug")
AUG = ["crop", "rotate", "translate", "cutout"]
BASELINES = ("random", "herding")  # rcig baseline --method, same size and seed, same protocol
BASELINE_NAMES = {"random": "random real", "herding": "herding"}
SECTION = "variants"  # the report's default section of BENCHMARKS.md and name of its JSON and figure
FAST = SPEED_VARIANTS["fast"]  # tb256 + cg5
# --preset fast at 1 ipc on the paper's width (--set width=128): the base of the fast_* screen
FAST_1IPC = {**FAST, "init": "herding", "proto_lr_boost": 3, "proto_lr_boost_steps": 300}
FAST_W64 = {**FAST_1IPC, "width": 64}  # --preset fast at 1 ipc, as distilled (scored at width 128 here too)
BASES = {"faithful": {}, "tb256_cg5": FAST, "fast_herding_lr3x": FAST_1IPC, "fast": FAST_W64}  # the report's "change" column starts here
# the variants by screen, each screen's changes on top of an earlier screen's winner, the most
# telling first; ORDER is the order variants run in (and are reported in)
SCREENS = {
    "paper": ("faithful", "tb256", "cg5", "lr3x", "aug", "lr10x", "tb512", "direct", "fixed_labels", "nonlinear",
              "aug_rep", "torch_init"),  # one change each to the paper's preset
    "cheap step": ("tb256_cg5", "fast_aug", "fast_aug4", "fast_herding", "fast_lr3x",
                   "fast_herding_lr3x"),  # on tb256 + cg5: what the cheaper step needs
    "recipe": ("fast_boost900", "fast_lr10x", "fast_w64", "fast_w96", "fast_w32", "fast_w48", "fast_tb128",
               "fast_pool4", "fast_cg3", "fast_ema995", "fast_anneal", "fast_w32_tb1024",
               "fast_w32_online300"),  # on fast_herding_lr3x: the steps' cost, width and schedule
    "objective": ("fast_w64_l2x4", "fast_w64_l2d4", "fast_w64_online30"),  # on --preset fast: what a step fits
}
ORDER = tuple(name for names in SCREENS.values() for name in names)
ANNEAL_STEP = 870  # fast_anneal's default end of the anneal: about 120 CPU minutes of fast at 1 ipc


def variant_overrides(boost_steps: int, anneal_step: int = ANNEAL_STEP) -> dict[str, dict]:
    """name -> the config fields it changes in the faithful preset (in ``ORDER``)."""
    table = {
        "faithful": {},
        "tb256": {"target_batch_size": 256},
        "cg5": SPEED_VARIANTS["cg5"],  # solver=cg, 5 iterations per solve
        "lr3x": {"proto_lr_boost": 3, "proto_lr_boost_steps": boost_steps},
        "aug": {"aug": AUG},
        "lr10x": {"proto_lr_boost": 10, "proto_lr_boost_steps": boost_steps},
        "tb512": {"target_batch_size": 512},
        "direct": {"n_hinv_steps": 0},
        "fixed_labels": {"learn_labels": False},
        "nonlinear": {"linearize": False},
        "aug_rep": {"aug": AUG, "aug_repeats": 1},
        "torch_init": {"network_init": "torch"},
        "tb256_cg5": FAST,
        "fast_aug": {**FAST, "aug": AUG, "aug_per_pass": True, "normal_repeats": 0, "aug_repeats": 1},
        "fast_aug4": {**FAST, "aug": AUG, "aug_per_pass": True, "normal_repeats": 0, "aug_repeats": 1,
                      "aug_copies": 4},
        "fast_herding": {**FAST, "init": "herding"},
        "fast_lr3x": {**FAST, "proto_lr_boost": 3, "proto_lr_boost_steps": 300},
        "fast_herding_lr3x": FAST_1IPC,
        "fast_boost900": {**FAST_1IPC, "proto_lr_boost_steps": 900},
        "fast_lr10x": {**FAST_1IPC, "proto_lr_boost": 10},
        "fast_w64": FAST_W64,
        "fast_w96": {**FAST_1IPC, "width": 96},
        "fast_w32": {**FAST_1IPC, "width": 32},
        "fast_w48": {**FAST_1IPC, "width": 48},
        "fast_tb128": {**FAST_1IPC, "target_batch_size": 128},
        "fast_pool4": {**FAST_1IPC, "n_max_steps_pool": 4},
        "fast_cg3": {**FAST_1IPC, "n_inner_steps": 3, "n_hinv_steps": 3},
        "fast_ema995": {**FAST_1IPC, "ema_decay": 0.995},
        "fast_anneal": {**FAST_1IPC, "proto_lr_final": 0.1, "proto_lr_final_step": anneal_step},
        "fast_w32_tb1024": {**FAST_1IPC, "width": 32, "target_batch_size": 1024},
        "fast_w32_online300": {**FAST_1IPC, "width": 32, "max_online_steps": 300},
        # on --preset fast itself: a stronger and a weaker ridge, pool networks replaced sooner
        "fast_w64_l2x4": {**FAST_W64, "l2_rate": 0.002},
        "fast_w64_l2d4": {**FAST_W64, "l2_rate": 0.000125},
        "fast_w64_online30": {**FAST_W64, "max_online_steps": 30},
    }
    return {name: table[name] for name in ORDER}


def next_chunk(progress: Progress, target_cpu: float, chunk: int) -> int:
    """Outer steps to run next towards ``target_cpu`` CPU seconds: enough to reach it at the
    mean CPU seconds per step so far (1 when nothing is known yet), between 1 and ``chunk``."""
    if progress.steps == 0:
        return 1
    rate = progress.step_cpu_seconds / progress.steps
    return max(1, min(chunk, math.ceil((target_cpu - progress.cpu_seconds) / rate)))


class SweepError(Exception):
    """Bad input or a cache made with other settings: one line, exit status 2."""


def parse_points(text: str) -> list[float]:
    """``"5,10"`` -> [5.0, 10.0] (sorted, positive CPU minutes)."""
    try:
        points = sorted({float(p) for p in text.split(",") if p.strip()})
    except ValueError:
        points = []
    if not points or points[0] <= 0 or not all(math.isfinite(p) for p in points):
        raise argparse.ArgumentTypeError(f"expected positive CPU minutes, comma-separated, got {text!r}")
    return points


def parse_variants(text: str) -> list[str]:
    """``"cg5,faithful"`` -> the names in ``ORDER``'s order; unknown names are refused."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ORDER]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown variant {', '.join(unknown) or repr(text)}; "
                                         f"known: {', '.join(ORDER)}")
    return [n for n in ORDER if n in names]


def parse_baselines(text: str) -> list[str]:
    """``"random,herding"`` -> those of ``BASELINES`` (in its order); ``"none"`` -> []."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["none"]:
        return []
    unknown = [n for n in names if n not in BASELINES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown baseline {', '.join(unknown) or repr(text)}; "
                                         f"known: {', '.join(BASELINES)}, or none")
    return [n for n in BASELINES if n in names]


def section_name(text: str) -> str:
    if not text.replace("_", "").isalnum():
        raise argparse.ArgumentTypeError(f"a section is a name of letters, digits and _, got {text!r}")
    return text


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def budget_key(minutes: float) -> str:
    return f"{minutes:g}"


class DistillFailed(Exception):
    """``rcig distill`` stopped with an ``rcig: error`` (exit status 2): the variant diverged
    (its result: recorded, the variant is skipped from then on), or something outside the variant
    went wrong (the run's folder in use, a full disk, a bad ``--set``), which stops the sweep."""

    @property
    def diverged(self) -> bool:
        return "diverged at iteration" in str(self)


def rcig(*args: str, threads: int = 1) -> None:
    """Run the ``rcig`` command line in a child process with ``OMP_NUM_THREADS=threads``.
    An ``rcig: error`` raises DistillFailed with its message; any other failure stops the sweep."""
    print("$ rcig " + " ".join(args), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    # stderr holds the progress bars (the sweep prints its own progress): shown on failure only
    done = subprocess.run([sys.executable, "-m", "rcig.cli", *args], env=env, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-3000:])
    if done.returncode == 2:
        lines = [line for line in done.stderr.splitlines() if line.startswith("rcig: error")]
        raise DistillFailed(lines[-1] if lines else done.stderr.strip()[-300:])
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, args)


class Sweep:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.work)
        self.overrides = variant_overrides(args.boost_steps, args.anneal_step)
        self.extra = list(args.set)

    # ------------------------------------------------------------------- bookkeeping

    def identity(self, name: str) -> dict:
        """What a variant's cached run and points were made with; a mismatch is refused."""
        return {"variant": name, "dataset": self.args.dataset, "ipc": self.args.ipc, "preset": PRESET, "seed": SEED,
                "overrides": self.overrides[name], "set": self.extra}

    def piece(self, name: str) -> dict:
        path = self.work / f"{name}.json"
        if not path.exists():
            return {**self.identity(name), "points": {}}
        piece = json.loads(path.read_text())
        if {k: piece.get(k) for k in self.identity(name)} != self.identity(name):
            raise SweepError(f"{path} was made with other settings (dataset, ipc, overrides, "
                             f"--boost-steps, --anneal-step or --set); delete it and {self.work / name} or use "
                             "another --work")
        return piece

    def save(self, name: str, piece: dict) -> None:
        write_json(piece, self.work / f"{name}.json")

    # ------------------------------------------------------------------------ work

    def point(self, name: str, minutes: float) -> None:
        """Bring variant ``name`` to ``minutes`` of CPU, snapshot its EMA set and score it."""
        piece, key = self.piece(name), budget_key(minutes)
        if "error" in piece:
            print(f"[{name}] failed before ({piece['error']}); skipped", flush=True)
            return
        point = piece["points"].get(key) or reached_before(piece, minutes)
        if point is not None and key not in piece["points"]:  # one step went past several budgets
            piece["points"][key] = {**point, "budget_minutes": minutes}
            self.save(name, piece)
            point = piece["points"][key]
        if point is None:
            run = self.work / name
            # past the budget is fine only if this budget's own distillation got there (and a
            # kill came before its snapshot): not after a run towards a larger budget
            if piece.get("running") != key and read_progress(run / "log.jsonl").cpu_seconds >= 60 * minutes:
                print(f"[{name}] already past {key} CPU min without a snapshot there; delete {run} to measure it")
                return
            self.save(name, {**piece, "running": key})
            try:
                progress = self.distil_to(name, 60 * minutes)
            except DistillFailed as failed:
                if not failed.diverged:
                    raise SweepError(f"[{name}] {failed} (not a result of the variant: mend it and run the "
                                     "sweep again)") from None
                self.save(name, {**piece, "error": str(failed)})
                print(f"[{name}] {failed}; recorded, skipped from now on", flush=True)
                return
            snapshot = run / "points" / f"{key}min.safetensors"
            copy_atomic(run / "distilled.safetensors", snapshot)
            point = {"budget_minutes": minutes, "steps": progress.steps,
                     "cpu_seconds": round(progress.cpu_seconds, 1), "wall_seconds": round(progress.wall_seconds, 1),
                     "step_cpu_seconds": round(progress.step_cpu_seconds, 1),
                     "tuning_cpu_seconds": round(progress.setup_cpu_seconds, 1), "snapshot": str(snapshot)}
            piece["points"][key] = point
            piece.pop("running", None)
            self.save(name, piece)
        missing = [s for s in self.settings() if s not in point]
        if missing:
            point.update(self.score(Path(point["snapshot"]), missing))
            self.save(name, piece)
        print(f"[{name}] {key} CPU min: {point['steps']} steps, " + ", ".join(
            f"{s} {100 * point[s]['mean']:.2f}" for s in SETTINGS if s in point), flush=True)

    def baseline(self, method: str) -> None:
        """Make and score the ``method`` baseline set of the same dataset, ipc and seed (once)."""
        path = self.work / f"baseline_{method}.json"
        identity = {"baseline": method, "dataset": self.args.dataset, "ipc": self.args.ipc, "seed": SEED}
        piece = json.loads(path.read_text()) if path.exists() else identity
        if {k: piece.get(k) for k in identity} != identity:
            raise SweepError(f"{path} was made for another dataset or ipc; delete it or use another --work")
        missing = [s for s in self.settings() if s not in piece]
        if missing:
            snapshot = self.work / f"baseline_{method}.safetensors"
            if not snapshot.exists():
                self.work.mkdir(parents=True, exist_ok=True)
                rcig("baseline", "--dataset", self.args.dataset, "--ipc", str(self.args.ipc), "--method", method,
                     "--seed", str(SEED), "--out", str(snapshot), threads=self.args.threads)
            piece.update(self.score(snapshot, missing))
            write_json(piece, path)
        print(f"[baseline {method}] " + ", ".join(f"{s} {100 * piece[s]['mean']:.2f}" for s in SETTINGS if s in piece),
              flush=True)

    def settings(self) -> tuple[str, ...]:
        return SETTINGS if self.args.settings == "both" else (self.args.settings,)

    def distil_to(self, name: str, target_cpu: float) -> Progress:
        """Run ``name``'s distillation in chunks until its CPU seconds reach ``target_cpu``."""
        run = self.work / name
        progress = read_progress(run / "log.jsonl")
        if math.isnan(progress.cpu_seconds):
            raise SweepError(f"{run}/log.jsonl has steps without cpu_seconds (an older rcig): use another --work")
        while progress.cpu_seconds < target_cpu:
            steps = progress.steps + next_chunk(progress, target_cpu, self.args.chunk)
            common = ["--out", str(run), "--steps", str(steps), "--no-eval", "--quiet", "--keep-checkpoint"]
            if (run / "checkpoints" / "latest.pt").exists():
                rcig("distill", *common, "--resume", threads=self.args.threads)
            else:
                sets = [a for pair in self.overrides[name].items() for a in ("--set", f"{pair[0]}={json.dumps(pair[1])}")]
                sets += [a for item in self.extra for a in ("--set", item)]
                rcig("distill", *common, "--dataset", self.args.dataset, "--ipc", str(self.args.ipc),
                     "--preset", PRESET, "--seed", str(SEED), *sets, threads=self.args.threads)
            progress = read_progress(run / "log.jsonl")
        return progress

    def score(self, snapshot: Path, settings: list[str]) -> dict:
        """``rcig eval`` of ``snapshot`` in ``settings``: {setting: {"mean", "std", "accs"}}."""
        out = snapshot.with_suffix(".eval.json")
        which = settings[0] if len(settings) == 1 else "both"
        rcig("eval", str(snapshot), "--models", str(self.args.models), "--settings", which, "--seed", "0",
             "--width", str(PROTOCOL_WIDTH),
             "--json", str(out), threads=self.args.threads)
        scores = json.loads(out.read_text())
        return {s: scores[s] for s in settings}

    # ---------------------------------------------------------------------- report

    def report(self) -> dict:
        paths = [self.work / f"{name}.json" for name in ORDER]
        pieces = {path.stem: json.loads(path.read_text()) for path in paths if path.exists()}
        baselines = {m: json.loads(p.read_text()) for m in BASELINES if (p := self.work / f"baseline_{m}.json").exists()}
        results = {"dataset": self.args.dataset, "ipc": self.args.ipc, "preset": PRESET, "seed": SEED,
                   "threads": self.args.threads, "models": networks(pieces), "variants": pieces,
                   "baselines": baselines}
        write_json(results, self.args.json)
        plot(results, Path(self.args.png))
        table = markdown_table(results)
        print(table)
        write_section(Path(self.args.markdown), table, self.args.section, heading=self.args.section)
        print(f"wrote {self.args.json}, {self.args.png} and {self.args.markdown}")
        return results


def reached_before(piece: dict, minutes: float) -> dict | None:
    """The recorded point of a smaller budget whose step already went past ``minutes``
    (e.g. the tuning alone outlasted both): it is this budget's point too, the same set."""
    past = [p for p in piece["points"].values() if p["budget_minutes"] < minutes <= p["cpu_seconds"] / 60]
    return min(past, key=lambda p: p["cpu_seconds"], default=None)


def copy_atomic(source: Path, target: Path) -> None:
    from rcig.atomic import atomic_write

    with open(source, "rb") as src:
        atomic_write(target, lambda fh: shutil.copyfileobj(src, fh))


# ------------------------------------------------------------------------- the report

def networks(pieces: dict) -> str:
    """The protocol networks behind each scored cell: "2", or "1-2" when cells differ."""
    counts = {len(point[s]["accs"]) for piece in pieces.values() for point in piece["points"].values()
              for s in SETTINGS if s in point}
    return "-".join(str(n) for n in sorted({min(counts), max(counts)})) if counts else "-"


def change(overrides: dict) -> str:
    """A variant's overrides as the one of ``BASES`` it shares most settings with (among those
    whose every field it sets) plus the fields it sets otherwise ("fast_herding_lr3x + width=64"):
    with ``rcig distill ... --set``, its command."""
    name, base = max(((n, b) for n, b in BASES.items() if b.keys() <= overrides.keys()),
                     key=lambda nb: len(nb[1].items() & overrides.items()))
    extra = ", ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in overrides.items()
                      if k not in base or base[k] != v)
    return f"{name} + {extra}" if extra else name


def budgets(results: dict) -> list[float]:
    return sorted({p["budget_minutes"] for piece in results["variants"].values() for p in piece["points"].values()})


def cpu_per_step(piece: dict) -> float | None:
    """Mean CPU seconds per outer step (tuning excluded) at the variant's last point."""
    points = [p for p in piece["points"].values() if p["steps"]]
    if not points:
        return None
    last = max(points, key=lambda p: p["steps"])
    return last["step_cpu_seconds"] / last["steps"]


def cell(point: dict | None) -> str:
    """``no aug / aug (steps)`` in %, "-" for a setting not scored yet."""
    if point is None:
        return "-"
    acc = [f"{100 * point[s]['mean']:.1f}" if s in point else "-" for s in SETTINGS]
    return f"{acc[0]} / {acc[1]} ({point['steps']})"


def markdown_table(results: dict) -> str:
    points = budgets(results)
    head = ["variant", "change", *(f"{b:g} CPU min" for b in points), "s/step (CPU)", "tuning, init (CPU s)"]
    lines = ["| " + " | ".join(head) + " |", "| --- " * len(head) + "|"]
    for name, piece in results["variants"].items():
        by_budget = {p["budget_minutes"]: p for p in piece["points"].values()}
        rate = cpu_per_step(piece)
        tuning = next((p["tuning_cpu_seconds"] for p in by_budget.values()), None)
        row = [f"**{name}**" if name == "faithful" else name, change(piece.get("overrides", {})),
               *(cell(by_budget.get(b)) for b in points),
               f"{rate:.1f}" if rate is not None else "-", f"{tuning:.0f}" if tuning is not None else "-"]
        if "error" in piece:
            row[-2] = f"failed: {piece['error']}"
        lines.append("| " + " | ".join(row) + " |")
    for method, piece in results.get("baselines", {}).items():
        acc = " / ".join(f"{100 * piece[s]['mean']:.1f}" if s in piece else "-" for s in SETTINGS)
        lines.append("| " + " | ".join([f"*{BASELINE_NAMES[method]}* (baseline)", "-", *[acc] * len(points), "-", "-"])
                     + " |")
    lines += ["", f"{results['dataset']}, {results['ipc']} ipc, preset {results['preset']} with each variant's changes "
                  "(benchmarks/variants.py), "
                  f"seed {results['seed']}; cells: test accuracy in % without / with augmentation "
                  f"({results['models']} protocol network(s) each) and the outer steps done within the budget "
                  f"(CPU time of the tuning, the herding start and the steps, {results['threads']} thread(s))."]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """A panel per setting scored (no aug, aug): accuracy against CPU minutes, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [s for s in SETTINGS if any(s in p for piece in results["variants"].values()
                                          for p in piece["points"].values())] or list(SETTINGS)
    fig, axes = plt.subplots(1, len(scored), figsize=(5.5 * len(scored) + 0.5, 4.5), dpi=110, sharey=True,
                             squeeze=False)
    axes = axes[0]
    colours = plt.get_cmap("tab20").colors
    titles = {"no_aug": "without augmentation", "aug": "with augmentation"}
    for ax, setting in zip(axes, scored):
        title = titles[setting]
        for i, (name, piece) in enumerate(results["variants"].items()):
            points = sorted({(p["cpu_seconds"] / 60, 100 * p[setting]["mean"])  # a set: shared points once
                             for p in piece["points"].values() if setting in p})
            if points:
                bold = name == "faithful"
                ax.plot(*zip(*points), "o-", label=name, lw=3 if bold else 1.2,
                        color="black" if bold else colours[i % len(colours)], zorder=3 if bold else 2)
        for method, piece in results.get("baselines", {}).items():
            if setting in piece:
                ax.axhline(100 * piece[setting]["mean"], ls="--" if method == "herding" else ":", color="grey",
                           lw=1.2, label=f"{BASELINE_NAMES[method]} (baseline)")
        ax.set_title(f"{results['dataset']}, {results['ipc']} ipc, {title}")
        ax.set_xlabel("CPU minutes (tuning or herding start + outer steps)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[-1].legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------------- main

def main(argv=None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", type=parse_variants, default=list(ORDER), help="comma-separated, from: " + "; ".join(f"{screen}: {', '.join(names)}" for screen, names in SCREENS.items()))
    parser.add_argument("--points", type=parse_points, default=[5.0, 10.0, 20.0, 40.0], help="CPU-minute budgets to score at (default 5,10,20,40)")
    parser.add_argument("--boost-steps", type=positive_int, default=100,
                        help="lr3x/lr10x: outer steps over which the boost decays to the paper's rate (default 100)")
    parser.add_argument("--anneal-step", type=positive_int, default=ANNEAL_STEP,
                        help="fast_anneal: the outer step at which the support's rate reaches 0.1x (after fast's "
                        f"300 boosted steps, so > 300; default {ANNEAL_STEP})")
    parser.add_argument("--baselines", type=parse_baselines, default=list(BASELINES),
                        help="baseline sets scored once beside the variants: random,herding (default) or none")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--ipc", type=positive_int, default=1)
    parser.add_argument("--models", type=positive_int, default=1, help="protocol networks per setting and point (default 1)")
    parser.add_argument("--settings", choices=("both", "aug", "no_aug"), default="both")
    parser.add_argument("--threads", type=positive_int, default=1, help="OMP_NUM_THREADS of the rcig runs (default 1)")
    parser.add_argument("--chunk", type=positive_int, default=200,
                        help="at most this many outer steps per rcig call (each call starts rcig again: a few "
                        "seconds of wall time, not counted in the budget; default 200)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra config override for every variant (quick checks), repeatable")
    parser.add_argument("--work", default=str(ROOT / "benchmarks" / "work" / "variants"))
    parser.add_argument("--section", default=SECTION, type=section_name,
                        help="the report's section of --markdown (between <!-- NAME --> markers) and the default "
                        f"name of its JSON and figure in benchmarks/ (default {SECTION})")
    parser.add_argument("--json", help="the report's JSON (default benchmarks/SECTION.json)")
    parser.add_argument("--png", help="the report's figure (default benchmarks/SECTION.png)")
    parser.add_argument("--markdown", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--only", choices=("run", "report"), help="only run the points, or only write the report")
    args = parser.parse_args(argv)
    args.json = args.json or str(ROOT / "benchmarks" / f"{args.section}.json")
    args.png = args.png or str(ROOT / "benchmarks" / f"{args.section}.png")
    if args.anneal_step <= FAST_1IPC["proto_lr_boost_steps"]:
        parser.error(f"--anneal-step must be above fast's {FAST_1IPC['proto_lr_boost_steps']} boosted steps "
                     f"(the anneal follows the boost), got {args.anneal_step}")
    sweep = Sweep(args)
    try:
        if args.only != "report":
            for minutes in args.points:  # budget by budget: every variant reaches each budget before the next
                for name in args.variants:
                    started = time.perf_counter()
                    sweep.point(name, minutes)
                    print(f"[{name}] {minutes:g} CPU min point took {(time.perf_counter() - started) / 60:.1f} "
                          "wall min", flush=True)
            for method in args.baselines:
                sweep.baseline(method)
        return sweep.report() if args.only != "run" else None
    except SweepError as error:
        parser.exit(2, f"variants: error: {error}\n")


if __name__ == "__main__":
    main()
