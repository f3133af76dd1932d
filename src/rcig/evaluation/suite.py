"""Scoring a distilled set: :func:`evaluate`, under one or several architectures' protocols and
beside baselines of the same size (``rcig eval --arch a,b --compare random``).

What the reference release's ``eval.py`` changes per architecture is the network alone:
every network trains with Adam at ``eval_lr`` = 1e-4, the same 500-step warm-up and cosine
decay, the same step counts, MSE to the centred labels, with or without augmentation; batch
norm is one ``normalization`` switch (off by default; "batch" turns it on for the ConvNet).
So ``conv_bn`` is the protocol's ConvNet with batch norm (running statistics at test time),
and ``resnet18`` / ``vgg11`` / ``alexnet`` swap the network and keep every other setting.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from rcig.errors import RcigError
from rcig.evaluation.protocol import ProtocolSettings, Scored, evaluate_support

if TYPE_CHECKING:
    from rcig.io import DistilledSet
    from rcig.parallel import Team

ARCH_PROTOCOLS = {
    "conv": {"arch": "conv", "norm": "none"},
    "conv_bn": {"arch": "conv", "norm": "batch"},
    "resnet18": {"arch": "resnet18"},
    "vgg11": {"arch": "vgg11"},
    "alexnet": {"arch": "alexnet"},
}


def split_list(text: str | None, what: str) -> tuple[str, ...]:
    """"a,b" -> ("a", "b"), none listed twice; None or "" -> ()."""
    items = tuple(p.strip() for p in (text or "").split(",") if p.strip())
    if len(set(items)) != len(items):
        raise RcigError(f"{what} listed twice in '{text}'")
    return items


def parse_list(text: str | None, known, what: str) -> tuple[str, ...]:
    """"a,b" -> ("a", "b"), each checked against ``known``; None or "" -> ()."""
    items = split_list(text, what)
    unknown = [p for p in items if p not in known]
    if unknown:
        raise RcigError(f"unknown {what} '{unknown[0]}'; choose from {', '.join(known)}")
    return items


def compared_sets(text: str | None, selections) -> tuple[str, ...]:
    """``--compare``'s items ("random,herding,dm.safetensors"): each a name of ``selections`` or
    a set file (.safetensors or .npz) that exists; None or "" -> ()."""
    items = split_list(text, "baseline")
    for item in items:
        if item not in selections and not (item.endswith((".safetensors", ".npz")) and Path(item).is_file()):
            what = "no such set file" if item.endswith((".safetensors", ".npz")) else "unknown baseline"
            raise RcigError(f"{what} '{item}'; --compare takes {', '.join(selections)} or sets' files "
                            "(.safetensors or .npz, e.g. from rcig baseline --method dm)")
    return items


def compared_file(path: str, ds, prepared, where: str, taken) -> tuple[str, tuple]:
    """A set file of ``--compare``: (its name in the tables, (images, labels)). It must be a set
    of the same dataset, classes, images and size as the scored set ``ds`` (``where``), made
    with the same flip trick. Its name: its method ("dm"), else (a name of ``taken``) its file's
    stem, else its folder and stem ("seed1/distilled")."""
    from rcig import validate
    from rcig.io import load

    other = load(path)
    meta, theirs = ds.meta, other.meta
    if theirs.get("dataset") != meta["dataset"]:
        raise RcigError(f"--compare {path} is a set of {theirs.get('dataset') or 'an unknown dataset'}, "
                        f"{where} of {meta['dataset']}")
    validate.set_fits_dataset(other.images, other.labels, theirs, prepared, path)
    if len(other.images) != len(ds.images):
        raise RcigError(f"--compare {path} holds {len(other.images)} images, {where} {len(ds.images)}: "
                        "compare sets of the same size")
    if bool(theirs.get("flip")) != bool(meta.get("flip")):
        raise RcigError(f"--compare {path} and {where} differ in the flip trick (one is scored with each image "
                        "and its mirror image): score them apart")
    file = Path(path).resolve()
    names = [n for n in (theirs.get("method"), file.stem, f"{file.parent.name}/{file.stem}") if n and n not in taken]
    if not names:
        raise RcigError(f"--compare {path}: a set of that name is compared already; rename the file")
    return names[0], (other.images, other.labels)


def arch_settings(base: ProtocolSettings, name: str) -> ProtocolSettings:
    return replace(base, **ARCH_PROTOCOLS[name])


# How the progress names each support of a grid.
SUPPORT_LABELS = {"distilled": "set", "random": "random real", "herding": "herding"}


def score_grid(supports: dict, archs: tuple[str, ...], base: ProtocolSettings, test_x, test_y, *, flip: bool,
               progress: bool, team=None, book: ScoreBook | None = None) -> dict:
    """``{support name: {arch: {"no_aug": {...}, "aug": {...}}}}``: every support under every
    architecture's protocol, with the same seeds (each protocol's networks shared over ``team``);
    the progress names the support (and the architecture, when there are several). ``book``:
    networks scored before are taken from it, and each new one recorded in it."""
    def label(name: str, arch: str) -> str:
        return SUPPORT_LABELS.get(name, name) + (f" ({arch})" if len(archs) > 1 else "")

    def score(images, labels, arch: str, name: str) -> dict:
        settings = arch_settings(base, arch)
        memo = book.memo(images, labels, settings, flip) if book is not None else None
        return evaluate_support(images, labels, test_x, test_y, settings, flip=flip, progress=progress,
                                label=label(name, arch), team=team, memo=memo)

    return {name: {arch: score(images, labels, arch, name) for arch in archs}
            for name, (images, labels) in supports.items()}


class ScoreBook:
    """The networks an evaluation has scored so far, kept beside its JSON so that a killed
    ``rcig eval --json FILE`` run again goes on where it stopped.

    Each rank keeps its own file (``FILE.partial``, and ``FILE.partial.rankR`` for rank R > 0):
    every network its book read when it was made (from all such files) and each one it has
    scored since, rewritten atomically after each network. A network is keyed by what decides
    its score: a digest of its support's images and labels, of the protocol (less the network
    count, the first seed and the settings, which only choose which networks run) and of the
    flip trick, then its setting and its seed. So a run with more networks or another first
    seed reuses the ones it shares, and a changed set or protocol reuses nothing. :meth:`close`
    removes the files once the scores are written.
    """

    def __init__(self, json_out: str | os.PathLike, rank: int = 0):
        self.base = Path(str(json_out) + ".partial")
        self.path = self.base if rank == 0 else self.base.with_name(f"{self.base.name}.rank{rank}")
        self.entries: dict[str, dict] = {}
        for path in sorted(self.base.parent.glob(glob.escape(self.base.name) + "*")):
            try:
                self.entries.update(json.loads(path.read_text())["networks"])
            except (OSError, ValueError, KeyError, TypeError):  # torn or foreign: score those networks again
                continue
        self.unwritable: str | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def memo(self, images, labels, settings: ProtocolSettings, flip: bool) -> "_Memo":
        """The memo of one support under one protocol (:class:`rcig.evaluation.protocol.ScoreMemo`)."""
        import hashlib

        digest = hashlib.sha256()
        for tensor in (images, labels):
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        protocol = {k: v for k, v in vars(settings).items() if k not in ("n_models", "seed", "settings")}
        digest.update(json.dumps({"protocol": protocol, "flip": flip}, sort_keys=True, default=list).encode())
        return _Memo(self, digest.hexdigest()[:32])

    def get(self, key: str) -> Scored | None:
        try:
            entry = self.entries[key]
            return Scored(float(entry["accuracy"]), bool(entry["diverged"]))
        except (KeyError, TypeError, ValueError):  # not scored, or not an entry of ours: score it
            return None

    def put(self, key: str, scored: Scored) -> None:
        from rcig.atomic import WriteError, atomic_write_text

        self.entries[key] = {"accuracy": scored.accuracy, "diverged": scored.diverged}
        if self.unwritable:
            return
        try:
            atomic_write_text(self.path, json.dumps({"networks": self.entries}, indent=1) + "\n")
        except (OSError, WriteError) as exc:  # progress not recorded: the evaluation itself goes on
            self.unwritable = str(exc) if isinstance(exc, WriteError) else f"cannot write {self.path}: {exc}"
            print(f"rcig: warning: the networks scored so far are not recorded ({self.unwritable}); going on, "
                  "but a killed run would start over", file=sys.stderr)

    def close(self) -> None:
        """Remove every rank's file (the leader, after the scores are written)."""
        for path in self.base.parent.glob(glob.escape(self.base.name) + "*"):
            try:
                path.unlink()
            except OSError:  # gone, or not a file of ours
                pass


