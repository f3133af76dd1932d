"""Several architectures and baselines scored in one call, as ``rcig eval --arch a,b --compare random``.

What the reference release's ``eval.py`` changes per architecture is the network alone:
every network trains with Adam at ``eval_lr`` = 1e-4, the same 500-step warm-up and cosine
decay, the same step counts, MSE to the centred labels, with or without augmentation; batch
norm is one ``normalization`` switch (off by default; "batch" turns it on for the ConvNet).
So ``conv_bn`` is the protocol's ConvNet with batch norm (running statistics at test time),
and ``resnet18`` / ``vgg11`` / ``alexnet`` swap the network and keep every other setting.
"""

from __future__ import annotations

from dataclasses import replace

from rcig.errors import RcigError
from rcig.evaluation.protocol import ProtocolSettings, evaluate_support

ARCH_PROTOCOLS = {
    "conv": {"arch": "conv", "norm": "none"},
    "conv_bn": {"arch": "conv", "norm": "batch"},
    "resnet18": {"arch": "resnet18"},
    "vgg11": {"arch": "vgg11"},
    "alexnet": {"arch": "alexnet"},
}


def parse_list(text: str | None, known, what: str) -> tuple[str, ...]:
    """"a,b" -> ("a", "b"), each checked against ``known``; None or "" -> ()."""
    items = tuple(p.strip() for p in (text or "").split(",") if p.strip())
    unknown = [p for p in items if p not in known]
    if unknown:
        raise RcigError(f"unknown {what} '{unknown[0]}'; choose from {', '.join(known)}")
    if len(set(items)) != len(items):
        raise RcigError(f"{what} listed twice in '{text}'")
    return items


def arch_settings(base: ProtocolSettings, name: str) -> ProtocolSettings:
    return replace(base, **ARCH_PROTOCOLS[name])


def score_grid(supports: dict, archs: tuple[str, ...], base: ProtocolSettings, test_x, test_y, *, flip: bool,
               progress: bool, team=None) -> dict:
    """``{support name: {arch: {"no_aug": {...}, "aug": {...}}}}``: every support under every
    architecture's protocol, with the same seeds (each protocol's networks shared over ``team``)."""
    return {name: {arch: evaluate_support(images, labels, test_x, test_y, arch_settings(base, arch), flip=flip,
                                          progress=progress, team=team) for arch in archs}
            for name, (images, labels) in supports.items()}


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
