"""One self-contained HTML page per run: ``rcig report DIR`` writes ``DIR/report.html``.

At the top, a headline: the set's test accuracy without and with augmentation beside random
real images of the same size (and herding's where scored; a score says how many of its
networks diverged, if any did), DD-Ranking's IOR, the wall time, the device, the versions and
the command. Then the distilled images mapped back to pixels (one row per class), the curves of ``log.jsonl`` drawn as inline SVG (the outer batch's loss
and accuracy, the test accuracy of ``--eval-every``, the inner and H^-1 g learning rates, the
meta-gradient norms per leaf), the learned labels as a heat map, the tables of ``eval.json``
and the config fields where the run differs from the closest preset. Pictures are embedded
(SVG inline, PNG as base64 data URIs), so the file can be mailed or archived alone; nothing
beyond rcig's own dependencies is needed to write it.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import NamedTuple

from rcig.errors import RcigError

NORM_LEAVES = ("x", "y", "log_temp")
class RunFiles(NamedTuple):
    set_path: Path | None  # distilled.safetensors, else the latest checkpoints/iter_N.safetensors
    log: list[dict]  # log.jsonl records
    run: dict | None  # run.json
    eval: dict | None  # eval.json


def read_run(run_dir: str | Path) -> RunFiles:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RcigError(f"no such run directory: {run_dir}")
    set_path = run_dir / "distilled.safetensors"
    if not set_path.is_file():
        iters = sorted((run_dir / "checkpoints").glob("iter_*.safetensors"),
                       key=lambda p: int(p.stem.split("_")[1]) if p.stem.split("_")[1].isdigit() else -1)
        set_path = iters[-1] if iters else None
    log = []
    if (run_dir / "log.jsonl").is_file():
        for line in (run_dir / "log.jsonl").read_text().splitlines():
            try:
                log.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
    load = lambda name: json.loads((run_dir / name).read_text()) if (run_dir / name).is_file() else None  # noqa: E731
    if set_path is None and not log and load("run.json") is None:
        raise RcigError(f"{run_dir} holds no run (no distilled.safetensors, log.jsonl or run.json)")
    return RunFiles(set_path, log, load("run.json"), load("eval.json"))


# ------------------------------------------------------------------------- pictures

def png_uri(image) -> str:
    """A PIL image as a ``data:image/png;base64,...`` URI."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def table(header: list[str], rows: list[list]) -> str:
    cells = lambda row, tag: "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in row)  # noqa: E731
    return ("<table><tr>" + cells(header, "th") + "</tr>"
            + "".join("<tr>" + cells(r, "td") + "</tr>" for r in rows) + "</table>")


# ------------------------------------------------------------------------- sections

def images_section(ds) -> str:
    from rcig.viz import grid_image

    note = "" if ds.preprocessing_known else "<p>Preprocessing unknown: contrast stretched over the set.</p>"
    return "<h2>Distilled images</h2>" + note + img(png_uri(grid_image(ds)), "distilled images, one row per class")


def labels_section(ds) -> str:
    from rcig.viz import heat_map

    labels = ds.labels.numpy()
    names = ds.meta.get("class_names") or [str(i) for i in range(labels.shape[1])]
    shown = labels[:200]
    more = f" (the first {len(shown)} shown)" if len(shown) < len(labels) else ""
    return (f"<h2>Learned labels</h2><p>{labels.shape[0]} images{more} (rows) x {labels.shape[1]} classes "
            f"(columns: {html.escape(', '.join(map(str, names[:20])))}{' ...' if len(names) > 20 else ''}); "
            "red positive, blue negative, white zero. The labels are learned with the images.</p>"
            + img(png_uri(heat_map(shown)), "learned labels heat map"))


