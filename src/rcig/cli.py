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
from rcig.errors import RcigError


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


def positive_minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of minutes > 0, got '{text}'")
    return value


class Parser(argparse.ArgumentParser):
    """argparse with the one-line error of every other bad input (usage via --help)."""

    def error(self, message: str):
        print(f"rcig: error: {self.prog}: {_one_line(message)} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


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
    from rcig.algorithm.runner import distill
    from rcig.config import parse_overrides

    out = Path(args.out) if args.out else Path("runs") / f"{args.dataset or 'digits'}_ipc{args.ipc or 1}"
    validate.output_dir(out, "--out")
    started = time.perf_counter()
    team = parallel.join(args.device)
    result = distill(args.dataset, args.ipc, preset=args.preset, steps=args.steps, seed=args.seed, out=out,
                     resume=args.resume, overrides=parse_overrides(args.set), data_dir=args.data_dir,
                     checkpoint_every=args.checkpoint_every, eval_every=args.eval_every,
                     max_minutes=args.max_minutes, progress=not args.quiet, team=team)
    minutes = (time.perf_counter() - started) / 60
    say = print if team.leader else (lambda *a, **k: None)
    say(f"rcig: distilled {result.meta['dataset']} to {len(result.images)} images in {minutes:.1f} min: "
        f"{out / 'distilled.safetensors'} (picture: {out / 'grid.png'})")
    run_eval = args.eval if args.eval is not None else result.meta["dataset"] == "digits"
    if run_eval:
        evaluate_and_print(out / "distilled.safetensors", models=args.models, test_limit=args.test_limit,
                           json_out=out / "eval.json", data_dir=args.data_dir, quiet=args.quiet, team=team)
    else:
        say(f"rcig: score it with: rcig eval {out / 'distilled.safetensors'}")
    if team.leader:
        from rcig.report import write_report

        print(f"rcig: report: {write_report(out)}")


# ---------------------------------------------------------------------------- baseline

def cmd_baseline(args) -> None:
    from rcig import validate
    from rcig.evaluation.baselines import baseline_set
    from rcig.io import save

    out = Path(args.out or f"out/{args.dataset.replace(':', '_').replace('/', '_')}_{args.method}_ipc{args.ipc}.safetensors")
    validate.output_file(out, SET_SUFFIXES, "--out")
    team = parallel.join(args.device)  # under torchrun: every rank computes, the leader writes
    ds = baseline_set(args.dataset, args.ipc, method=args.method, seed=args.seed, data_dir=args.data_dir,
                      device=team.device)
    if not team.leader:
        return
    save(ds, out)
    print(f"rcig: wrote {len(ds.images)} {args.method} images ({args.ipc} per class) to {out}")


# -------------------------------------------------------------------------------- eval

def evaluate_and_print(path: Path | str, *, team: parallel.Team, quiet: bool = False, **options) -> dict:
    """:func:`rcig.evaluation.evaluate` on the set file ``path``; the leader prints the scores."""
    from rcig.evaluation import evaluate, format_scores

    report = evaluate(path, progress=not quiet, team=team, **options)
    if team.leader:
        print("\n".join(format_scores(report)))
    return report


def cmd_eval(args) -> None:
    evaluate_and_print(args.file, models=args.models, arch=args.arch, steps=args.steps, test_limit=args.test_limit,
                       seed=args.seed, json_out=args.json, data_dir=args.data_dir, settings=args.settings,
                       compare=args.compare, init=args.init, team=parallel.join(args.device))


# -------------------------------------------------------------------------------- show

def cmd_show(args) -> None:
    from rcig import validate
    from rcig.io import load
    from rcig.viz import save_grid

    validate.output_file(args.out, IMAGE_SUFFIXES, "--out")
    save_grid(load(args.file), args.out, max_per_class=args.max_per_class)
    print(f"rcig: wrote {args.out}")


# ------------------------------------------------------------------ export, import, report

def cmd_export(args) -> None:
    from rcig.interop import export
    from rcig.io import load

    files = export(load(args.file), args.format, args.out)
    print(f"rcig: wrote {args.format}: " + (str(files[0]) if len(files) == 1 else f"{len(files)} files in {args.out}"))


def cmd_import(args) -> None:
    from rcig.interop import import_set
    from rcig.io import save

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

def add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", metavar=parallel.DEVICES,
                   help="where to compute (default auto: a CUDA GPU if torch sees one, else the CPU)")


def add_scale_options(p: argparse.ArgumentParser, what: str) -> None:
    add_device_option(p)
    p.add_argument("--workers", type=positive_int, metavar="N",
                   help=f"{what} on this machine (torchrun --standalone; each gets cores/N threads)")


