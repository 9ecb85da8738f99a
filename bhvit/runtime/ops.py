"""The operations of a packed program: every op kind and its fields, in one table (docs/packed-format.md §4–§6).

Numpy-free and torch-free. Everything that must agree on the set of ops reads this table: the oracle
(:mod:`bhvit.runtime.reference`) dispatches by it, the packer's program builder (:mod:`bhvit.engine.program`)
checks every op it writes against it, the fuzzers (``tests/fuzz``) choose hostile values by each field's kind,
and tests check the native runtime (the ops its "unknown op" error lists, the fields it requires and refuses)
and the docs (the op tables of docs/packed-format.md and docs/engine.md) against it.

    >>> from bhvit.runtime import ops
    >>> ops.OPS["blinear"].field("pack", "mean_r").kind
    'int'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# What a field holds (§4, §5): a register name, a tensor name, a JSON value, or an object of fields.
REGISTER = "register"
TENSOR = "tensor"
INT = "int"
INTS = "ints"  # a list of integers (a kernel's [kh, kw], shift_add's kernels)
NUMBER = "number"  # a finite number > 0 (eps, score_divisor)
NUMBERS = "numbers"  # a list of finite numbers (GSB thresholds)
BOOL = "bool"
CHOICE = "choice"  # one string of ``choices``
OBJECT = "object"

FLOAT, BITS = "float", "bits"  # the two kinds of register (§4)


@dataclass(frozen=True)
class Field:
    """One field of an op: its name and kind, whether it may be null or absent (``?`` in §5), for a register
    the kind it holds and whether the op (re)defines it, for a choice its values, for an object its fields
    (or, selected by the object's ``kind`` choice, one set of fields per variant)."""

    name: str
    kind: str
    optional: bool = False
    holds: str = ""  # REGISTER: FLOAT or BITS
    writes: bool = False  # REGISTER: the op defines it (else reads it)
    choices: tuple[str, ...] = ()
    fields: tuple[Field, ...] = ()
    variants: Mapping[str, tuple[Field, ...]] = field(default_factory=dict)

    def member(self, name: str, variant: str | None = None) -> Field | None:
        """The object's field ``name`` (in the fields of ``variant`` when the object has variants)."""
        pool = self.variants.get(variant or "", ()) if self.variants else self.fields
        return next((f for f in pool if f.name == name), None)


@dataclass(frozen=True)
class OpKind:
    """An op kind: its name (the ``op`` field) and its fields. ``accumulates``: it always adds into ``out``
    (bconv and blinear add only with ``"accumulate": true``); ``in_place``: its ``out`` may be its ``in`` (for
    every other op the output registers differ from the inputs, §4)."""

    name: str
    fields: tuple[Field, ...]
    accumulates: bool = False
    in_place: bool = False

    def field(self, *path: str, variant: str | None = None) -> Field | None:
        """The field at ``path`` (``field("pack", "mean_r")``); ``variant`` picks an object's variant."""
        found = next((f for f in self.fields if f.name == path[0]), None)
        for name in path[1:]:
            found = found.member(name, variant) if found is not None else None
        return found

    def field_of(self, op: Mapping[str, Any], path: tuple[Any, ...]) -> Field | None:
        """The field at ``path`` of the op object ``op`` (list indices in the path are skipped; an object's
        variant is the value of its ``kind``)."""
        names = [p for p in path if isinstance(p, str)]
        found = next((f for f in self.fields if f.name == names[0]), None) if names else None
        at: Any = op.get(names[0]) if names else None
        for name in names[1:]:
            if found is None:
                return None
            found = found.member(name, at.get("kind") if isinstance(at, Mapping) else None)
            at = at.get(name) if isinstance(at, Mapping) else None
        return found


# ---- field helpers --------------------------------------------------------------------------------------
def reg(name: str, holds: str = FLOAT, *, writes: bool = False, optional: bool = False) -> Field:
    return Field(name, REGISTER, optional, holds=holds, writes=writes)


def tensor(name: str, optional: bool = False) -> Field:
    return Field(name, TENSOR, optional)


def value(name: str, kind: str, optional: bool = False, choices: tuple[str, ...] = ()) -> Field:
    return Field(name, kind, optional, choices=choices)


def obj(name: str, *fields: Field, optional: bool = False) -> Field:
    return Field(name, OBJECT, optional, fields=fields)


def variants(name: str, **kinds: tuple[Field, ...]) -> Field:
    """An object whose ``kind`` (one of ``kinds``) selects the rest of its fields."""
    kind = value("kind", CHOICE, choices=tuple(kinds))
    return Field(name, OBJECT, variants={k: (kind, *fields) for k, fields in kinds.items()})


def rprelu(optional: bool) -> Field:
    """``{"slope", "b1", "b2"}``: ``RPReLU(z) = (z − b1 > 0 ? z − b1 : slope·(z − b1)) + b2`` (§4)."""
    return obj("rprelu", tensor("slope"), tensor("b1"), tensor("b2"), optional=optional)


IN, OUT = reg("in"), reg("out", writes=True)
# the binary layers' output transform (§4): scale·dot + bias, + residual, RPReLU, post, accumulate
TRANSFORM = (
    tensor("scale"),
    tensor("bias", optional=True),
    reg("residual", optional=True),
    rprelu(optional=True),
    obj("post", tensor("scale"), tensor("bias"), optional=True),
    value("accumulate", BOOL, optional=True),
)
BRANCH = (tensor("move"), tensor("weight"), tensor("scale"), tensor("bias", True), rprelu(False), tensor("move2"))
QUANT = variants(
    "quant",
    lsq=(tensor("step"), tensor("zero"), value("grad_scale", BOOL)),
    gsb=(tensor("alpha"), tensor("weights"), value("thresholds", NUMBERS)),
)

# ---- the table (§5, §6), in the order of docs/packed-format.md ------------------------------------------
PATCH_CONV = OpKind("patch_conv", (IN, OUT, value("kernel", INT), tensor("weight"), tensor("bias", True)))
AFFINE = OpKind(
    "affine",
    (
        IN,
        OUT,
        tensor("scale", True),
        tensor("bias", True),
        value("act", CHOICE, optional=True, choices=("none", "gelu")),
        tensor("add", True),
    ),
    in_place=True,
)
SIGN_PACK = OpKind("sign_pack", (IN, reg("out", BITS, writes=True), tensor("move", True)))
AVG_POOL = OpKind("avg_pool", (IN, OUT, value("kernel", INT)))
BCONV = OpKind(
    "bconv",
    (
        reg("in", BITS),
        OUT,
        *(value(n, INT) for n in ("in_channels", "out_channels")),
        value("kernel", INTS),
        *(value(n, INT) for n in ("stride", "padding", "dilation", "groups")),
        tensor("weight"),
        *TRANSFORM,
    ),
)
BLINEAR = OpKind(
    "blinear",
    (
        reg("in", BITS),
        reg("out", writes=True, optional=True),  # exactly one of out and pack
        value("in_features", INT),
        value("out_features", INT),
        tensor("weight"),
        *TRANSFORM,
        obj(
            "pack",
            reg("out", BITS, writes=True),
            tensor("move", True),
            value("mean_r", INT),
            reg("means", writes=True),
            optional=True,
        ),
    ),
)
SHIFT_ADD = OpKind("shift_add", (IN, OUT, value("kernels", INTS), tensor("scales")), accumulates=True)
WINDOW_ATTENTION = OpKind(
    "window_attention",
    (
        IN,
        OUT,
        *(value(n, INT) for n in ("window", "heads", "pool_padding")),
        tensor("pool_alpha"),
        obj("token_norm", tensor("weight"), tensor("bias"), value("eps", NUMBER)),
        *(obj(n, *BRANCH) for n in "qkv"),
        value("score_divisor", NUMBER),
        QUANT,
        obj("ctx", tensor("scale"), tensor("bias"), rprelu(False)),
        tensor("mix"),
    ),
)
MEAN_TOKENS = OpKind("mean_tokens", (IN, OUT))
LINEAR = OpKind("linear", (IN, OUT, tensor("weight"), tensor("bias", True)))

OPS: dict[str, OpKind] = {
    k.name: k
    for k in (
        PATCH_CONV,
        AFFINE,
        SIGN_PACK,
        AVG_POOL,
        BCONV,
        BLINEAR,
        SHIFT_ADD,
        WINDOW_ATTENTION,
        MEAN_TOKENS,
        LINEAR,
    )
}


def check(op: Mapping[str, Any]) -> OpKind:
    """The kind of ``op`` (a program op object) after checking its fields against the table: a known ``op``,
    every required field present and not null, no unknown field (nested objects too). Raises ValueError
    naming the field (the packer's check of what it writes; the runtime checks files itself)."""
    name = op.get("op")
    kind = OPS.get(name) if isinstance(name, str) else None  # a list or dict name is unhashable
    if kind is None:
        raise ValueError(f"unknown op {op.get('op')!r} (the ops are {', '.join(OPS)})")
    _check_fields(op, kind.fields, f"op {kind.name}", {"op"})
    return kind


def _check_fields(given: Mapping[str, Any], fields: tuple[Field, ...], where: str, extra: set[str]) -> None:
    """``given`` (an op or one of its objects) holds exactly ``fields`` (and the keys ``extra``)."""
    unknown = sorted(set(given) - {f.name for f in fields} - extra)
    if unknown:
        raise ValueError(f"{where}: unknown field {unknown[0]!r}")
    for f in fields:
        member = given.get(f.name)
        if member is None:
            if not f.optional:
                raise ValueError(f"{where}: field {f.name!r} is required")
            continue
        if f.kind == OBJECT:
            if not isinstance(member, Mapping):
                raise ValueError(f"{where}: field {f.name!r} must be an object")
            variant = member.get("kind")
            members = (f.variants.get(variant, ()) if isinstance(variant, str) else ()) if f.variants else f.fields
            if f.variants and not members:
                raise ValueError(f"{where}.{f.name}: kind must be one of {list(f.variants)}")
            _check_fields(member, members, f"{where}.{f.name}", set())
