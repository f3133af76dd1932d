r"""How much memory a run needs, estimated before it starts, and the chunk size that fits.

A run holds, besides one outer step's working memory, the training set, the model pool and,
on a CPU, the Python process itself; the step's own memory is the activations its graphs
keep for the JVPs and backward passes, which ``chunk_rows`` bounds (:mod:`rcig.algorithm.recompute`).
In bytes, with ``a`` the bytes of one image's convolution outputs in float32 (0.92 MB at
depth 3 on 28 or 32 px, 3.9 MB at depth 4 on 64 px, 16 MB at depth 5 on 128 px)::

    total  = process + data + pool + step
    process = BASE + 4 P                              Python and torch (CPU only), the template network
    data   = N_train d 4  +  N_test d                 CPU: the training images in model space (float32), the
                                                      test images as loaded (uint8: in float32 only while an
                                                      evaluation scores, between steps)
           = N_train d 4                              CUDA: the training images the step draws from
    pool   = pool_size 3 P 4                          each member's weights and two Adam moments, once trained
    step   = max(graphs, parameters) + rows           its peak is at one of two moments
    prepare = BASE + (N_train + N_test) d             CPU, before the run (rcig.data.prepare, the fit not
              + max(fit, convert)                     cached): the loaded uint8 images and the ZCA fit's
                                                      d x d matrices or the conversion's float32 output
                                                      (rcig.data.preprocess.preparation_peak_bytes)

    graphs, one graph (chunk_rows null, or no fewer than a part's rows):
           = a (S n + Q n^2 + T t)                            + 4 P C + no-grad
    graphs, chunks of k rows (a part of at most k rows runs whole, as without chunks):
           = a (S n + Q n^2) [n <= k]  +  a T t [t <= k]
             + a R_s k [n > k]  +  a R_t k [t > k]  +  4 P C_k [n > k or t > k]  + 4 P C + no-grad
    no-grad    = 4 G L min(f, k)                          a forward without a graph, f rows at a time,
                                                          at most k in chunks
    parameters = 4 P C_p                                  the solvers' updates: theta0, delta, v, g_t,
                                                          moments, gradients, their new values
    rows       = 4 (n_all + t_all) D F  +  4 n_all^2 K    features, JVPs, cotangents; kernel matrices

with ``d = channels x H x W``, ``P`` the network's parameters, ``D`` its feature width, ``L``
its largest convolution output per image (floats), ``n`` the support rows that carry
gradients (flip and augmented copies included, at most the subsampling knobs
``inner_train_batch_size``, ``hinv_batch_size``, ``implicit_batch_size``,
``direct_batch_sizes[0]``, ``pool_train_batch_size``), ``n_all`` all support rows, ``t`` the
target rows with gradients (``direct_batch_sizes[1]``, at most ``target_batch_size`` =
``t_all``), and ``f`` the rows of one forward without gradients (``max_forward_batch_size``,
else the rows left over), where subsampling leaves any.

The constants (:class:`Fit`): S = 12.2, Q = 5.2e-3 / row, T = 4.1 (units of ``a``) were fitted
to the whole-graph peaks of ``benchmarks/speed.py`` (depth 3, width 128, 28 px gray and 32 px
RGB, 10 to 1,000 support rows, 1,024 target rows, 4.4 to 20.4 GB; within 4% each). R_s = 7.55,
R_t = 3.89 (units of ``a``), C_k = 13.6 and C_p = 18.6 (parameter copies) are :func:`fit`'s least
squares on the step's own memory (peak RSS minus the RSS just before the step) of the rows of
``benchmarks/memory.json``: one outer step on a 2-core CPU, width 128, depth 3 (28 px gray, 32
px RGB) and depths 4 and 5 (32 px RGB, 6.2 and 25 million parameters), 10 to 2,000 support rows,
256 to 1,024 target rows (448 of them in forwards without a graph in three runs), one graph
and chunks of 16 to 512 rows. The whole estimate is within -16% to +9% of every peak there (0.6
to 7.5 GB). In chunks a step keeps nothing of an activation's size per support row, but
parameter-sized sums (the gradients its chunks add into): a per-row term fitted to supports of
at most 200 rows instead put CIFAR-100 at 10 ipc (2,000 rows) 49% over its measured peak.
C = 1 (theta0 beside the graphs), F, K and G are counted from the code, not fitted (G = 4 is
within 10% of the no-grad forwards measured there). Larger images, larger supports and
datasets enter through ``a``, ``P``, ``D``, ``L``, the row counts and the data: an
extrapolation, checked (not fitted) on the paper's settings at their datasets' sizes in the
chunks a 16 GB machine takes (``benchmarks/memory_paper.json``: CIFAR-10 and CIFAR-100 at 50
ipc, Tiny-ImageNet at 1 and 10, ImageNette at 1 and 10; within -1% to +20% of each peak, the
largest error Tiny-ImageNet's chunks of 64 rows at depth 4).

A run's peak on a CPU is the larger of ``total`` and ``prepare``; the chunk size sets only
``total`` and is chosen after the data is prepared, so from ``total`` alone. ``prepare`` is
below ``total`` for the paper's settings (Tiny-ImageNet: 6.9 GB, the loaded images, the
float32 training images and a chunk, against 10.3 GB or more for the run; the fit's
eigendecomposition of the 12,288 x 12,288 covariance 4.8 GB) but not for every dataset (a few
large RGB images and a small network: the fit's d x d matrices set the peak).

:func:`choose_chunk_rows` turns the estimate into the run's chunk size: with ``chunk_rows``
"auto", none (one graph, the faster step) when the whole step fits in :data:`USABLE` of the
memory available, else the largest power of two whose estimate fits; a set value is kept.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from rcig.config import AUTO, Config
from rcig.data.preprocess import preparation_peak_bytes

GB = 1e9
BASE_GB = 0.25  # a CPU process with Python, torch and rcig imported (the RSS before a step, less data and pool)
USABLE = 0.9  # the share of the available memory an estimate may take: the rest is the estimate's margin
F, K, G = 4, 3, 4  # counted from the code (module docstring)


class Fit(NamedTuple):
    """The fitted constants of the step (module docstring): the activations' in units of ``a``,
    C, C_k and C_p in copies of the network's parameters."""

    S: float = 12.2  # per support row with gradients, one graph
    Q: float = 5.2e-3  # per squared support row, one graph
    T: float = 4.1  # per target row with gradients, one graph
    R_s: float = 7.55  # per row of a support chunk being recomputed (beyond R_t)
    R_t: float = 3.89  # per row of a target chunk being recomputed
    C_k: float = 13.6  # copies of the parameters a step in chunks adds (the sums its chunks add into)
    C: float = 1.0  # copies of the parameters beside the graphs (theta0; counted, not fitted)
    C_p: float = 18.6  # copies of the parameters at the step's parameter-heavy moments (the solvers' updates)


