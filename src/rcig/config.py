"""The distillation config: one validated, frozen dataclass, six presets from the paper.

A preset is a JSON file in ``rcig/presets/`` holding the fields where it differs from
:class:`Config`'s defaults (the paper's shared settings, defined there only). Any field
can then be overridden by name (``--set inner_lr=1e-4`` on the command line), and an
unknown or mistyped key is an error that names it and suggests the closest field.

Presets (the reference configs of the authors' release, less the shared defaults, with the
misspelt ``pool_model_6count`` key of the 64 px config read as ``pool_size``):

=================  ==========================================================
depth_3_no_flip    MNIST, Fashion-MNIST: 28 px gray, no flip
depth_3            CIFAR-10/100, CUB-200: 32 px RGB, flip trick
cifar100_50        CIFAR-100 at 50 ipc: subsampled support gradients (2,000)
depth_4_200        Tiny-ImageNet 1 ipc: 64 px, ReLU, 400 target rows
depth_4_big        Tiny-ImageNet 10 ipc: 64 px, subsampling 500/256
depth_5            ImageNette/ImageWoof: 128 px, l2_rate 0.05
fast               not the paper's: its preset for the data's shape ("extends": "paper")
                   distilled at width 64 and scored at 128, with 256 target images and
                   5 CG iterations per solve, for CPUs; support rate 3x decaying over
                   300 steps; init auto (herding at 1 ipc)
=================  ==========================================================

Two groups of knobs are off in every preset (the paper does not use them):

* Augmentation during distillation (the reference release's ``aug`` / ``aug_repeats``):
  with ``aug`` a list of transforms (e.g. ``["crop", "rotate", "translate", "cutout"]``,
  the names of ``test_augmentations``), every inner-solve step and every pool-network step
  sees the support with one fresh random transform per row, and ``aug_repeats`` extra
  meta-gradient passes, each on a fresh target batch and a fresh augmentation (direct and
  implicit gradient through the transforms, into the images), are averaged with equal
  weight with the ``normal_repeats`` unaugmented ones. The learning-rate tuning and the
  H^-1 g solve stay unaugmented, as in the reference.
  ``aug_per_pass`` (not the reference's): an augmented pass draws one transform per row
  and holds it through its inner solve, H^-1 g solve and both gradients (the pass then
  solves one fixed convex problem, so ``solver=cg`` can run it), and plain passes see no
  augmentation at all; ``normal_repeats=0, aug_repeats=1`` makes every pass augmented, and
  ``aug_copies`` = K makes an augmented pass's support K transformed copies of each row.
* The support's learning-rate schedule (:func:`rcig.algorithm.outer.lr_multiplier`), a
  boost for short CPU budgets and an anneal for the end of a run: the AdaBelief rate of ``x``
  and ``y`` starts at ``proto_lr_boost`` x ``proto_lr`` and decays (cosine) to ``proto_lr``
  over the first ``proto_lr_boost_steps`` outer steps; from there it anneals (cosine) to
  ``proto_lr_final`` x ``proto_lr``, reached at outer step ``proto_lr_final_step`` (counted
  from 1, so that step runs at it) and kept after it. The anneal's end is a step of its own,
  not ``steps``: the schedule is a function of the step alone, so a run stopped early
  (``--max-minutes``) has not finished annealing, and one extended with ``--resume --steps``
  goes on at ``proto_lr_final``, as a run given the larger ``steps`` from the start would.
  ``proto_lr_final_step`` 0 leaves the end to the run: its last step, ``steps`` for a run of
  a step count, and for a run under a time budget the step the budget is projected to end
  at, fixed once from the mean time of its first steps (:func:`rcig.timing.projected_last_step`)
  and kept in its checkpoint (a resume goes on with it; ``--resume --steps MORE`` does not
  stretch it). ``log_temp`` keeps ``temp_lr`` throughout (a single scalar already at 10x the rate; its
  rate is not what moves the images).
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, field, fields
from importlib import resources
from typing import Any, Callable, NamedTuple

from rcig.errors import RcigError

# The transforms rcig.augment implements, and the ones the evaluation protocol uses by default.
AUGMENTATIONS = ("flip", "color", "crop", "rotate", "translate", "cutout")
TEST_AUGMENTATIONS = ("crop", "rotate", "translate", "cutout")
NORMS = ("none", "batch", "instance")  # the ConvNet's normalisation layers (rcig.models)
NETWORK_INITS = ("reference", "torch")  # weight initialisation schemes (rcig.models.init)


class SolverTraits(NamedTuple):
    """What the config must know of an inner solver (the solvers: rcig.algorithm.inner)."""

    tunes_learning_rates: bool  # its steps take learning rates, tuned at the start and adapted during a run
    needs_fixed_quadratic: bool  # it solves one fixed quadratic: linearised, whole support, no redrawn augmentation


# The inner solvers by config name: the one list of them (rcig.algorithm.inner.make_solvers builds each).
SOLVERS = {
    "adam": SolverTraits(tunes_learning_rates=True, needs_fixed_quadratic=False),
    "cg": SolverTraits(tunes_learning_rates=False, needs_fixed_quadratic=True),
}
MAX_INT = 2 ** 31 - 1  # any larger count or size is a typo, and overflows torch's index types
AUTO = "auto"  # chunk_rows chosen by the run from the memory available (rcig.algorithm.memory.choose_chunk_rows)


# ------------------------------------------------------------------- JSON values

def is_int(value: Any) -> bool:
    """An integer that is not a bool (JSON's true is not 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ------------------------------------------------------------- the kinds of field

class Kind(NamedTuple):
    """The type of a Config field.

    ``read`` takes a JSON or Python value to the field's value (or raises ValueError);
    ``parse`` takes ``--set`` text to a JSON-like value, which ``read`` then checks.
    """

    words: str  # "an integer": what the error message says the value must be
    read: Callable[[Any], Any]
    parse: Callable[[str], Any]


def _read_int(value: Any) -> int:
    """An int; an integral float (``1e3`` in JSON) becomes one."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 53:
        return int(value)
    if not is_int(value):
        raise ValueError(value)
    return value


def _read_float(value: Any) -> float:
    if not is_number(value):
        raise ValueError(value)
    return float(value) if is_int(value) and abs(value) < 2 ** 53 else value


def _read_type(kind: type) -> Callable[[Any], Any]:
    def read(value: Any) -> Any:
        if not isinstance(value, kind):
            raise ValueError(value)
        return value
    return read


def _items(value: Any) -> list:
    """A list field's items: a list or tuple, or one bare item (``test_augmentations=crop``)."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _read_ints(value: Any) -> tuple[int, ...]:
    return tuple(_read_int(v) for v in _items(value))


def _read_names(value: Any) -> tuple[str, ...]:
    return tuple(_read_type(str)(v) for v in _items(value))


def _read_pair(value: Any) -> tuple[int | None, int | None]:
    items = _items(value)
    if len(items) != 2:
        raise ValueError(value)
    return tuple(None if v is None else _read_int(v) for v in items)


def _read_chunk(value: Any) -> int | str:
    """A row count, or :data:`AUTO`."""
    return value if value == AUTO else _read_int(value)


def _parse_json(raw: str) -> Any:
    """JSON text; else true/false/none/null in any case; else the text itself (which ``read`` rejects)."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return {"true": True, "false": False, "none": None, "null": None}.get(raw.lower(), raw)


def _parse_text(raw: str) -> str:
    """The text itself, or the same text JSON-quoted (what json.dumps writes: ``solver="cg"``)."""
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def _parse_list(item: Callable[[str], Any]) -> Callable[[str], Any]:
    """A JSON list, or comma-separated items each parsed by ``item`` (``crop,rotate``; ``4,null``)."""
    def parse(raw: str) -> Any:
        if raw.startswith("["):
            return _parse_json(raw)
        return [item(part.strip()) for part in raw.split(",") if part.strip()]
    return parse


INT = Kind("an integer", _read_int, _parse_json)
FLOAT = Kind("a number", _read_float, _parse_json)
BOOL = Kind("true or false", _read_type(bool), _parse_json)
STR = Kind("a string", _read_type(str), _parse_text)
INTS = Kind("a list of integers", _read_ints, _parse_list(_parse_json))
NAMES = Kind("a list of names", _read_names, _parse_list(_parse_text))
PAIR = Kind("[support_rows, target_rows] (two integers or nulls)", _read_pair, _parse_list(_parse_json))
CHUNK = Kind(f'a positive integer or "{AUTO}"', _read_chunk, _parse_json)


def knob(kind: Kind, default: Any, nullable: bool | None = None) -> Any:
    """A Config field of ``kind``; it may be null when ``nullable`` says so (None: exactly
    when its default is null)."""
    nullable = default is None if nullable is None else nullable
    return field(default=default, metadata={"kind": kind, "nullable": nullable})


@dataclass(frozen=True)
class Config:
    """Every knob of an RCIG run. Defaults are the paper's shared settings."""

    description: str = knob(STR, "")
    image_size: int | None = knob(INT, None)  # informational: the resolution the preset was made for

    # -- the distillation network ("Conv", width * 2**i channels per block) --
    depth: int = knob(INT, 3)
    width: int = knob(INT, 128)
    softplus_beta: float = knob(FLOAT, 60.0)  # softplus(beta z)/beta during distillation; 0 -> ReLU
    norm: str = knob(STR, "none")  # "none" | "batch" | "instance"
    # "reference": flax's lecun_normal kernels and zero biases, as the reference release;
    # "torch": torch's defaults (a ~27x smaller feature kernel at depth 3, see rcig.models.init)
    network_init: str = knob(STR, "reference")

    # -- the learned support --
    init: str = knob(STR, "real")  # "real": seeded real images per class | "herding": the herding baseline's |
    # "noise" | "auto": herding at 1 ipc, else real (rcig.algorithm.outer.start_images)
    learn_labels: bool = knob(BOOL, True)
    flip: bool = knob(BOOL, False)  # flip trick: the inner model sees [x, flip(x)] with labels [y, y]
    proto_lr: float = knob(FLOAT, 0.003)  # AdaBelief lr for images and labels
    proto_lr_boost: float = knob(FLOAT, 1.0)  # > 1: start x/y's lr at this multiple of proto_lr ...
    proto_lr_boost_steps: int = knob(INT, 0)  # ... and decay it (cosine) to proto_lr over these outer steps
    proto_lr_final: float = knob(FLOAT, 1.0)  # < 1: then anneal x/y's lr (cosine) to this multiple of proto_lr ...
    proto_lr_final_step: int = knob(INT, 0)  # ... reached at this outer step (from 1) and kept after it; 0: the run's last
    temp_lr: float = knob(FLOAT, 0.03)  # AdaBelief lr for log_temp
    ema_decay: float = knob(FLOAT, 0.99)

    # -- the convexified inner problem --
    linearize: bool = knob(BOOL, True)  # False: u(x) = f(x; theta0 + delta) - f(x; theta0) (not convex)
    l2_rate: float = knob(FLOAT, 0.0005)  # l2 = l2_rate * (number of classes * ipc)
    n_inner_steps: int = knob(INT, 20)
    n_hinv_steps: int = knob(INT, 20)
    # "adam": the reference's solves at tuned learning rates; "cg": conjugate gradients,
    # exact in fewer iterations, no learning rates (linearised model, full support only)
    solver: str = knob(STR, "adam")
    inner_lr: float | None = knob(FLOAT, None)  # None: tuned before distillation (start inner_lr_start)
    hvp_lr: float | None = knob(FLOAT, None)  # None: tuned before distillation (start hvp_lr_start)
    inner_lr_start: float = knob(FLOAT, 1e-5)
    hvp_lr_start: float = knob(FLOAT, 5e-5)
    lr_adapt_every: int = knob(INT, 50)

    # -- the outer problem --
    target_batch_size: int = knob(INT, 1024)

    # -- the model pool --
    pool_size: int = knob(INT, 30)
    pool_lr: float = knob(FLOAT, 0.00005)
    max_online_steps: int = knob(INT, 100)
    n_max_steps_pool: int = knob(INT, 16)  # a used network trains randint(1, n_max_steps_pool) steps

    # -- large supports (None: every row). Rows that get gradients; the rest come from
    # no-grad forwards in chunks of max_forward_batch_size (and of chunk_rows when that is smaller) --
    direct_batch_sizes: tuple[int | None, int | None] = knob(PAIR, (None, None))  # (support, target)
    implicit_batch_size: int | None = knob(INT, None)  # support rows the implicit gradient flows through
    hinv_batch_size: int | None = knob(INT, None)  # random support rows behind each H v of the H^-1 g solve
    inner_train_batch_size: int | None = knob(INT, None)  # random support rows per inner Adam step
    pool_train_batch_size: int | None = knob(INT, None)  # random support rows per pool-network step
    max_forward_batch_size: int | None = knob(INT, None)
    # rows per chunk of the rows that do get gradients, each chunk's forward recomputed for its
    # backward: peak memory set by this, not by the row count; the same gradients up to float
    # summation order. None: one graph over every row. "auto": the run chooses at its start from
    # the memory available (rcig.algorithm.memory.choose_chunk_rows): None when the whole step
    # fits, else the largest size that does; the run records the chosen value in its config
    chunk_rows: int | str | None = knob(CHUNK, AUTO, nullable=True)
    normal_repeats: int = knob(INT, 1)  # meta-gradients (fresh target batch each) averaged per step

    # -- augmentation during distillation (the reference's option; () = off, as in the paper) --
    aug: tuple[str, ...] = knob(NAMES, ())  # transforms of the support in the inner solve, pool training, aug passes
    aug_repeats: int = knob(INT, 0)  # extra augmented meta-gradient passes averaged with the normal_repeats ones
    aug_per_pass: bool = knob(BOOL, False)  # one transform per row held through a whole augmented pass (cg-compatible)
    aug_copies: int = knob(INT, 1)  # with aug_per_pass: an augmented pass's support is this many transformed copies

    # -- the run --
    steps: int = knob(INT, 1000)
    checkpoint_iters: tuple[int, ...] = knob(INTS, ())
    test_augmentations: tuple[str, ...] = knob(NAMES, TEST_AUGMENTATIONS)
    test_width: int | None = knob(INT, None)  # the protocol network's width; null: the distillation network's

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def tunes_learning_rates(self) -> bool:
        """Whether the solves take learning rates to tune and adapt (:data:`SOLVERS`)."""
        return SOLVERS[self.solver].tunes_learning_rates

    def protocol(self) -> dict[str, Any]:
        """The evaluation protocol a set made with this config is scored with by default (the
        set file's ``protocol``): a ConvNet of the distillation network's depth, of width
        ``test_width`` (null: the distillation network's width; a set distilled with a narrower
        network to save compute is scored on the paper's 128 with ``test_width=128``), and the
        test augmentations."""
        return {"arch": "conv", "depth": self.depth, "width": self.test_width or self.width,
                "augmentations": list(self.test_augmentations)}

    def replace(self, **overrides: Any) -> "Config":
        """A copy with some fields changed (validated, unknown names rejected)."""
        return from_dict({**self.to_dict(), **overrides})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


_FIELDS = {f.name: f for f in fields(Config)}


def _check_known(keys, where: str) -> None:
    for key in keys:
        if key not in _FIELDS:
            close = difflib.get_close_matches(key, list(_FIELDS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise RcigError(f"unknown config key '{key}' in {where}{hint}")


def _read(name: str, value: Any) -> Any:
    """``value`` as field ``name``'s value (its Kind's ``read``; null where the default is
    null); RcigError naming the field otherwise."""
    f = _FIELDS[name]
    kind, nullable = f.metadata["kind"], f.metadata["nullable"]
    try:
        if value is None and nullable:
            return None
        if value is None:
            raise ValueError(value)
        return kind.read(value)
    except ValueError:
        raise RcigError(f"bad config: {name} must be {kind.words}" + (" or null" if nullable else "")
                        + f", got {value!r}") from None


def from_dict(values: dict[str, Any], where: str = "config") -> Config:
    """Build a Config from plain values (JSON lists become tuples), every field's type checked."""
    if not isinstance(values, dict):
        raise RcigError(f"bad {where}: expected an object of config fields")
    _check_known(values, where)
    try:
        return Config(**{k: _read(k, v) for k, v in values.items()})
    except RcigError as exc:
        raise RcigError(str(exc).replace("bad config:", f"bad {where}:", 1)) from None


def _validate(cfg: Config) -> None:
    def need(cond: bool, message: str) -> None:
        if not cond:
            raise RcigError(f"bad config: {message}")

    # Types first. A value equal to its read (3.0 for an int field) passes here, so the
    # integer checks below still ask for is_int; numbers, bools, strings and lists are exact.
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        need(_read(f.name, value) == value, f"{f.name} must be {f.metadata['kind'].words}, got {value!r}")
        for item in (value if isinstance(value, tuple) else (value,)):
            need(not is_int(item) or abs(item) <= MAX_INT, f"{f.name} must be at most {MAX_INT}, got {value!r}")
    need(cfg.test_width is None or (is_int(cfg.test_width) and 0 < cfg.test_width <= 4096),
         f"test_width must be a positive integer (at most 4096) or null, got {cfg.test_width!r}")
    need(cfg.width <= 4096 and cfg.depth <= 8, f"width must be at most 4096 and depth at most 8, got {cfg.width} "
         f"and {cfg.depth}")
    positive_ints = ("depth", "width", "n_max_steps_pool", "pool_size", "max_online_steps",
                     "target_batch_size", "lr_adapt_every", "aug_copies")
    for name in positive_ints:
        value = getattr(cfg, name)
        need(is_int(value) and value > 0, f"{name} must be a positive integer, got {value!r}")
    for name in ("n_inner_steps", "n_hinv_steps", "steps", "normal_repeats", "aug_repeats", "proto_lr_boost_steps",
                 "proto_lr_final_step"):
        value = getattr(cfg, name)
        need(is_int(value) and value >= 0, f"{name} must be a non-negative integer, got {value!r}")
    for name in ("proto_lr", "temp_lr", "l2_rate", "pool_lr", "inner_lr_start", "hvp_lr_start"):
        value = getattr(cfg, name)
        need(value > 0, f"{name} must be > 0, got {value!r}")
    for name in ("inner_lr", "hvp_lr"):
        value = getattr(cfg, name)
        need(value is None or value > 0, f"{name} must be > 0 or null (tune it), got {value!r}")
    need(cfg.softplus_beta >= 0, f"softplus_beta must be >= 0 (0 means ReLU), got {cfg.softplus_beta!r}")
    need(0 <= cfg.ema_decay < 1, f"ema_decay must be in [0, 1), got {cfg.ema_decay!r}")
    need(cfg.norm in NORMS, f"norm must be {'|'.join(NORMS)}, got {cfg.norm!r}")
    need(cfg.network_init in NETWORK_INITS, f"network_init must be {'|'.join(NETWORK_INITS)}, got {cfg.network_init!r}")
    need(cfg.init in ("real", "herding", "noise", "auto"), f"init must be real|herding|noise|auto, got {cfg.init!r}")
    need(cfg.solver in SOLVERS, f"solver must be {'|'.join(SOLVERS)}, got {cfg.solver!r}")
    quadratic = SOLVERS[cfg.solver].needs_fixed_quadratic
    if quadratic:
        need(cfg.linearize is True,
             f"solver {cfg.solver} needs linearize=true (the non-linearised inner loss is not convex)")
        need(cfg.inner_train_batch_size is None and cfg.hinv_batch_size is None,
             f"solver {cfg.solver} needs the full support: set inner_train_batch_size and hinv_batch_size to null")
    for name, value in [("direct_batch_sizes[0]", cfg.direct_batch_sizes[0]),
                        ("direct_batch_sizes[1]", cfg.direct_batch_sizes[1]),
                        *[(n, getattr(cfg, n)) for n in ("implicit_batch_size", "hinv_batch_size",
                          "inner_train_batch_size", "pool_train_batch_size", "max_forward_batch_size")]]:
        need(value is None or (is_int(value) and value > 0), f"{name} must be a positive integer or null")
    need(cfg.chunk_rows in (None, AUTO) or (is_int(cfg.chunk_rows) and cfg.chunk_rows > 0),
         f'chunk_rows must be a positive integer, "{AUTO}" or null, got {cfg.chunk_rows!r}')
    if is_int(cfg.chunk_rows):
        need(cfg.linearize is True, "chunk_rows needs linearize=true (the non-linearised implicit gradient "
                                    "differentiates twice through the support)")
        need(cfg.norm != "batch", "chunk_rows needs norm none|instance (batch norm mixes the rows of a chunk)")
    need(all(i > 0 for i in cfg.checkpoint_iters), f"checkpoint_iters must be positive integers, got {list(cfg.checkpoint_iters)}")
    for name in ("test_augmentations", "aug"):
        names = getattr(cfg, name)
        unknown = [a for a in names if a not in AUGMENTATIONS]
        need(not unknown, f"unknown augmentation(s) {unknown} in {name}; choose from {list(AUGMENTATIONS)}")
    need(cfg.aug_repeats == 0 or cfg.aug, "aug_repeats needs aug: the list of transforms of the augmented passes")
    need(cfg.normal_repeats + cfg.aug_repeats > 0, "normal_repeats + aug_repeats must be at least 1 (passes per step)")
    need(not cfg.aug_per_pass or cfg.aug, "aug_per_pass needs aug: the list of transforms of the augmented passes")
    need(cfg.aug_copies == 1 or cfg.aug_per_pass, "aug_copies > 1 needs aug_per_pass=true")
    need(not (quadratic and cfg.aug and not cfg.aug_per_pass),
         f"solver {cfg.solver} needs a fixed inner problem: set aug_per_pass=true or aug to [] (augmentation otherwise "
         "redraws the support at every inner step)")
    need(cfg.proto_lr_boost >= 1, f"proto_lr_boost must be >= 1 (1 = off), got {cfg.proto_lr_boost!r}")
    need(cfg.proto_lr_boost == 1 or cfg.proto_lr_boost_steps > 0,
         "proto_lr_boost > 1 needs proto_lr_boost_steps > 0, the outer steps over which it decays")
    need(0 < cfg.proto_lr_final <= 1, f"proto_lr_final must be in (0, 1] (1 = off), got {cfg.proto_lr_final!r}")
    need(cfg.proto_lr_final == 1 or cfg.proto_lr_final_step == 0 or cfg.proto_lr_final_step > cfg.proto_lr_boost_steps,
         "proto_lr_final < 1 needs proto_lr_final_step > proto_lr_boost_steps, the outer step at which the anneal "
         "after the boost ends (or 0: the run's last step)")


# ---------------------------------------------------------------------------- presets

def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("rcig.presets").iterdir() if p.name.endswith(".json"))


def load_preset(name: str, image_size: int | None = None, channels: int | None = None) -> Config:
    """The config ``name`` (see module docstring), validated.

    A preset file may start from another: ``"extends": "depth_3"`` takes that preset and
    changes the fields it lists; ``"extends": "paper"`` takes the paper's preset for the
    data's shape (:func:`default_preset_name`), so it needs ``image_size`` and ``channels``.
    """
    if name not in preset_names():
        raise RcigError(f"unknown preset '{name}'; choose from {', '.join(preset_names())}")
    text = resources.files("rcig.presets").joinpath(f"{name}.json").read_text()
    data = json.loads(text)
    base = data.pop("extends", None)
    if base is None:
        return from_dict(data, where=f"preset {name}")
    if base == "paper":
        if image_size is None or channels is None:
            raise RcigError(f"preset {name} extends the paper's preset for the data's shape: give its image size and channels")
        base = default_preset_name(image_size, channels)
    return from_dict({**load_preset(base).to_dict(), **data}, where=f"preset {name}")


def depth_for_image_size(image_size: int) -> int:
    """The ConvNet depth the paper uses at a resolution: 5 from 128 px, 4 from 64 px, else 3.

    The one rule for the default preset and the herding baseline's feature network. Sizes
    between the paper's (32, 64, 128) take the depth of the next smaller one: 48 px is depth 3.
    """
    return 5 if image_size >= 128 else 4 if image_size >= 64 else 3


def paper_preset(image_size: int, channels: int) -> Config:
    """The paper's preset for a dataset shape (:func:`default_preset_name`)."""
    return load_preset(default_preset_name(image_size, channels), image_size, channels)


def default_preset_name(image_size: int, channels: int) -> str:
    """The paper's preset for a dataset shape: gray -> depth_3_no_flip, RGB 32 -> depth_3,
    64 px -> depth_4_200, 128 px -> depth_5 (by :func:`depth_for_image_size`)."""
    depth = depth_for_image_size(image_size)
    if depth == 5:
        return "depth_5"
    if depth == 4:
        return "depth_4_200"
    return "depth_3_no_flip" if channels == 1 else "depth_3"


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings into a dict, each value read by its field's type: JSON for
    numbers, booleans, null and lists; the text itself (or a JSON string, ``solver="cg"``) for
    string fields; for list fields
    also one bare item (``test_augmentations=crop``) or comma-separated items (``crop,rotate``)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise RcigError(f"bad override '{item}': expected key=value")
        _check_known([key], "overrides")
        out[key] = _FIELDS[key].metadata["kind"].parse(raw.strip())
    return out


__all__ = ["AUGMENTATIONS", "AUTO", "MAX_INT", "NETWORK_INITS", "NORMS", "SOLVERS", "TEST_AUGMENTATIONS", "Config",
           "SolverTraits", "Kind", "default_preset_name", "depth_for_image_size",
           "from_dict", "is_int", "is_number", "knob", "load_preset", "paper_preset", "parse_overrides", "preset_names"]