class _Memo(NamedTuple):
    book: ScoreBook
    scope: str  # the digest of a support and its protocol

    def get(self, setting: str, seed: int) -> Scored | None:
        return self.book.get(f"{self.scope}/{setting}/{seed}")

    def put(self, setting: str, seed: int, scored: Scored) -> None:
        self.book.put(f"{self.scope}/{setting}/{seed}", scored)


def _cell(scores: dict, setting: str) -> str:
    s = scores.get(setting)
    return f"{s['mean'] * 100:6.2f} +- {s['std'] * 100:5.2f}" if s else f"{'-':>15}"


def format_table(grid: dict, ranking: dict | None = None) -> list[str]:
    """Text tables, rows architectures: each support set's accuracy without / with augmentation
    (%, mean +- std over the networks); then, per baseline, IOR (points) and ARS (%)."""
    names = list(grid)
    archs = list(grid[names[0]])
    lines = [f"{'arch':<9}" + "".join(f"  {n + ' no aug':>15}  {n + ' aug':>15}" for n in names)]
    for arch in archs:
        lines.append(f"{arch:<9}" + "".join(f"  {_cell(grid[n][arch], 'no_aug')}  {_cell(grid[n][arch], 'aug')}"
                                            for n in names))
    for base, per_arch in (ranking or {}).items():
        lines += ["", f"DD-Ranking against {base}: IOR = accuracy - {base}'s (points), ARS (%)",
                  f"{'arch':<9}  {'IOR no aug':>10}  {'IOR aug':>10}  {'ARS':>8}"]
        for arch in archs:
            r = per_arch[arch]
            cells = [f"{r['ior'][s]['mean'] * 100:+10.2f}" if s in r["ior"] else f"{'-':>10}" for s in ("no_aug", "aug")]
            cells.append(f"{r['ars']['mean'] * 100:8.2f}" if "ars" in r else f"{'-':>8}")
            lines.append(f"{arch:<9}  " + "  ".join(cells))
    return lines


