"""The ``rcig`` command line: datasets, distill, baseline, eval, export, import, report, show.

Every user error ends with one line ``rcig: error: ...`` and exit status 2, never a traceback.
An error that is a bug in rcig ends with one line saying so and exit status 70 (EX_SOFTWARE);
``RCIG_DEBUG=1`` shows its traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

from rcig import __version__, parallel
from rcig.errors import RcigError, out_of_memory


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text) if text.lstrip("-").isdigit() else None
    if value is None or value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got '{text}'")
    return value


def seed_int(text: str) -> int:
    from rcig.validate import MAX_SEED

    value = int(text) if text.strip().isdigit() else None
    if value is None or value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected an integer in 0..{MAX_SEED}, got '{text}'")
    return value


def positive_number(unit: str):
    """An argparse type: a finite number > 0 of ``unit``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"expected a number of {unit} > 0, got '{text}'")
        return value

    return parse


positive_minutes = positive_number("minutes")
positive_gb = positive_number("GB")


class Parser(argparse.ArgumentParser):
    """argparse with the one-line error of every other bad input (usage via --help), and the
    closest choice suggested for a mistyped one."""

    def error(self, message: str):
        print(f"rcig: error: {did_you_mean(_one_line(message))} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def did_you_mean(message: str) -> str:
    """argparse's "invalid choice: 'distil' (choose from ...)" as "invalid choice: 'distil'; did you
    mean distill?" when a choice is close; any other message as it is."""
    import difflib
    import re

    match = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if not match:
        return message
    choices = re.findall(r"'([^']*)'", match.group(2))
    close = difflib.get_close_matches(match.group(1), choices, n=1, cutoff=0.6)
    return message[:match.end(1) + 1] + f"; did you mean {close[0]}?" if close else message


def refuse_existing(path: str | Path, force: bool, what: str = "--out") -> None:
    """No silent overwrite: an existing output (a file, or a folder with files in it) needs ``--force``."""
    path = Path(path)
    used = path.is_file() or (path.is_dir() and any(path.iterdir()))
    if used and not force:
        raise RcigError(f"{path} exists; pass --force to replace it, or choose another {what}")


def slug(spec: str) -> str:
    """A dataset spec as a file-name part: ``npz:/data/x.npz`` -> ``npz__data_x.npz``."""
    return spec.replace(":", "_").replace("/", "_")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SET_SUFFIXES = (".safetensors", ".npz")


# ---------------------------------------------------------------------------- datasets

def cmd_datasets(args) -> None:
    from rcig.data import describe_specs
    from rcig.data.sources import download_note

    rows = describe_specs(args.data_dir)
    width = max(len(r["spec"]) for r in rows)
    for r in rows:
        found = {True: "found", False: "missing", None: "-"}[r["found"]]
        print(f"{r['spec']:<{width}}  {found:<7}  {r['where']}\n{'':<{width}}  {'':<7}  {r['description']}")
        if r["found"] is False and (note := download_note(r["spec"])):
            print(f"{'':<{width}}  {'':<7}  {note}")


# ----------------------------------------------------------------------------- distill

def cmd_distill(args) -> None:
    from rcig import validate
    from rcig.run.driver import distill
    from rcig.config import parse_overrides

    out = Path(args.out) if args.out else Path(RUNS) / f"{slug(args.dataset or 'digits')}_ipc{args.ipc or DEFAULT_IPC}"
    validate.output_dir(out, "--out")
    started = time.perf_counter()
    team = parallel.join(args.device)
    result = distill(args.dataset, args.ipc, preset=args.preset, steps=args.steps, seed=args.seed, out=out,
                     resume=args.resume, overrides=parse_overrides(args.set), data_dir=args.data_dir,
                     checkpoint_every=args.checkpoint_every, eval_every=args.eval_every,
                     max_minutes=args.max_minutes, progress=not args.quiet, keep_checkpoint=args.keep_checkpoint,
                     team=team, memory_gb=args.memory_gb)
    minutes = (time.perf_counter() - started) / 60
    say = print if team.leader else (lambda *a, **k: None)
    say(f"rcig: distilled {result.meta['dataset']} to {len(result.images)} images in {minutes:.1f} min: "
        f"{out / 'distilled.safetensors'} (picture: {out / 'grid.png'})")
    run_eval = args.eval if args.eval is not None else result.meta["dataset"] == "digits"
    if run_eval:
        if args.baseline and not args.quiet:
            say(f"rcig: scoring the set and, beside it, {len(result.images)} random real images (--no-baseline "
                "skips them and halves the scoring time)")
        evaluate_and_print(out / "distilled.safetensors", models=args.models, test_limit=args.test_limit,
                           json_out=out / "eval.json", data_dir=args.data_dir, quiet=args.quiet,
                           compare="random" if args.baseline else None, team=team)
        if team.leader:  # the run wrote its report before the scores existed
            from rcig.report import write_report

            write_report(out)
    else:
        say(f"rcig: score it with: rcig eval {out / 'distilled.safetensors'}")
    say(f"rcig: report: {out / 'report.html'}")


# ---------------------------------------------------------------------------- baseline

def cmd_baseline(args) -> None:
    from rcig import validate
    from rcig.evaluation.baselines import DMFile, baseline_set
    from rcig.io import save

    out = Path(args.out or f"{RUNS}/{slug(args.dataset)}_{args.method}_ipc{args.ipc}.safetensors")
    validate.output_file(out, SET_SUFFIXES, "--out")
    refuse_existing(out, args.force)
    team = parallel.join(args.device)  # under torchrun: every rank computes, the leader writes
    dm = args.method == "dm"  # a long run: it keeps its progress beside the set, and goes on from there
    ds = baseline_set(args.dataset, args.ipc, method=args.method, seed=args.seed, data_dir=args.data_dir,
                      device=team.device, steps=args.steps, max_minutes=args.max_minutes,
                      progress=team.leader and not args.quiet, keep_beside=out if dm else None, keeps=team.leader)
    if not team.leader:
        return
    save(ds, out)
    if dm:
        DMFile.beside(out).unlink(missing_ok=True)
    cost = ds.meta["cost"]
    steps = ds.meta["dm"]["iterations"] if args.method == "dm" else 0
    done = f", {steps} iteration{'s' * (steps != 1)}" if args.method == "dm" else ""
    print(f"rcig: wrote {len(ds.images)} {args.method} images ({args.ipc} per class) to {out}{done} "
          f"({cost['seconds'] / 60:.1f} min, {cost['cpu_seconds'] / 60:.1f} CPU min)")


# -------------------------------------------------------------------------------- eval

def evaluate_and_print(path: Path | str, *, team: parallel.Team, quiet: bool = False, **options) -> dict:
    """:func:`rcig.evaluation.evaluate` on the set file ``path``; the leader prints the scores."""
    from rcig.evaluation import evaluate, format_scores

    report = evaluate(path, progress=not quiet, team=team, **options)
    if team.leader:
        print("\n".join(format_scores(report)))
    return report


def cmd_eval(args) -> None:
    if args.json:
        from rcig import validate

        validate.output_file(args.json, (".json",), "--json")
        refuse_existing(args.json, args.force, "--json")
    evaluate_and_print(args.file, models=args.models, arch=args.arch, steps=args.steps, test_limit=args.test_limit,
                       seed=args.seed, json_out=args.json, data_dir=args.data_dir, settings=args.settings,
                       compare=args.compare, init=args.init, width=args.width, quiet=args.quiet, team=parallel.join(args.device))


# -------------------------------------------------------------------------------- show

def cmd_show(args) -> None:
    from rcig import validate
    from rcig.io import load
    from rcig.viz import save_grid

    out = Path(args.out) if args.out else Path(args.file).with_suffix(".png")
    validate.output_file(out, IMAGE_SUFFIXES, "--out")
    refuse_existing(out, args.force)
    save_grid(load(args.file), out, max_per_class=args.max_per_class)
    print(f"rcig: wrote {out}")


# ------------------------------------------------------------------ export, import, report

def cmd_export(args) -> None:
    from rcig.interop import export
    from rcig.io import load

    refuse_existing(args.out, args.force)
    files = export(load(args.file), args.format, args.out)
    print(f"rcig: wrote {args.format}: " + (str(files[0]) if len(files) == 1 else f"{len(files)} files in {args.out}"))


def cmd_import(args) -> None:
    from rcig.interop import import_set
    from rcig.io import save

    refuse_existing(args.out, args.force)
    flip = {"on": True, "off": False, "auto": None}[args.flip]
    ds = import_set(args.path, args.format, dataset=args.dataset, data_dir=args.data_dir, stored_as=args.stored_as,
                    flip=flip)
    save(ds, args.out)
    where = (f"preprocessing of {ds.meta['dataset']}" if ds.meta["dataset"] else
             "preprocessing unknown (give --dataset to evaluate it)")
    fmt, more = ds.meta["source_format"], ds.meta.get("sets_in_file", 1)
    print(f"rcig: imported {len(ds.images)} images x {ds.labels.shape[1]} classes ({fmt}) to {args.out}; {where}; "
          f"flip trick {'on' if ds.meta['flip'] else 'off'}" + (f"; used the first of {more} sets" if more > 1 else ""))


def cmd_report(args) -> None:
    from rcig.report import write_report

    print(f"rcig: wrote {write_report(args.dir)}")


# ------------------------------------------------------------------------------ parser

class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written; every option with a default shows it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, [], argparse.SUPPRESS) and not isinstance(action.default, bool) \
                and action.option_strings and "default" not in text:
            text += " (default: %(default)s)"
        return text


