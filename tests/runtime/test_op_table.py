"""The op table (bhvit/runtime/ops.py) is the one list of ops and their fields: the native runtime, the oracle, the
packer and the docs agree with it."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator

import pytest
from safetensors.numpy import save
from support import ROOT, randomized

import bhvit.runtime as rt
from bhvit.engine import pack
from bhvit.engine.program import Program
from bhvit.runtime import ops, reference

needs_runtime = pytest.mark.skipif(not rt.available(), reason="libbhvit_runtime is not built (pip install -e .)")
# blinear writes either `out` or `pack`: without the one it has, the runtime asks for `out`
ONE_OF = {("blinear", ("out",)), ("blinear", ("pack",))}


@pytest.fixture(scope="module")
def programs() -> list[Program]:
    """The programs of binary models with LSQ and with GSB attention: every op kind, both quant variants."""
    return [pack(randomized("binary", quant)).program for quant in ("lsq", "gsb")]


def _refusal(program: Program, ops_list: list[dict]) -> str | None:
    """The runtime's message for the program with ``ops_list`` as its ops, or None when it loads."""
    meta = {**program.file_metadata(), "program": json.dumps({**program.program, "ops": ops_list})}
    try:
        rt.load_bytes(save(program.tensors, metadata=meta))
    except ValueError as err:
        assert "\n" not in str(err)
        return str(err)
    return None


def _present(fields: tuple[ops.Field, ...], obj: dict, path: tuple = ()) -> Iterator[tuple[tuple, ops.Field]]:
    """(path, field) of every field of the table that ``obj`` holds, objects' members included."""
    for f in fields:
        if f.name not in obj:
            continue
        if f.kind == ops.OBJECT and isinstance(obj[f.name], dict):
            members = f.variants.get(obj[f.name].get("kind"), ()) if f.variants else f.fields
            yield from _present(members, obj[f.name], (*path, f.name))
        yield (*path, f.name), f


def _without(ops_list: list[dict], index: int, path: tuple) -> list[dict]:
    edited = copy.deepcopy(ops_list)
    parent = edited[index]
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    return edited


def test_the_oracle_runs_every_op_of_the_table() -> None:
    assert set(reference.STEPS) == set(ops.OPS)


@needs_runtime
def test_the_runtime_knows_the_ops_of_the_table(programs: list[Program]) -> None:
    """Its "unknown op" refusal lists the ops it knows: those of the table, in the table's order."""
    msg = _refusal(programs[0], [{"op": "conv9"}])
    known = re.search(r"this runtime knows ([a-z_, ]+)\)", msg).group(1).split(", ")
    assert known == list(ops.OPS)


@needs_runtime
def test_the_runtime_requires_the_fields_the_table_requires(programs: list[Program]) -> None:
    """Every field of every op (and of its objects) in the packer's programs, removed in turn: the runtime
    refuses the file naming that field where the table says it is required, and loads it where optional."""
    checked = set()
    for program in programs:
        for i, op in enumerate(program.program["ops"]):
            for path, f in _present(ops.OPS[op["op"]].fields, op):
                if (op["op"], path) in checked:
                    continue
                checked.add((op["op"], path))
                msg = _refusal(program, _without(program.program["ops"], i, path))
                if (op["op"], path) in ONE_OF:
                    assert f"({op['op']}) field 'out': missing" in msg, msg
                elif f.optional:
                    assert msg is None, (op["op"], path, msg)
                else:
                    assert msg is not None and f"field '{path[-1]}': missing" in msg, (op["op"], path, msg)
    assert {kind for kind, _ in checked} == set(ops.OPS)
    assert len(checked) > 90  # every field of every kind, the nested ones too


@needs_runtime
def test_the_runtime_refuses_fields_the_table_lacks(programs: list[Program]) -> None:
    """A field the table does not list, in any op or any of its objects, is refused by name."""
    program = programs[1]
    for i, op in enumerate(program.program["ops"]):
        objects = [()] + [path for path, f in _present(ops.OPS[op["op"]].fields, op) if f.kind == ops.OBJECT]
        for path in objects:
            edited = copy.deepcopy(program.program["ops"])
            target = edited[i]
            for key in path:
                target = target[key]
            target["zzz"] = 1
            msg = _refusal(program, edited)
            assert msg is not None and "unknown field 'zzz'" in msg, (op["op"], path, msg)