FIT = Fit()


class NetworkSize(NamedTuple):
    """The distillation ConvNet's sizes, counted on the meta device (nothing computed)."""

    activation_floats: int  # one image's convolution outputs
    largest_floats: int  # one image's largest convolution output
    params: int
    features: int  # D


class DataShape(NamedTuple):
    """What the estimate needs of a dataset."""

    channels: int
    image_size: int
    num_classes: int
    train_images: int
    test_images: int


class Rows(NamedTuple):
    """The row counts of a step (module docstring)."""

    support: int  # n: support rows with gradients
    target: int  # t: target rows with gradients
    support_all: int  # n_all
    target_all: int  # t_all
    no_grad: int  # f: rows of one forward without gradients (0: none)


class MemoryEstimate(NamedTuple):
    """A run's estimated peak memory (GB) on its device, by part."""

    gb: float  # the total
    process_gb: float
    data_gb: float
    pool_gb: float
    step_gb: float
    rows: Rows
    chunk_rows: int | None
    prepare_gb: float  # the data's preparation before the run (CPU; 0 on a GPU, which it does not use)


def network_size(cfg: Config, channels: int, image_size: int, num_classes: int) -> NetworkSize:
    """:class:`NetworkSize` of ``cfg``'s distillation ConvNet for this data shape."""
    from rcig.models import build_model

    outputs: list[int] = []
    with torch.device("meta"):
        model = build_model("conv", in_channels=channels, num_classes=num_classes, image_size=image_size,
                            depth=cfg.depth, width=cfg.width, norm=cfg.norm)
        for layer in model.modules():
            if isinstance(layer, torch.nn.Conv2d):
                layer.register_forward_hook(lambda _layer, _inputs, out: outputs.append(out[0].numel()))
        model(torch.empty(1, channels, image_size, image_size))
    return NetworkSize(sum(outputs), max(outputs), sum(p.numel() for p in model.parameters()),
                       model.feature_dim)


