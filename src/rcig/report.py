"""One self-contained HTML page per run: ``rcig report DIR`` writes ``DIR/report.html``.

It shows the distilled images mapped back to pixels (one row per class), the learned labels
as a heat map, the curves of ``log.jsonl`` (outer loss and accuracy, the inner and H^-1 g
learning rates, the meta-gradient norms per leaf, periodic eval scores), the eval tables of
``eval.json`` and the run's config (``run.json``). Every picture is a PNG embedded as a
base64 data URI, so the file can be mailed or archived alone. Plots need matplotlib
(``pip install 'rcig[report]'``); without it the curves and labels appear as plain tables.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import NamedTuple

from rcig.errors import RcigError

CURVES = (("outer_loss", "outer loss", False), ("outer_acc", "outer accuracy", False),
          ("inner_lr", "inner lr", True), ("hvp_lr", "H^-1 g lr", True))
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

def pyplot():
    """matplotlib.pyplot with the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def png_uri(image) -> str:
    """A PIL image or a matplotlib figure as a ``data:image/png;base64,...`` URI."""
    buffer = io.BytesIO()
    if hasattr(image, "savefig"):
        image.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    else:
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


def labels_section(ds, plt) -> str:
    labels = ds.labels.numpy()
    names = ds.meta.get("class_names") or [str(i) for i in range(labels.shape[1])]
    title = f"<h2>Learned labels</h2><p>{labels.shape[0]} images x {labels.shape[1]} classes.</p>"
    if plt is None:
        rows = [[i, names[int(row.argmax())]] + [f"{v:+.3f}" for v in row] for i, row in enumerate(labels)]
        return title + table(["image", "class"] + list(map(str, names)), rows)
    fig, ax = plt.subplots(figsize=(1.2 + 0.35 * labels.shape[1], 1.0 + 0.18 * labels.shape[0]))
    bound = float(abs(labels).max()) or 1.0
    shown = ax.imshow(labels, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(names)), [str(n) for n in names], rotation=90, fontsize=7)
    ax.set_ylabel("image")
    fig.colorbar(shown, ax=ax, fraction=0.05)
    uri = png_uri(fig)
    plt.close(fig)
    return title + img(uri, "learned labels heat map")


def series(log: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """name -> [(iteration, value)] for every curve the report draws."""
    out: dict[str, list[tuple[int, float]]] = {}

    def add(name, it, value):
        if isinstance(value, (int, float)) and value is not None:
            out.setdefault(name, []).append((it, float(value)))

    for r in log:
        it = r.get("iter", 0)
        for key, _, _ in CURVES:
            add(key, it, r.get(key))
        for leaf in NORM_LEAVES:
            add(f"grad_norm/{leaf}", it, (r.get("grad_norm") or {}).get(leaf))
        for setting, scores in (r.get("eval") or {}).items():
            if isinstance(scores, dict):
                add(f"eval/{setting}", it, scores.get("mean"))
    return out


def curves_section(log: list[dict], plt) -> str:
    data = series(log)
    if not data:
        return "<h2>Curves</h2><p>No log records.</p>"
    if plt is None:
        rows = [[name, len(v), f"{v[0][1]:.4g}", f"{min(x for _, x in v):.4g}", f"{max(x for _, x in v):.4g}",
                 f"{v[-1][1]:.4g} (iter {v[-1][0]})"] for name, v in data.items()]
        return ("<h2>Curves</h2><p>matplotlib is not installed (pip install 'rcig[report]'): the curves as "
                "numbers.</p>" + table(["series", "points", "first", "min", "max", "last"], rows))
    panels = [("outer loss", ["outer_loss"], False), ("accuracy", ["outer_acc", "eval/aug", "eval/no_aug"], False),
              ("learning rates", ["inner_lr", "hvp_lr"], True),
              ("meta-gradient norm per leaf", [f"grad_norm/{leaf}" for leaf in NORM_LEAVES], True)]
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    for ax, (title, names, log_scale) in zip(axes.flat, panels):
        for name in names:
            if data.get(name):
                xs, ys = zip(*data[name])
                ax.plot(xs, ys, label=name, marker="o" if len(xs) < 20 else None, markersize=3)
        if log_scale and any(y > 0 for n in names for _, y in data.get(n, [])):
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("iteration")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=7)
    fig.tight_layout()
    uri = png_uri(fig)
    plt.close(fig)
    return "<h2>Curves</h2>" + img(uri, "training curves")