def build_parser() -> argparse.ArgumentParser:
    from rcig.config import preset_names

    parser = Parser(prog="rcig", description="Dataset distillation with Convexified Implicit "
                                     "Gradients (RCIG, Loo et al., ICML 2023).")
    parser.add_argument("--version", action="version", version=f"rcig {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("datasets", help="list dataset specs and whether their files were found")
    p.add_argument("--data-dir", help="also look in this folder")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("distill", help="distil a dataset with RCIG (no arguments: a short run on digits + eval)")
    p.add_argument("--dataset", help="dataset spec (default digits; see `rcig datasets`)")
    p.add_argument("--ipc", type=positive_int, help="images per class (default 1)")
    p.add_argument("--preset", choices=preset_names(), help="the paper's config (default: by image size/channels), or "
                   "fast: the CPU recipe on top of it (256 target images, 5 CG iterations per solve, "
                   "a 3x support learning rate decaying over 300 steps, herding's images as the start at 1 ipc)")
    p.add_argument("--steps", type=non_negative_int, help="outer steps (default: 50 on digits, else the config's)")
    p.add_argument("--seed", type=seed_int, help="seed (default 0)")
    p.add_argument("--out", help="run directory (default runs/<dataset>_ipc<N>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set inner_lr=1e-4 (repeatable)")
    p.add_argument("--checkpoint-every", type=positive_int, default=10, help="iterations between checkpoints")
    p.add_argument("--eval-every", type=positive_int, help="score the EMA support every N iterations (1 model)")
    p.add_argument("--max-minutes", type=positive_minutes, help="wall-clock budget, data loading and tuning included: "
                   "no step starts that would end past it (at least one runs; continue with --resume); "
                   "without --steps the budget alone ends a new run")
    p.add_argument("--eval", dest="eval", action="store_true", default=None, help="evaluate when done")
    p.add_argument("--no-eval", dest="eval", action="store_false", help="don't evaluate when done")
    p.add_argument("--models", type=positive_int, default=5, help="models for the final evaluation")
    p.add_argument("--test-limit", type=positive_int, help="evaluate on the first K test images only")
    p.add_argument("--data-dir", help="folder with the dataset files")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_scale_options(p, "split each step's target batch across N processes")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("baseline", help="make a random-real or herding baseline set")
    p.add_argument("--dataset", default="digits", help="dataset spec (default digits)")
    p.add_argument("--ipc", type=positive_int, default=10, help="images per class (default 10)")
    p.add_argument("--method", choices=("random", "herding"), default="random")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--out", help="output file (.safetensors or .npz)")
    p.add_argument("--data-dir", help="folder with the dataset files")
    add_device_option(p)
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser("eval", help="score a distilled set with the paper's protocol")
    p.add_argument("file")
    p.add_argument("--models", type=positive_int, default=5, help="networks per setting (default 5)")
    p.add_argument("--arch", metavar="A[,B...]", help="architectures, comma-separated, from conv, conv_bn, resnet18, "
                   "vgg11, alexnet: one table, rows architectures (default: the file's)")
    p.add_argument("--compare", metavar="random[,herding]", help="also score baselines of the same size with the "
                   "same protocol and seeds, and report DD-Ranking's IOR and ARS")
    p.add_argument("--steps", type=positive_int, help="training steps (default 1000 for <= 10 images, else 2000)")
    p.add_argument("--test-limit", type=positive_int, help="first K test images only (quick checks)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--settings", choices=("both", "aug", "no_aug"), default="both")
    p.add_argument("--init", choices=("reference", "torch"), default="reference",
                   help="the networks' initialisation: the reference release's (flax lecun-normal, default) or "
                   "torch's (rcig's protocol before session 7)")
    p.add_argument("--json", help="write the scores as JSON here")
    p.add_argument("--data-dir", help="folder with the dataset files")
    add_scale_options(p, "train the networks on N processes")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="write a distilled set in another tool's format")
    p.add_argument("file")
    p.add_argument("--format", required=True, choices=("mtt", "dc", "kip", "imagefolder", "npz"))
    p.add_argument("--out", required=True, help="a folder for mtt and imagefolder, else a file")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="read a distilled set made by another tool into rcig's format")
    p.add_argument("path", help="a flax checkpoint, images_best.pt (or its folder), a DC .pt or a KIP .npz")
    p.add_argument("--format", default="auto", choices=("auto", "rcig", "frepo", "mtt", "dc", "kip"))
    p.add_argument("--dataset", help="the dataset it was distilled from: records its preprocessing so eval and "
                   "show treat it right (without: kept as stored, preprocessing unknown)")
    p.add_argument("--stored-as", default="model", metavar="model|unit|norm:MEAN/STD",
                   help="how the file stores images: rcig's model space for the dataset (default; the RCIG and "
                   "FRePo releases), pixels/255 ('unit'), or per-channel normalised pixels (DC, DSA, DM)")
    p.add_argument("--flip", choices=("auto", "on", "off"), default="auto",
                   help="flip trick at eval (auto: the paper's preset for rcig checkpoints, else off)")
    p.add_argument("--out", required=True, help="output file (.safetensors or .npz)")
    p.add_argument("--data-dir", help="folder with the dataset files")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("report", help="write DIR/report.html for a run directory")
    p.add_argument("dir")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("show", help="draw a distilled set, one row per class")
    p.add_argument("file")
    p.add_argument("--out", default="grid.png", help=f"picture file ({', '.join(IMAGE_SUFFIXES)})")
    p.add_argument("--max-per-class", type=positive_int)
    p.set_defaults(func=cmd_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if getattr(args, "workers", None) and args.workers > 1 and not parallel.launched():
        return parallel.launch(without_workers(argv), args.workers)
    try:
        with parallel.subnormals_flushed():  # 3x faster steps (rcig.parallel), the caller's mode restored
            args.func(args)
    except RcigError as exc:
        if parallel.rank_in_env() == 0 or not isinstance(exc, parallel.TeamError):  # said once per team
            return _fail(f"rcig: error: {_one_line(str(exc))}", 2)
        return 2
    except KeyboardInterrupt:
        if parallel.rank_in_env() == 0:
            print("rcig: interrupted" + ("; continue with --resume" if args.command == "distill" else ""), file=sys.stderr)
        return 130
    except OSError as exc:  # the filesystem said no: a missing path, permissions, a full disk
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(f"rcig: error: {_one_line(exc.strerror or str(exc))}{where}", 2)
    except MemoryError:
        return _fail("rcig: error: out of memory (try a smaller --ipc, width or batch size)", 2)
    except Exception as exc:  # noqa: BLE001 - anything else is a bug in rcig
        if "not enough memory" in str(exc) or "can't allocate memory" in str(exc).lower():
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
