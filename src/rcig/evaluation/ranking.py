r"""DD-Ranking's scores (Li et al., "DD-Ranking: Rethinking the Evaluation of Dataset
Distillation", arXiv 2505.13300; NUS-HPC-AI-Lab/DD-Ranking, doc/introduction.md and
doc/metrics/). Accuracies are fractions in [0, 1]; "rdm" is a random-real subset of the same
size scored under the same protocol and seeds.

* improvement over random      IOR = Acc(syn) - Acc(rdm)                  (per setting)
* hard label recovery          HLR = Acc(real, hard) - Acc(syn, hard)
* label-robust score           a = w IOR - (1 - w) HLR,            LRS = N(a)
* augmentation-robust score    b = g (Acc(syn, aug) - Acc(rdm, aug))
                                   + (1 - g) (Acc(syn, no aug) - Acc(rdm, no aug)),  ARS = N(b)

with the normalisation ``N(x) = (e^x - e^-1) / (e - e^-1)``, which maps [-1, 1] onto [0, 1]
(DD-Ranking prints it as a percentage) and ``w = g = 0.5`` by default, as DD-Ranking's
leaderboard and its ``ars_lambda`` use. As DD-Ranking does, scores are computed per
evaluation round (here: per seed, network i of the set against network i of the baseline)
and then averaged. ``rcig eval --compare`` reports IOR and ARS; HLR and LRS need the
full-data accuracy and a hard-label run, which the command does not train. With
``--compare herding`` the same formulas use herding in place of random: rcig's extension,
not a DD-Ranking score.
"""

from __future__ import annotations

import math
from statistics import fmean, pstdev

WEIGHT = 0.5  # w of LRS and gamma of ARS


def normalise(x: float) -> float:
    """N(x) = (e^x - e^-1) / (e - e^-1): N(-1) = 0, N(0) = 0.269, N(1) = 1."""
    return (math.exp(x) - math.exp(-1)) / (math.e - math.exp(-1))


def ior(syn: float, rdm: float) -> float:
    return syn - rdm


def hlr(real_hard: float, syn_hard: float) -> float:
    return real_hard - syn_hard


def lrs(ior_value: float, hlr_value: float, w: float = WEIGHT) -> float:
    return normalise(w * ior_value - (1 - w) * hlr_value)


def ars(syn_aug: float, rdm_aug: float, syn_no_aug: float, rdm_no_aug: float, gamma: float = WEIGHT) -> float:
    return normalise(gamma * (syn_aug - rdm_aug) + (1 - gamma) * (syn_no_aug - rdm_no_aug))


def _mean_std(values: list[float]) -> dict:
    return {"mean": fmean(values), "std": pstdev(values) if len(values) > 1 else 0.0, "values": values}


def ranking_scores(syn: dict, rdm: dict, gamma: float = WEIGHT) -> dict:
    """IOR per setting and ARS (when both settings ran) from two protocol results
    ``{"no_aug": {"accs": [...]}, "aug": {...}}`` of the same seeds, per seed then averaged."""
    out: dict = {"ior": {}}
    for name in ("no_aug", "aug"):
        if name in syn and name in rdm:
            out["ior"][name] = _mean_std([ior(s, r) for s, r in zip(syn[name]["accs"], rdm[name]["accs"])])
    if all(k in syn and k in rdm for k in ("no_aug", "aug")):
        rows = zip(syn["aug"]["accs"], rdm["aug"]["accs"], syn["no_aug"]["accs"], rdm["no_aug"]["accs"])
        out["ars"] = _mean_std([ars(*row, gamma=gamma) for row in rows])
    return out