def test_check_refuses_what_the_table_does_not_describe() -> None:
    """The packer's own check of every op it writes."""
    good = {"op": "sign_pack", "in": "x", "out": "xb"}
    assert ops.check(good) is ops.SIGN_PACK
    for bad, words in [
        ({"op": "conv9"}, "unknown op 'conv9'"),
        ({**good, "moev": "m"}, "unknown field 'moev'"),
        ({"op": "sign_pack", "in": "x"}, "field 'out' is required"),
        (
            {"op": "blinear", "in": "x", "in_features": 1, "out_features": 1, "weight": "w", "scale": "s", "pack": 3},
            "must be an object",
        ),
        ({"op": "linear", "in": "x", "out": "y", "weight": "w", "bias": None}, None),
    ]:
        if words is None:
            ops.check(bad)
            continue
        with pytest.raises(ValueError, match=words):
            ops.check(bad)


def test_check_refuses_unhashable_names_in_one_line(programs: list[Program]) -> None:
    """An op name or a variant ``kind`` that is a list (JSON allows it) is refused as unknown, not a TypeError."""
    with pytest.raises(ValueError, match=r"unknown op \['sign_pack'\]"):
        ops.check({"op": ["sign_pack"], "in": "x", "out": "xb"})
    attention = next(op for op in programs[0].program["ops"] if op["op"] == "window_attention")
    ops.check(attention)
    bad = copy.deepcopy(attention)
    bad["quant"]["kind"] = ["lsq"]
    with pytest.raises(ValueError, match="quant: kind must be one of"):
        ops.check(bad)


# ---- the docs ------------------------------------------------------------------------------------------------
def _table_rows(text: str, heading: str) -> list[list[str]]:
    """The cells of the markdown table that follows ``heading``."""
    section = text.split(heading, 1)[1]
    rows = []
    for line in section.splitlines():
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # after the header and its rule


def _fields(fields: tuple[ops.Field, ...]) -> set[str]:
    names = set()
    for f in fields:
        names.add(f.name)
        for members in [f.fields, *f.variants.values()]:
            names |= _fields(members)
    return names


def test_the_format_spec_lists_the_table() -> None:
    """docs/packed-format.md §5: one row per op, in the table's order, naming each field (window_attention's in
    §6)."""
    text = (ROOT / "docs" / "packed-format.md").read_text()
    rows = _table_rows(text, "## 5. Operations")
    assert [row[0].strip("`") for row in rows] == list(ops.OPS)
    section6 = text.split("## 6.", 1)[1].split("## 7.", 1)[0]
    objects = text.split("### RPReLU", 1)[1].split("## 5.", 1)[0]  # rprelu and post (§4)
    for row in rows:
        kind = ops.OPS[row[0].strip("`")]
        where = " ".join(row[1:]) + objects + (section6 if kind is ops.WINDOW_ATTENTION else "")
        missing = {name for name in _fields(kind.fields) if f"`{name}" not in where and f'"{name}"' not in where}
        assert not missing, (kind.name, missing)


def test_the_engine_notes_name_each_ops_three_places() -> None:
    """docs/engine.md's op table: every op, its torch place (attributes that exist), its runtime op (a class the
    named C++ file defines) and the kernels it calls (declared in runtime/kernels/kernels.h), and its oracle
    function (the one STEPS runs)."""
    import importlib

    rows = _table_rows((ROOT / "docs" / "engine.md").read_text(), "## Each op in three places")
    assert [row[0].strip("`") for row in rows] == list(ops.OPS)
    declared = (ROOT / "runtime" / "kernels" / "kernels.h").read_text()
    for name, torch_place, runtime_op, kernels, oracle in ((r[0].strip("`"), *r[1:5]) for r in rows):
        refs = re.findall(r"`(bhvit\.[\w.]+)`", torch_place)
        assert refs, name
        for ref in refs:
            module, _, attr = ref.rpartition(".")
            assert hasattr(importlib.import_module(module), attr), (name, ref)
        path, symbol = re.fullmatch(r"`([\w/.]+)` `(\w+)`", runtime_op).groups()
        assert re.search(rf"\bclass {symbol}\b", (ROOT / path).read_text()), (name, symbol)
        for kernel in re.findall(r"`(\w+)`", kernels):
            assert re.search(rf"\bvoid {kernel}\(", declared), (name, kernel)
        assert reference.STEPS[name] is getattr(reference, oracle.strip("`").removeprefix("reference.")), name


@pytest.mark.parametrize("doc", ["README.md", "docs/engine.md", "docs/packed-format.md", "docs/training.md"])
def test_the_docs_name_no_retired_piece(doc: str) -> None:
    """The retired version-1 pieces are named in the docs only as history, never as something to use."""
    text = (ROOT / doc).read_text()
    for gone in ("fuzz_packed", "fileformat", "bhvit.engine.kernels", "engine.set_num_threads", "use_isa"):
        assert gone not in text, (doc, gone)