def series(log: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """name -> [(iteration, value)] for every curve the report draws."""
    out: dict[str, list[tuple[int, float]]] = {}

    def add(name, it, value):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.setdefault(name, []).append((it, float(value)))

    for r in log:
        it = r.get("iter", 0)
        for key in ("outer_loss", "outer_acc", "inner_lr", "hvp_lr"):
            add(key, it, r.get(key))
        for leaf in NORM_LEAVES:
            add(f"grad_norm/{leaf}", it, (r.get("grad_norm") or {}).get(leaf))
        for setting, scores in (r.get("eval") or {}).items():
            if isinstance(scores, dict):
                add(f"eval/{setting}", it, scores.get("mean"))
    return out


def curves_section(log: list[dict]) -> str:
    from rcig.viz import svg_chart

    data = series(log)
    if not data:
        return "<h2>Curves</h2><p>No log records.</p>"
    pct = lambda name: [(x, 100 * y) for x, y in data.get(name, [])]  # noqa: E731
    accuracy = [("outer batch (training)", pct("outer_acc"))]
    if data.get("eval/aug") or data.get("eval/no_aug"):
        accuracy += [("test, 1 network, with aug.", pct("eval/aug")), ("test, 1 network, no aug.", pct("eval/no_aug"))]
    charts = [
        svg_chart([("outer loss", data.get("outer_loss", []))], title="Loss on the outer (target) batch",
                  x_label="outer step", y_label="loss"),
        svg_chart(accuracy, title="Accuracy" + (" (test: --eval-every)" if len(accuracy) > 1 else
                                              " on the outer (target) batch"),
                  x_label="outer step", y_label="accuracy (%)"),
        svg_chart([("inner", data.get("inner_lr", [])), ("H^-1 g", data.get("hvp_lr", []))],
                  title="Learning rates of the inner solves", x_label="outer step", y_label="learning rate",
                  log_y=True),
        svg_chart([(f"{leaf}", data.get(f"grad_norm/{leaf}", [])) for leaf in NORM_LEAVES],
                  title="Meta-gradient norm per leaf", x_label="outer step", y_label="norm", log_y=True),
    ]
    note = ("<p>The outer batch is the batch of real training images each step fits the support to: its "
            "accuracy is a training figure, not a test score.</p>")
    return "<h2>Curves</h2>" + note + "<div class='charts'>" + "".join(charts) + "</div>"


def _pct(scores: dict | None) -> str:
    """A setting's ``mean ± std`` in %, and how many of its networks diverged where any did."""
    if not scores:
        return "-"
    text = f"{scores['mean'] * 100:.2f} ± {scores['std'] * 100:.2f}"
    bad, count = scores.get("diverged") or [], len(scores.get("accs") or [])
    return text + (f" ({len(bad)} of {count} diverged)" if bad else "")


def all_scores(report: dict) -> list[dict]:
    """Every setting's scores in an eval.json: the set's (one architecture or several) and the
    baselines'."""
    archs = report.get("archs") or {"": {k: report[k] for k in ("no_aug", "aug") if k in report}}
    return [scores for per_arch in (archs, *(report.get("compare") or {}).values())
            for by_setting in per_arch.values() for scores in by_setting.values() if isinstance(scores, dict)]


def diverged_note(report: dict) -> str:
    """A paragraph saying what a score's "(K of N diverged)" means, where any network diverged."""
    if not any(s.get("diverged") for s in all_scores(report)):
        return ""
    return ("<p class='warning'>Some evaluation networks diverged (their loss or a weight became NaN or "
            "infinite): a score marked \"K of N diverged\" is the mean ± std over the other networks (over "
            "all N when every one diverged).</p>")


def eval_section(report: dict | None) -> str:
    if not report:
        return "<h2>Evaluation</h2><p>No eval.json (score the set with: rcig eval FILE --json DIR/eval.json).</p>"
    archs = report.get("archs") or {report.get("arch", "conv"): {k: report[k] for k in ("no_aug", "aug") if k in report}}
    sets = {"distilled": archs, **(report.get("compare") or {})}
    header = ["architecture"] + [f"{name} {s}" for name in sets for s in ("no aug", "aug")]
    rows = [[arch] + [_pct(sets[name].get(arch, {}).get(s)) for name in sets for s in ("no_aug", "aug")]
            for arch in archs]
    out = (f"<h2>Evaluation</h2><p>{html.escape(str(report.get('dataset')))}, ipc {report.get('ipc')}, "
           f"{report.get('models')} network(s), steps {report.get('steps')}; test accuracy in %.</p>" + table(header, rows)
           + diverged_note(report))
    for base, per_arch in (report.get("ranking") or {}).items():
        rows = [[arch, *(f"{r['ior'][s]['mean'] * 100:+.2f}" if s in r["ior"] else "-" for s in ("no_aug", "aug")),
                 f"{r['ars']['mean'] * 100:.2f}" if "ars" in r else "-"] for arch, r in per_arch.items()]
        out += (f"<h3>DD-Ranking against {html.escape(base)}</h3>"
                + table(["architecture", "IOR no aug (points)", "IOR aug (points)", "ARS (%)"], rows))
    return out


def closest_preset(config: dict, image_size: int, channels: int) -> tuple[str | None, dict]:
    """The preset (for this image shape) the run's ``config`` differs from in the fewest fields,
    and those fields as ``{key: (run's value, preset's value)}``; informational fields
    (``description``, ``image_size``) are left out."""
    from rcig.config import load_preset, preset_names

    best: tuple[str | None, dict] = (None, {})
    for name in preset_names():
        try:
            preset = json.loads(json.dumps(load_preset(name, image_size, channels).to_dict()))
        except RcigError:
            continue
        diff = {k: (v, preset.get(k)) for k, v in config.items()
                if k not in ("description", "image_size") and preset.get(k) != v}
        if best[0] is None or len(diff) < len(best[1]):
            best = (name, diff)
    return best


def config_section(run: dict | None, ds) -> str:
    config = (run or {}).get("config") or (ds.meta.get("config") if ds is not None else None)
    if not config:
        return "<h2>Config</h2><p>No run.json.</p>"
    if ds is None:
        return "<h2>Config</h2><p>No set yet to compare the config with its preset; run.json holds it.</p>"
    name, diff = closest_preset(config, int(ds.images.shape[2]), int(ds.images.shape[1]))
    rows = [[k, json.dumps(mine), json.dumps(theirs)] for k, (mine, theirs) in sorted(diff.items())]
    intro = (f"<h2>Config</h2><p>The preset <b>{html.escape(str(name))}</b> with these changes "
             "(run.json holds every field):</p>")
    return intro + (table(["field", "this run", f"preset {name}"], rows) if rows else "<p>none</p>")


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def headline(files: RunFiles, ds) -> str:
    """The scores beside the baselines, IOR, time, device, versions and command."""
    report, run = files.eval, files.run or {}
    env = run.get("environment") or {}
    meta = ds.meta if ds is not None else {}
    dataset = meta.get("dataset") or run.get("dataset")
    ipc = meta.get("ipc") or run.get("ipc")
    parts = [f"<div class='headline'><h2>Headline</h2>"]
    if report:
        arch = report.get("arch", "conv")
        rows = [["distilled set (this run)", _pct(report.get("no_aug")), _pct(report.get("aug"))]]
        names = {"random": "random real images, same size", "herding": "herding's real images, same size"}
        for base, per_arch in (report.get("compare") or {}).items():
            scores = per_arch.get(arch) or next(iter(per_arch.values()), {})
            rows.append([names.get(base, base), _pct(scores.get("no_aug")), _pct(scores.get("aug"))])
        parts.append(f"<p>Test accuracy (%) of {report.get('models')} network(s) trained on each set alone "
                     f"({html.escape(str(arch))}, mean ± std):</p>"
                     + table(["set", "without augmentation", "with augmentation"], rows) + diverged_note(report))
        for base, per_arch in (report.get("ranking") or {}).items():
            r = per_arch.get(arch) or next(iter(per_arch.values()), {})
            ior = ", ".join(f"{r['ior'][s]['mean'] * 100:+.2f} points {label}" for s, label in
                            (("no_aug", "without"), ("aug", "with")) if s in r.get("ior", {}))
            parts.append(f"<p>Improvement over {html.escape(base)} real images (IOR, DD-Ranking): {ior} "
                         "augmentation.</p>")
        if not report.get("compare"):
            parts.append("<p>No baseline scored: <code>rcig eval FILE --compare random</code> scores random "
                         "real images of the same size beside the set.</p>")
    else:
        parts.append("<p>Not scored yet: <code>rcig eval DIR/distilled.safetensors --compare random --json "
                     "DIR/eval.json</code>, then <code>rcig report DIR</code>.</p>")
    facts = []
    if ds is not None:
        n, c, h, _ = ds.images.shape
        facts.append(f"{html.escape(str(dataset))}: {n} images of {h}x{h} px, {c} channel(s), "
                     f"{ds.labels.shape[1]} classes, {ipc} per class; outer step {meta.get('iteration', '-')}")
    steps = [r for r in files.log if "seconds" in r and "outer_loss" in r]
    extra = sum((r.get(k) or {}).get("seconds", 0) for r in files.log for k in ("tuning", "init"))
    evals = sum(r.get("eval_seconds", 0) for r in files.log)
    if steps:
        wall = sum(r["seconds"] for r in steps) + extra + evals
        facts.append(f"distillation: {minutes(wall)} of computing for {len(steps)} steps"
                     f" ({sum(r['seconds'] for r in steps) / len(steps):.1f} s per step)")
    if report and report.get("seconds") is not None:
        facts.append(f"scoring: {minutes(report['seconds'])}")
    if env:
        facts.append(f"device {html.escape(str(env.get('device')))} ({env.get('threads')} CPU threads); torch "
                     f"{html.escape(str(env.get('torch')))}, rcig {html.escape(str(env.get('rcig')))}, "
                     f"Python {html.escape(str(env.get('python')))}")
        if env.get("command"):
            facts.append(f"command: <code>{html.escape(env['command'])}</code>")
    parts.append("<ul>" + "".join(f"<li>{f}</li>" for f in facts) + "</ul></div>")
    return "".join(parts)


STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
         "table{border-collapse:collapse;font-size:13px;margin:.5em 0}"
         "td,th{border:1px solid #bbb;padding:2px 8px;text-align:right}td:first-child{text-align:left}"
         ".headline{background:#f4f7fb;border:1px solid #cdd;padding:.2em 1em;margin-bottom:1em}.warning{color:#a40}"
         ".charts svg{margin:4px}img{max-width:100%}code{background:#eee;padding:0 3px}")