def step_rows(cfg: Config, ipc: int, num_classes: int) -> Rows:
    """The :class:`Rows` of a step of ``cfg`` on ``ipc`` images per class."""
    n_all = num_classes * ipc * (2 if cfg.flip else 1)
    if cfg.aug_per_pass and cfg.aug_repeats:
        n_all *= cfg.aug_copies
    knobs = [k for k in (cfg.inner_train_batch_size, cfg.hinv_batch_size, cfg.implicit_batch_size,
                         cfg.direct_batch_sizes[0], cfg.pool_train_batch_size) if k]
    n = min(n_all, max(knobs)) if knobs else n_all
    t_all = cfg.target_batch_size
    t = min(t_all, cfg.direct_batch_sizes[1] or t_all)
    left = max(n_all - min(n_all, cfg.direct_batch_sizes[0] or n_all), t_all - t)
    return Rows(n, t, n_all, t_all, min(left, cfg.max_forward_batch_size or left))


def fitted_terms(net: NetworkSize, rows: Rows, chunk_rows: int | None) -> Fit:
    """The GB each of :class:`Fit`'s constants multiplies in a step in chunks of ``chunk_rows``
    (None: one graph): ``sum(FIT_i term_i)`` is the step's fitted part (module docstring)."""
    n, t, k = rows.support, rows.target, chunk_rows
    a = 4 * net.activation_floats / GB
    support_whole = k is None or n <= k
    target_whole = k is None or t <= k
    return Fit(S=a * n * support_whole, Q=a * n * n * support_whole, T=a * t * target_whole,
               R_s=0.0 if support_whole else a * k, R_t=0.0 if target_whole else a * k,
               C_k=0.0 if support_whole and target_whole else 4 * net.params / GB, C=4 * net.params / GB,
               C_p=4 * net.params / GB)


class StepParts(NamedTuple):
    """The step's memory (GB) by moment: its peak is the larger of the two, plus ``rows``."""

    graphs: float  # the activations of its graphs, the parameters beside them, the no-grad forwards
    parameters: float  # the parameter copies of the solvers' updates
    rows: float  # per-row tensors: features, JVPs, cotangents, kernel matrices


def step_parts(net: NetworkSize, rows: Rows, chunk_rows: int | None, fit: Fit = FIT) -> StepParts:
    """:class:`StepParts` of a step (module docstring)."""
    terms = fitted_terms(net, rows, chunk_rows)
    graphs = sum(c * m for name, c, m in zip(Fit._fields, fit, terms) if name != "C_p")
    pieces = rows.no_grad if chunk_rows is None else min(rows.no_grad, chunk_rows)  # meta.forward_rows
    no_grad = 4 * G * net.largest_floats * pieces / GB
    per_row = 4 * ((rows.support_all + rows.target_all) * net.features * F + rows.support_all ** 2 * K) / GB
    return StepParts(graphs + no_grad, fit.C_p * terms.C_p, per_row)


def estimate(cfg: Config, shape: DataShape, ipc: int, chunk_rows: int | None, device: str = "cpu",
             pool_members: int | None = None, fit: Fit = FIT) -> MemoryEstimate:
    """The module docstring's estimate of a run of ``cfg`` on data of ``shape`` at ``ipc``, its
    step in chunks of ``chunk_rows`` (None: one graph), on a ``device`` of kind "cpu" or "cuda"
    (a GPU holds the training images, the pool and the step; the CPU also the test images as
    uint8 and the Python process: :class:`rcig.data.Prepared`). The pool is
    counted with ``pool_members`` trained members (None: all, as after its first steps)."""
    net = network_size(cfg, shape.channels, shape.image_size, shape.num_classes)
    rows = step_rows(cfg, ipc, shape.num_classes)
    pixels = shape.channels * shape.image_size ** 2
    on_cpu = device == "cpu"
    process = (BASE_GB if on_cpu else 0.0) + 4 * net.params / GB
    held = shape.train_images * 4 + (shape.test_images if on_cpu else 0)  # bytes per pixel: float32, uint8
    data = held * pixels / GB
    members = cfg.pool_size if pool_members is None else pool_members
    pool = members * 3 * 4 * net.params / GB
    parts = step_parts(net, rows, chunk_rows, fit)
    step = max(parts.graphs, parts.parameters) + parts.rows
    prepare = BASE_GB + preparation_peak_bytes(shape.train_images, shape.test_images, shape.channels,
                                               shape.image_size) / GB if on_cpu else 0.0
    return MemoryEstimate(process + data + pool + step, process, data, pool, step, rows, chunk_rows, prepare)