def protocol_settings(meta: dict, *, models: int | None = None, steps: int | None = None, seed: int | None = None,
                      test_limit: int | None = None, settings: str = "both", init: str | None = None,
                      width: int | None = None) -> ProtocolSettings:
    """The protocol a set's metadata asks for (its arch, depth, width, augmentations), with the
    given arguments in place of the protocol's defaults where they are not None."""
    protocol, defaults = meta.get("protocol") or {}, ProtocolSettings()
    if settings not in ("both", "no_aug", "aug"):
        raise RcigError(f"settings must be both, no_aug or aug, got {settings!r}")
    return ProtocolSettings(arch=protocol.get("arch", defaults.arch), depth=protocol.get("depth", defaults.depth),
                            width=width or protocol.get("width", defaults.width), n_models=models or defaults.n_models,
                            steps=steps, seed=defaults.seed if seed is None else seed,
                            augmentations=tuple(protocol.get("augmentations", defaults.augmentations)),
                            test_limit=test_limit, init=init or defaults.init,
                            settings=defaults.settings if settings == "both" else (settings,))


def evaluate(distilled: DistilledSet | str | os.PathLike, *, models: int | None = None, arch: str | None = None,
             steps: int | None = None, test_limit: int | None = None, seed: int | None = None,
             settings: str = "both", compare: str | None = None, init: str | None = None, width: int | None = None,
             data_dir: str | os.PathLike | None = None, json_out: str | os.PathLike | None = None,
             progress: bool = True, team: Team | None = None) -> dict:
    """Score a distilled set (a :class:`rcig.io.DistilledSet` or its file) with the paper's
    protocol on the real test set of the dataset it names; returns the scores (fractions).

    Arguments left as None take the protocol's defaults (:class:`ProtocolSettings`) or, for
    arch/depth/width/augmentations, the set's own protocol (``width`` scores a set distilled
    with a narrower network on the paper's width-128 ConvNet). ``arch`` may list several
    architectures ("conv,resnet18"); ``compare`` ("random,herding,dm.safetensors") also scores
    baselines of the same size, made here or read from set files (:func:`compared_file`), with
    the same protocol and seeds, with DD-Ranking's IOR and ARS against each;
    ``settings`` is "both", "no_aug" or "aug". One architecture and no baseline: the result is
    ``{"no_aug", "aug", "dataset", ...}``; otherwise it adds ``"archs"`` / ``"compare"`` /
    ``"ranking"``. ``json_out`` (checked before any work) receives the result as JSON. Under a
    ``team`` of several ranks the networks are shared out and the leader alone writes.
    """
    from rcig import parallel, validate
    from rcig.data import prepare
    from rcig.evaluation.baselines import SELECTIONS, baseline_support
    from rcig.evaluation.ranking import ranking_scores
    from rcig.io import DistilledSet, load

    team = team or parallel.solo()
    if json_out:
        validate.output_file(json_out, (".json",), "--json")
    book = ScoreBook(json_out, team.rank) if json_out else None  # read before any rank records (leader_first)
    if book and progress and team.leader and len(book):
        print(f"rcig: going on from {book.base}: of the {len(book)} network(s) it records, those of this set and "
              "protocol are not trained again", file=sys.stderr)
    path = None if isinstance(distilled, DistilledSet) else Path(distilled)
    ds = load(path) if path is not None else distilled
    where = str(path) if path is not None else "the set"
    if path is None:  # a set made in Python: the checks rcig.load makes of a file
        validate.distilled_set(ds.images, ds.labels, ds.meta, ds.preprocess_arrays, where)
    meta = ds.meta
    if meta.get("dataset") is None:
        raise RcigError(f"{where} was imported without --dataset: its preprocessing is unknown and it names no test "
                        "set; re-import it with: rcig import SOURCE --dataset SPEC --out FILE")
    with parallel.leader_first(team):  # the others then find its downloads and caches
        prepared = prepare(meta["dataset"], data_dir)
    validate.set_fits_dataset(ds.images, ds.labels, meta, prepared, where)
    archs = parse_list(arch, ARCH_PROTOCOLS, "architecture") or ((meta.get("protocol") or {}).get("arch", "conv"),)
    baselines = compared_sets(compare, SELECTIONS)
    base = protocol_settings(meta, models=models, steps=steps, seed=seed, test_limit=test_limit, settings=settings,
                             init=init, width=width)
    channels, size = ds.images.shape[1], ds.images.shape[2]
    for name in archs:
        validate.network_fits(ARCH_PROTOCOLS[name]["arch"], channels, size, base.depth, where)
    supports = {"distilled": (ds.images, ds.labels)}
    k = ds.labels.shape[1]
    if baselines and len(ds.images) % k:
        raise RcigError(f"--compare needs the same number of images per class; {where} has {len(ds.images)} for "
                        f"{k} classes")
    for item in baselines:
        if item in SELECTIONS:
            supports[item] = baseline_support(prepared, item, len(ds.images) // k, base.seed)
        else:
            name, support = compared_file(item, ds, prepared, where, supports)
            supports[name] = support
    baselines = tuple(name for name in supports if name != "distilled")
    started = time.perf_counter()
    grid = score_grid(supports, archs, base, prepared.test_images(), prepared.y_test, flip=bool(meta.get("flip")),
                      progress=progress, team=team, book=book)
    seconds = time.perf_counter() - started
    if all(scores["diverged"] and len(scores["diverged"]) == len(scores["accs"])
           for scores in _settings_of(grid["distilled"])):
        from rcig.parallel import TeamError  # every rank raises it; the leader alone says it

        lo, hi = float(ds.images.min()), float(ds.images.max())
        if book is not None and team.leader:  # the verdict is final: nothing for a run again to go on from
            book.close()
        raise TeamError(f"{where}: every network trained on it diverged (the loss became NaN or infinite; its "
                        f"images range from {lo:.3g} to {hi:.3g}), so it has no score")
    ranking = {b: {a: ranking_scores(grid["distilled"][a], grid[b][a]) for a in archs} for b in baselines}
    single = len(archs) == 1
    report = {**(grid["distilled"][archs[0]] if single else {}), "dataset": meta["dataset"], "ipc": meta.get("ipc"),
              "method": meta.get("method"), "iteration": meta.get("iteration"), "models": base.n_models, "arch": ",".join(archs),
              "width": base.width, "seed": base.seed, "steps": steps or "default", "init": base.init,
              "test_limit": test_limit, "seconds": round(seconds, 1)}
    if not single:
        report["archs"] = grid["distilled"]
    if baselines:
        report.update(compare={b: grid[b] for b in baselines}, ranking=ranking)
    if json_out and team.leader:
        write_scores(report, json_out, path)
        book.close()
    return report


def write_scores(report: dict, json_out: str | os.PathLike, scored: Path | None) -> None:
    """``report`` as JSON in ``json_out``, atomically; with the scored file's path relative to
    the JSON's folder (portable: no machine's absolute path) when there is one."""
    from rcig.atomic import atomic_write_text

    if scored is not None:
        report["file"] = os.path.relpath(os.path.abspath(scored), os.path.abspath(Path(json_out).parent))
    atomic_write_text(json_out, json.dumps(report, indent=2) + "\n")


def _settings_of(per_arch: dict) -> list[dict]:
    """Every setting's scores ``{"mean", "accs", "diverged", ...}`` of ``{arch: {setting: scores}}``."""
    return [scores for by_setting in per_arch.values() for scores in by_setting.values()]


def _diverged_note(scores: dict) -> str:
    bad = scores.get("diverged") or []
    if not bad:
        return ""
    return (f"; {len(bad)} of {len(scores['accs'])} networks diverged (NaN or infinite loss)"
            + ("; mean over the others" if len(bad) < len(scores["accs"]) else ""))


def format_scores(report: dict) -> list[str]:
    """The lines ``rcig eval`` prints for a result of :func:`evaluate`: a header, then each
    setting's mean +- std and per-network accuracies (%; "diverged" for a network whose
    training diverged), or the table of :func:`format_table` and one line per setting in
    which networks diverged."""
    lines = [f"{report['dataset']}  ipc={report.get('ipc')}  method={report.get('method')}  arch={report['arch']}  "
             f"models={report['models']}  ({report['seconds'] / 60:.1f} min)"]
    archs = report["arch"].split(",")
    if "archs" not in report and "compare" not in report:
        for name in ("no_aug", "aug"):
            if name in report:
                s = report[name]
                bad = s.get("diverged") or []
                accs = " ".join("diverged" if i in bad else f"{a * 100:.2f}" for i, a in enumerate(s["accs"]))
                lines.append(f"  {name:<7} {s['mean'] * 100:6.2f} +- {s['std'] * 100:.2f} %   [{accs}]"
                             + _diverged_note(s))
        return lines
    distilled = report.get("archs") or {archs[0]: {k: report[k] for k in ("no_aug", "aug") if k in report}}
    grid = {"distilled": distilled, **report.get("compare", {})}
    notes = [f"{support} {arch} {setting}{_diverged_note(scores)}" for support, per_arch in grid.items()
             for arch, by_setting in per_arch.items() for setting, scores in by_setting.items()
             if scores.get("diverged")]
    return lines + format_table(grid, report.get("ranking")) + notes