def stale_scores(report: dict | None, meta: dict) -> str:
    """A warning when ``eval.json`` (``report``) scored the set at another outer step than the
    set in the folder (``meta``), else ""; such scores are left out of the report."""
    if not report or report.get("iteration") is None or meta.get("iteration") is None:
        return ""
    if report["iteration"] == meta["iteration"]:
        return ""
    return (f"<p class='warning'>eval.json holds the scores of this run's set at outer step {report['iteration']}; "
            f"the set is now at step {meta['iteration']}, so they are left out. Score it again with "
            "<code>rcig eval DIR/distilled.safetensors --compare random --json DIR/eval.json --force</code>.</p>")


def build_report(run_dir: str | Path) -> str:
    """The report of ``run_dir`` as one HTML string."""
    from rcig.io import load

    files = read_run(run_dir)
    ds = load(files.set_path) if files.set_path else None
    meta = ds.meta if ds is not None else {}
    stale = stale_scores(files.eval, meta)
    if stale:  # eval.json scored the set of another outer step (e.g. before the run was extended)
        files = files._replace(eval=None)
    dataset = meta.get("dataset") or (files.run or {}).get("dataset") or "?"
    ipc = meta.get("ipc") or (files.run or {}).get("ipc")
    title = f"rcig: {dataset}, {ipc} image{'s' if ipc != 1 else ''} per class ({Path(run_dir).resolve().name})"
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>", stale, headline(files, ds)]
    if ds is not None:
        parts.append(images_section(ds))
    else:
        parts.append("<p>No distilled set yet.</p>")
    parts.append(curves_section(files.log))
    if ds is not None:
        parts.append(labels_section(ds))
    parts += [eval_section(files.eval), config_section(files.run, ds), "</body></html>"]
    return "".join(parts)


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` atomically; returns its path."""
    from rcig.atomic import atomic_write_text

    return atomic_write_text(Path(run_dir) / "report.html", build_report(run_dir))