def chunkable(cfg: Config) -> bool:
    """Whether ``cfg``'s step can run in chunks (the linearised model, no batch norm)."""
    return cfg.linearize and cfg.norm != "batch"


FITS, OVER, NEVER = "fits", "over", "never"  # a ChunkChoice's verdict


class ChunkChoice(NamedTuple):
    """:func:`choose_chunk_rows`'s answer."""

    chunk_rows: int | None  # what the run takes (None: one graph)
    estimate: MemoryEstimate  # at that chunk size
    why: str  # a few words: the reason for the choice
    # FITS: the estimate fits the usable memory (or the memory is unknown); OVER: it does not,
    # a smaller chunk size would; NEVER: no chunk size would (nor one graph where chunks cannot run)
    verdict: str


def choose_chunk_rows(cfg: Config, shape: DataShape, ipc: int, available_gb: float | None,
                      device: str = "cpu") -> ChunkChoice:
    """The run's chunk size from ``cfg.chunk_rows`` and ``available_gb``, the memory the run
    may have on its device (None: unknown). "auto": one graph when the whole step's estimate
    fits in :data:`USABLE` x ``available_gb`` (or the memory is unknown, or the config cannot
    run in chunks), else the largest power of two below the step's largest part whose estimate
    fits, else 1 (verdict NEVER). A set value (rows or None) is kept."""
    usable = None if available_gb is None else USABLE * available_gb

    def at(k: int | None) -> MemoryEstimate:
        return estimate(cfg, shape, ipc, k, device)

    def choice(k: int | None, why: str, est: MemoryEstimate | None = None) -> ChunkChoice:
        est = est or at(k)
        if usable is None or est.gb <= usable:
            return ChunkChoice(k, est, why, FITS)
        least = at(1) if chunkable(cfg) else at(None)
        return ChunkChoice(k, est, why, OVER if least.gb <= usable else NEVER)

    if cfg.chunk_rows != AUTO:
        return choice(cfg.chunk_rows, "set in the config")
    whole = at(None)
    if usable is None:
        return choice(None, "the memory available is unknown", whole)
    if whole.gb <= usable or not chunkable(cfg):
        return choice(None, "the whole step fits" if whole.gb <= usable else
                      "chunks need linearize=true and norm none|instance", whole)
    rows = whole.rows
    k = 1 << (max(rows.support, rows.target) - 1).bit_length() - 1  # the largest power of two below the largest part
    while k > 1 and at(k).gb > usable:
        k //= 2
    return choice(k, f"the whole step would need {whole.gb:.1f} GB")


def chunk_text(chunk_rows: int | None) -> str:
    return "null (one graph)" if chunk_rows is None else str(chunk_rows)


def size_text(gb: float) -> str:
    """``gb`` for a reader: "1.4 GB", "350 MB"."""
    return f"{gb:.1f} GB" if gb >= 1 else f"{gb * 1000:.0f} MB"


def parts_text(est: MemoryEstimate) -> str:
    return f"data {size_text(est.data_gb)}, model pool {size_text(est.pool_gb)}, step {size_text(est.step_gb)}"


def report_line(choice: ChunkChoice, available_gb: float | None, where: str) -> str:
    """The one line a run prints before it starts: the estimate, the chunk size and why, the memory."""
    memory = f"{size_text(available_gb)} available" if available_gb is not None else "the memory available unknown"
    return (f"rcig: memory: a run needs about {size_text(choice.estimate.gb)} at its peak ({parts_text(choice.estimate)}); "
            f"chunk_rows={chunk_text(choice.chunk_rows)}: {choice.why}; {memory} ({where})")


SMALLER = ("--ipc, target_batch_size, pool_size, max_forward_batch_size (where chunks cannot run: in chunks the "
           "forwards without a graph take a chunk's rows) or the rows with gradients (--set "
           "inner_train_batch_size=K --set hinv_batch_size=K --set implicit_batch_size=K --set "
           "direct_batch_sizes=K,null --set pool_train_batch_size=K)")