def examples(*lines: str) -> str:
    return "examples:\n" + "".join(f"  {line}\n" for line in lines)


def paragraph(text: str) -> str:
    import textwrap

    return textwrap.fill(text, width=79)


def add_common_options(p: argparse.ArgumentParser, *, data: bool = True) -> None:
    if data:
        p.add_argument("--data-dir", metavar="DIR", help="a folder with the dataset's files (see `rcig datasets`)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress output (warnings, errors and results are still printed)")


def add_force_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="replace the output if it exists (else rcig refuses)")


def add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", metavar=parallel.DEVICES,
                   help="where to compute (auto: a CUDA GPU if torch sees one, else the CPU)")


def add_scale_options(p: argparse.ArgumentParser, what: str) -> None:
    add_device_option(p)
    p.add_argument("--workers", type=positive_int, metavar="N",
                   help=f"{what} on this machine (torchrun --standalone; each gets cores/N threads unless "
                   "OMP_NUM_THREADS is set)")


DEFAULT_IPC = 1  # images per class of distill and baseline when none is given
RUNS = "runs"  # where outputs go when no --out is given


def build_parser() -> argparse.ArgumentParser:
    from rcig.config import preset_names
    from rcig.evaluation.baselines import BASELINES

    parser = Parser(prog="rcig", formatter_class=HelpFormatter,
                    description=paragraph("Dataset distillation with Convexified Implicit Gradients (RCIG, Loo et al., "
                                "ICML 2023): learn a few synthetic images per class that train a network "
                                "nearly as well as the whole dataset."),
                    epilog=examples("rcig distill                       # digits, 1 image per class, scored: ~8 min",
                                    "rcig distill --dataset fashion_mnist --ipc 10 --preset fast --max-minutes 120",
                                    "rcig eval runs/digits_ipc1/distilled.safetensors --compare random",
                                    "rcig COMMAND --help                # each command's options and examples"))
    parser.add_argument("--version", action="version", version=f"rcig {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    def command(name: str, summary: str, *example_lines: str, func) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=summary, description=paragraph(summary[0].upper() + summary[1:] + "."),
                           epilog=examples(*example_lines), formatter_class=HelpFormatter)
        p.set_defaults(func=func)
        return p

    p = command("datasets", "list the dataset specs, whether their files are here, and what rcig would download",
                "rcig datasets", "rcig datasets --data-dir ~/data", func=cmd_datasets)
    add_common_options(p)

    p = command("distill", "learn a small synthetic set from a dataset with RCIG; writes a run folder "
                "(set, picture, log, checkpoints, report.html)",
                "rcig distill                                   # digits, 1 ipc, 50 steps, then scored: ~8 min",
                "rcig distill --dataset fashion_mnist --ipc 10 --preset fast --max-minutes 120",
                "rcig distill --out runs/fashion_mnist_ipc10 --resume --steps 600   # continue a run",
                "rcig distill --set inner_lr=1e-4 --eval-every 10",
                func=cmd_distill)
    p.add_argument("--dataset", metavar="SPEC", help="dataset spec (default: digits; see `rcig datasets`)")
    p.add_argument("--ipc", type=positive_int, metavar="N", help=f"images per class (default: {DEFAULT_IPC})")
    p.add_argument("--preset", choices=preset_names(), metavar="NAME",
                   help=f"one of {', '.join(preset_names())}: the paper's config (default: the one for the image "
                   "size and channels), or fast, the CPU recipe on top of it (a network of width 64, the set "
                   "scored at 128; 256 target images, 5 CG iterations per solve, a 3x support learning rate "
                   "decaying over 300 steps, herding's images as the start at 1 ipc)")
    p.add_argument("--steps", type=non_negative_int, metavar="N",
                   help="outer steps (default: 50 on digits, else the preset's)")
    p.add_argument("--seed", type=seed_int, metavar="SEED", help="random seed (default: 0)")
    p.add_argument("--out", metavar="DIR", help=f"run folder (default: {RUNS}/<dataset>_ipc<N>); a folder holding "
                   "another run is refused")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set inner_lr=1e-4 (repeatable)")
    p.add_argument("--checkpoint-every", type=positive_int, default=10, metavar="N",
                   help="outer steps between checkpoints")
    p.add_argument("--keep-checkpoint", action="store_true",
                   help="keep the whole state in a finished run's checkpoint (the pool's networks: hundreds of MB "
                   "at width 128) so that --resume --steps MORE extends the run exactly; by default it keeps a few "
                   "MB and an extension restarts the pool's networks from their initial weights")
    p.add_argument("--eval-every", type=positive_int, metavar="N",
                   help="score the set every N steps (one network, with augmentation): a test-accuracy curve in "
                   "the log and the report")
    p.add_argument("--max-minutes", type=positive_minutes, metavar="MIN",
                   help="wall-clock budget, data loading and tuning included: no step starts that would end past "
                   "it (at least one runs; continue with --resume); without --steps the budget alone ends a new run")
    p.add_argument("--memory-gb", type=positive_gb, metavar="GB",
                   help="the memory the run may take (default: what its device has available), e.g. 16 for the "
                   "GPU a run is meant for or a share of a shared machine: chunk_rows=auto fits the step to it")
    p.add_argument("--eval", dest="eval", action="store_true", default=None,
                   help="score the set when done (default: on digits only, the others take longer)")
    p.add_argument("--no-eval", dest="eval", action="store_false", help="don't score the set when done")
    p.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="when scoring, skip the random real images of the same size scored beside the set "
                   "(they double the scoring time)")
    p.add_argument("--models", type=positive_int, default=5, metavar="N", help="networks per setting when scoring")
    p.add_argument("--test-limit", type=positive_int, metavar="K", help="score on the first K test images only")
    add_common_options(p)
    add_scale_options(p, "split each step's target batch across N processes")

    p = command("baseline", "make a comparison set: random real images, herding's, or Distribution Matching's "
                "(DM, a peer method)",
                f"rcig baseline                                  # {RUNS}/digits_random_ipc1.safetensors",
                "rcig baseline --dataset fashion_mnist --ipc 10 --method herding",
                "rcig baseline --dataset fashion_mnist --method dm --max-minutes 60",
                func=cmd_baseline)
    p.add_argument("--dataset", default="digits", metavar="SPEC", help="dataset spec (see `rcig datasets`)")
    p.add_argument("--ipc", type=positive_int, default=DEFAULT_IPC, metavar="N", help="images per class")
    p.add_argument("--method", choices=BASELINES, default="random",
                   help="random real images; herding's (per class, the images whose features best match the "
                   "class mean); or dm: Distribution Matching (Zhao and Bilen, WACV 2023), random real images "
                   "optimised so their mean features under fresh random ConvNets match their class's")
    p.add_argument("--steps", type=positive_int, metavar="N", help="dm: iterations (default: 20000, the paper's)")
    p.add_argument("--max-minutes", type=positive_minutes, metavar="MIN",
                   help="dm: wall-clock budget, data loading included: no iteration starts that would end past it "
                   "(at least one runs). dm keeps its progress in OUT.partial.pt about once a minute and on Ctrl-C or "
                   "SIGTERM (after the iteration in flight): the same "
                   "command run again after a kill goes on from there, with the budget that is left")
    p.add_argument("--seed", type=seed_int, default=0, metavar="SEED", help="random seed")
    p.add_argument("--out", metavar="FILE", help=f"output file, .safetensors or .npz (default: "
                   f"{RUNS}/<dataset>_<method>_ipc<N>.safetensors)")
    add_force_option(p)
    add_common_options(p)
    add_device_option(p)

    p = command("eval", "score a set with the paper's protocol: train fresh networks on it alone, test them",
                "rcig eval runs/digits_ipc1/distilled.safetensors",
                "rcig eval set.safetensors --compare random,herding --json scores.json",
                "rcig eval set.safetensors --compare random,herding,dm.safetensors   # DM's set beside",
                "rcig eval set.safetensors --arch conv,resnet18 --models 3",
                func=cmd_eval)
    p.add_argument("file", metavar="FILE", help="a set (.safetensors or .npz) written by rcig or `rcig import`")
    p.add_argument("--models", type=positive_int, default=5, metavar="N", help="networks per setting")
    p.add_argument("--arch", metavar="A[,B...]", help="architectures, comma-separated, from conv, conv_bn, "
                   "resnet18, vgg11, alexnet: one table, rows architectures (default: the file's)")
    p.add_argument("--compare", metavar="random,herding,FILE", help="also score baselines of the same size with the "
                   "same protocol and networks' seeds, and report DD-Ranking's IOR and ARS against each: random "
                   "real images, herding's, or sets' files (e.g. DM's, from rcig baseline --method dm)")
    p.add_argument("--steps", type=positive_int, metavar="N",
                   help="training steps (default: 1000 for <= 10 images, else 2000)")
    p.add_argument("--test-limit", type=positive_int, metavar="K", help="first K test images only (quick checks)")
    p.add_argument("--seed", type=seed_int, default=0, metavar="SEED", help="the first network's seed")
    p.add_argument("--settings", choices=("both", "aug", "no_aug"), default="both",
                   help="train without augmentation, with it, or both")
    p.add_argument("--init", choices=("reference", "torch"), default="reference",
                   help="the networks' initialisation: the reference release's (flax lecun-normal) or torch's")
    p.add_argument("--width", type=positive_int, metavar="W", help="the networks' channels per layer (default: the "
                   "file's, the distillation network's; 128 is the paper's)")
    p.add_argument("--json", metavar="FILE", help="also write the scores as JSON here; each network's score is "
                   "recorded in FILE.partial as it finishes, so the same command run again after a kill trains only "
                   "the networks still missing")
    add_force_option(p)
    add_common_options(p)
    add_scale_options(p, "train the networks on N processes")

    p = command("export", "write a set in another tool's format", "rcig export set.safetensors --format npz "
                "--out set_for_numpy.npz", "rcig export set.safetensors --format imagefolder --out set_images/",
                func=cmd_export)
    p.add_argument("file", metavar="FILE", help="an rcig set")
    p.add_argument("--format", required=True, choices=("mtt", "dc", "kip", "imagefolder", "npz"))
    p.add_argument("--out", required=True, metavar="PATH", help="a folder for mtt and imagefolder, else a file")
    add_force_option(p)
    add_common_options(p, data=False)

    p = command("import", "read a set made by another tool into rcig's format",
                "rcig import images_best.pt --dataset cifar10 --stored-as norm:0.4914,0.4822,0.4465/0.247,0.243,0.261 "
                "--out mtt.safetensors", "rcig import checkpoint_dir --dataset fashion_mnist --out rcig_release.safetensors",
                func=cmd_import)
    p.add_argument("path", metavar="PATH", help="a flax checkpoint, images_best.pt (or its folder), a DC .pt or a "
                   "KIP .npz")
    p.add_argument("--format", default="auto", choices=("auto", "rcig", "frepo", "mtt", "dc", "kip"))
    p.add_argument("--dataset", metavar="SPEC", help="the dataset it was distilled from: records its preprocessing "
                   "so eval and show treat it right (without: kept as stored, preprocessing unknown)")
    p.add_argument("--stored-as", default="model", metavar="model|unit|norm:MEAN/STD",
                   help="how the file stores images: rcig's model space for the dataset (the RCIG and FRePo "
                   "releases), pixels/255 ('unit'), or per-channel normalised pixels (DC, DSA, DM)")
    p.add_argument("--flip", choices=("auto", "on", "off"), default="auto",
                   help="flip trick at eval (auto: the paper's preset for rcig checkpoints, else off)")
    p.add_argument("--out", required=True, metavar="FILE", help="output file (.safetensors or .npz)")
    add_force_option(p)
    add_common_options(p)

    p = command("report", "write DIR/report.html for a run folder (replacing it)", "rcig report runs/digits_ipc1",
                func=cmd_report)
    p.add_argument("dir", metavar="DIR", help="a run folder written by `rcig distill`")
    add_common_options(p, data=False)

    p = command("show", "draw a set as a picture, one row per class",
                "rcig show runs/digits_ipc1/distilled.safetensors   # writes runs/digits_ipc1/distilled.png",
                "rcig show set.safetensors --out set.jpg --max-per-class 5", func=cmd_show)
    p.add_argument("file", metavar="FILE", help="an rcig set")
    p.add_argument("--out", metavar="IMAGE", help=f"picture file, {', '.join(IMAGE_SUFFIXES)} (default: FILE with "
                   ".png in place of its extension)")
    p.add_argument("--max-per-class", type=positive_int, metavar="N", help="draw at most N images of each class")
    add_force_option(p)
    add_common_options(p, data=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``rcig`` command: its exit status (0, 2 for a refused input, 70 for a bug, 128 + N
    for signal N). A rank that torchrun launched leaves the process here and now, once its
    output is flushed: the collective library's threads can abort an ordinary interpreter
    exit ("terminate called without an active exception") after the work is done."""
    status = _run(sys.argv[1:] if argv is None else list(argv))
    if parallel.launched():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def _run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "workers", None) and args.workers > 1 and not parallel.launched():
        return parallel.launch(without_workers(argv), args.workers)
    try:
        with parallel.subnormals_flushed():  # before torch starts its threads (rcig.parallel)
            args.func(args)
    except RcigError as exc:
        if parallel.rank_in_env() == 0 or not isinstance(exc, parallel.TeamError):  # said once per team
            return _fail(f"rcig: error: {_one_line(str(exc))}", 2)
        return 2
    except KeyboardInterrupt as exc:  # a signal (rcig.run.interrupts): exit status 128 + its number
        if parallel.rank_in_env() == 0:
            print(f"rcig: {_one_line(str(exc))}" if str(exc) else "rcig: interrupted", file=sys.stderr)
        return getattr(exc, "exit_status", 130)
    except OSError as exc:  # the filesystem said no: a missing path, permissions, a full disk
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(f"rcig: error: {_one_line(exc.strerror or str(exc))}{where}", 2)
    except Exception as exc:  # noqa: BLE001 - anything else but running out of memory is a bug in rcig
        if out_of_memory(exc):
            return _fail("rcig: error: out of memory (try a smaller --ipc, width or batch size)", 2)
        if os.environ.get("RCIG_DEBUG"):
            raise
        return _fail(f"rcig: internal error (a bug in rcig, please report it): {type(exc).__name__}: "
                     f"{_one_line(str(exc))[:200]}; run again with RCIG_DEBUG=1 to see the traceback", 70)
    finally:
        parallel.leave()
    return 0


def without_workers(argv: list[str]) -> list[str]:
    """``argv`` less its ``--workers N`` / ``--workers=N`` (what each launched rank runs)."""
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return out


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "(no message)"


def _fail(line: str, code: int) -> int:
    sys.stderr.flush()
    print(line, file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
