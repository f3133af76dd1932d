"""Flax checkpoints (msgpack) read without flax, jax or anything that can run code.

``flax.serialization`` writes a state dict as one msgpack map whose leaves are

* ext type 1, an ndarray: payload = msgpack of ``(shape, dtype name, C-order raw bytes)``;
* ext type 3, a numpy scalar: the same payload with ``shape == ()``;
* ext type 2, a Python complex: ``(real, imag)`` (refused here: no image is complex);
* arrays above 2**30 bytes split into a map ``{"__msgpack_chunked_array__": True,
  "shape": {"0": d0, ...}, "chunks": {"0": flat0, ...}}``;

and lists / tuples become maps keyed "0", "1", .... ``flax.training.checkpoints`` writes
that map to a file named ``checkpoint_<step>``. The RCIG and FRePo releases checkpoint a
train state whose ``params`` (and, for RCIG, ``ema_average``) hold the support:
``x_proto`` (N, H, W, C) in model space, ``y_proto`` (N, K) learned labels, ``log_temp``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rcig.errors import RcigError

NDARRAY, COMPLEX, NPSCALAR = 1, 2, 3
CHUNKED = "__msgpack_chunked_array__"
DTYPES = {name: np.dtype(name) for name in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16",
                                              "uint32", "uint64", "float16", "float32", "float64")}


class FlaxFormatError(ValueError):
    """Raised inside the msgpack hooks; turned into a one-line RcigError by the caller."""


def decode_array(payload: bytes) -> np.ndarray:
    """Ext payload ``msgpack((shape, dtype name, bytes))`` -> a read-only ndarray (little-endian
    host assumed, as flax writes ``tobytes``). bfloat16 is widened to float32 exactly."""
    import msgpack

    try:
        shape, name, raw = msgpack.unpackb(payload, raw=False)
    except (ValueError, TypeError, msgpack.ExtraData) as exc:
        raise FlaxFormatError(f"an ndarray leaf is malformed ({exc})") from None
    name = name.decode() if isinstance(name, bytes) else str(name)
    shape = tuple(int(d) for d in shape)
    if name == "bfloat16":  # the top 16 bits of a float32
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    if name not in DTYPES:
        raise FlaxFormatError(f"an ndarray leaf has dtype '{name}', which rcig does not read")
    array = np.frombuffer(raw, dtype=DTYPES[name])
    if array.size != int(np.prod(shape)):
        raise FlaxFormatError(f"an ndarray leaf holds {array.size} values for shape {shape}")
    return array.reshape(shape)


def ext_hook(code: int, payload: bytes) -> Any:
    if code == NDARRAY:
        return decode_array(payload)
    if code == NPSCALAR:
        return decode_array(payload)[()]
    if code == COMPLEX:
        raise FlaxFormatError("the checkpoint holds complex numbers, which no distilled image is")
    raise FlaxFormatError(f"unknown msgpack extension type {code}")


def unchunk(tree: Any) -> Any:
    """Reassemble flax's chunked arrays (see the module docstring), recursively."""
    if not isinstance(tree, dict):
        return tree
    if tree.get(CHUNKED):
        shape = tuple(int(tree["shape"][str(i)]) for i in range(len(tree["shape"])))
        chunks = [tree["chunks"][str(i)] for i in range(len(tree["chunks"]))]
        return np.concatenate(chunks).reshape(shape)
    return {k: unchunk(v) for k, v in tree.items()}


def read_state(path: str | Path) -> dict:
    """The state dict stored in a flax msgpack checkpoint at ``path``."""
    import msgpack

    data = Path(path).read_bytes()
    try:
        state = msgpack.unpackb(data, ext_hook=ext_hook, raw=False, strict_map_key=False)
    except FlaxFormatError as exc:
        raise RcigError(f"{path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not a flax checkpoint"
        raise RcigError(f"{path} is not a msgpack (flax) checkpoint ({str(exc).splitlines()[0][:100]})") from None
    if not isinstance(state, dict):
        raise RcigError(f"{path} holds a msgpack {type(state).__name__}, not a flax state dict")
    try:
        return unchunk(state)
    except (KeyError, TypeError, ValueError) as exc:
        raise RcigError(f"{path}: a chunked array is malformed ({exc})") from None


def keys_of(node: Any) -> str:
    return ", ".join(sorted(map(str, node))) if isinstance(node, dict) and node else "nothing"


def find_support(state: dict, where: str, path: str | Path) -> dict:
    """``state[where]`` holding ``x_proto`` and ``y_proto`` (also one level down, under
    ``params``); a one-line error naming what was found instead."""
    if where not in state:
        hint = " (an RCIG checkpoint keeps the EMA support there; --format frepo reads 'params')" \
            if where == "ema_average" else ""
        raise RcigError(f"{path}: no '{where}' in the checkpoint{hint}; found top-level keys: {keys_of(state)}")
    node = state[where]
    if isinstance(node, dict) and "x_proto" not in node and isinstance(node.get("params"), dict):
        node = node["params"]
    missing = [k for k in ("x_proto", "y_proto") if not isinstance(node, dict) or k not in node]
    if missing:
        raise RcigError(f"{path}: '{where}' has no {' or '.join(repr(m) for m in missing)}; found: {keys_of(node)}")
    return node