def refusal(choice: ChunkChoice, available_gb: float) -> str:
    """The one-line reason a run that fits at no chunk size is refused (an RcigError's text)."""
    return (f"this run fits in memory at no chunk size: a step needs about {size_text(choice.estimate.gb)} "
            f"({parts_text(choice.estimate)}) with chunk_rows={chunk_text(choice.chunk_rows)} ({choice.why}) and "
            f"{USABLE:.0%} of the {size_text(available_gb)} available is {size_text(USABLE * available_gb)}; lower "
            f"{SMALLER}, or use a device with more memory")


def shortfall_warning(choice: ChunkChoice, available_gb: float) -> str:
    """A one-line warning for a set chunk size whose estimate does not fit where a smaller one would."""
    return (f"rcig: warning: a step may need about {size_text(choice.estimate.gb)} with chunk_rows="
            f"{chunk_text(choice.chunk_rows)} and {USABLE:.0%} of the {size_text(available_gb)} available is "
            f"{size_text(USABLE * available_gb)}; if the system stops the run, set chunk_rows=auto or a smaller size")


def fit(rows: Sequence[dict], free: Sequence[str] = ("R_s", "R_t", "C_k", "C_p"), rounds: int = 5) -> Fit:
    """Least-squares :class:`Fit` of the step's own memory (``peak_rss_mb - rss_before_step_mb``)
    over ``benchmarks/memory.json`` rows, less the parts counted from the code (per-row
    tensors, no-grad forwards) and the constants not ``free`` (:data:`FIT`'s, kept). A row's
    peak is one of the two moments of :class:`StepParts`: each round assigns every row to the
    larger under the constants so far and refits each moment's constants on its rows; of the
    constants the rounds visit (a row near the border of the two moments can make them
    alternate), the one with the least squared error. By default the chunked step's constants
    and C_p; ``free=Fit._fields`` refits the whole graph's too (``Q`` needs supports of many
    hundreds of rows in one graph to show)."""
    from rcig.config import load_preset

    cases = []
    for row in rows:
        cfg = load_preset(row["preset"], row["image_size"], row["channels"]).replace(
            **{**row["overrides"], "chunk_rows": row["chunk_rows"]})
        net = network_size(cfg, row["channels"], row["image_size"], row["classes"])
        counts = step_rows(cfg, row["ipc"], row["classes"])
        own = (row["peak_rss_mb"] - row["rss_before_step_mb"]) * 2 ** 20 / GB
        cases.append((net, counts, row["chunk_rows"], own))
    moments = {"graphs": [n for n in free if n != "C_p"], "parameters": [n for n in free if n == "C_p"]}

    def error(constants: Fit) -> float:
        return sum((max(p.graphs, p.parameters) + p.rows - own) ** 2
                   for p, own in ((step_parts(net, counts, k, constants), own) for net, counts, k, own in cases))

    current = FIT
    visited = [current]
    for _ in range(rounds):
        solution = {}
        for moment, names in moments.items():
            kept = current._replace(**{name: 0.0 for name in names})
            design, measured = [], []
            for net, counts, chunk_rows, own in cases:
                parts = step_parts(net, counts, chunk_rows, current)
                if names and (parts.graphs >= parts.parameters) == (moment == "graphs"):
                    terms = fitted_terms(net, counts, chunk_rows)
                    design.append([getattr(terms, name) for name in names])
                    measured.append(own - getattr(step_parts(net, counts, chunk_rows, kept), moment) - parts.rows)
            if design:
                x, y = torch.tensor(design, dtype=torch.float64), torch.tensor(measured, dtype=torch.float64)
                solution.update(zip(names, torch.linalg.lstsq(x, y[:, None]).solution[:, 0].tolist()))
        current = current._replace(**solution)
        visited.append(current)
    return min(visited[1:], key=error)


__all__ = ["BASE_GB", "FIT", "FITS", "NEVER", "OVER", "USABLE", "ChunkChoice", "DataShape", "Fit", "MemoryEstimate",
           "NetworkSize", "Rows", "StepParts", "choose_chunk_rows", "chunk_text", "chunkable", "estimate", "fit",
           "fitted_terms", "network_size", "parts_text", "refusal", "report_line", "shortfall_warning", "size_text",
           "step_parts", "step_rows"]