def _pct(scores: dict | None) -> str:
    return f"{scores['mean'] * 100:.2f} ± {scores['std'] * 100:.2f}" if scores else "-"


def eval_section(report: dict | None) -> str:
    if not report:
        return "<h2>Evaluation</h2><p>No eval.json (score the set with: rcig eval FILE --json DIR/eval.json).</p>"
    archs = report.get("archs") or {report.get("arch", "conv"): {k: report[k] for k in ("no_aug", "aug") if k in report}}
    sets = {"distilled": archs, **(report.get("compare") or {})}
    header = ["architecture"] + [f"{name} {s}" for name in sets for s in ("no aug", "aug")]
    rows = [[arch] + [_pct(sets[name].get(arch, {}).get(s)) for name in sets for s in ("no_aug", "aug")]
            for arch in archs]
    out = (f"<h2>Evaluation</h2><p>{html.escape(str(report.get('dataset')))}, ipc {report.get('ipc')}, "
           f"{report.get('models')} network(s), steps {report.get('steps')}; test accuracy in %.</p>" + table(header, rows))
    for base, per_arch in (report.get("ranking") or {}).items():
        rows = [[arch, *(f"{r['ior'][s]['mean'] * 100:+.2f}" if s in r["ior"] else "-" for s in ("no_aug", "aug")),
                 f"{r['ars']['mean'] * 100:.2f}" if "ars" in r else "-"] for arch, r in per_arch.items()]
        out += (f"<h3>DD-Ranking against {html.escape(base)}</h3>"
                + table(["architecture", "IOR no aug (points)", "IOR aug (points)", "ARS (%)"], rows))
    return out


def config_section(run: dict | None, ds) -> str:
    doc = run if run is not None else (ds.meta if ds is not None else None)
    if doc is None:
        return "<h2>Config</h2><p>No run.json.</p>"
    return "<h2>Config</h2><pre>" + html.escape(json.dumps(doc, indent=2, default=str)) + "</pre>"


STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
         "table{border-collapse:collapse;font-size:13px;margin:.5em 0}"
         "td,th{border:1px solid #bbb;padding:2px 8px;text-align:right}"
         "pre{background:#f4f4f4;padding:1em;font-size:12px;overflow:auto}img{max-width:100%}")


def build_report(run_dir: str | Path) -> str:
    """The report of ``run_dir`` as one HTML string."""
    from rcig.io import load

    files = read_run(run_dir)
    plt = pyplot()
    ds = load(files.set_path) if files.set_path else None
    title = f"rcig run {Path(run_dir).resolve().name}"
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    if ds is not None:
        meta = ds.meta
        parts.append(f"<p>{html.escape(str(meta.get('dataset')))}: {len(ds.images)} images, ipc {meta.get('ipc')}, "
                     f"method {html.escape(str(meta.get('method')))}, iteration {meta.get('iteration', '-')} "
                     f"({html.escape(files.set_path.name)}).</p>")
        parts += [images_section(ds), labels_section(ds, plt)]
    else:
        parts.append("<p>No distilled set yet.</p>")
    parts += [curves_section(files.log, plt), eval_section(files.eval), config_section(files.run, ds),
              "</body></html>"]
    return "".join(parts)


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` atomically; returns its path."""
    from rcig.atomic import atomic_write

    data = build_report(run_dir).encode("utf-8")
    return atomic_write(Path(run_dir) / "report.html", lambda fh: fh.write(data))
