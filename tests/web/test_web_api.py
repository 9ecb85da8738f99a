"""web/bhvit.mjs stays in step with the C API: every C function it calls (its C_API table) is declared in
runtime/include/bhvit_runtime.h with exactly the signature the table quotes, and every call it makes through the
module (mod._bhvit_*) is in the table; runtime/CMakeLists.txt exports every BHVIT_API function to the page."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEADER = ROOT / "runtime" / "include" / "bhvit_runtime.h"
BINDING = ROOT / "web" / "bhvit.mjs"


def header_signatures() -> dict[str, str]:
    """name -> declaration (one line, spaces collapsed, without BHVIT_API and the semicolon)."""
    text = HEADER.read_text()
    out = {}
    for decl in re.findall(r"^BHVIT_API ([^;]*);", text, flags=re.M):
        name = re.search(r"(bhvit_\w+)\(", decl).group(1)
        out[name] = " ".join(decl.split())
    return out


def binding_table() -> dict[str, str]:
    """The C_API table of web/bhvit.mjs: name -> the quoted signature (string concatenations joined)."""
    text = BINDING.read_text()
    body = text[text.index("export const C_API = {") : text.index("};", text.index("export const C_API = {"))]
    out = {}
    for name, value in re.findall(r"(bhvit_\w+):\s*((?:\"[^\"]*\"\s*\+?\s*)+)", body):
        out[name] = "".join(re.findall(r"\"([^\"]*)\"", value))
    return out


def test_binding_signatures_match_header() -> None:
    header, table = header_signatures(), binding_table()
    assert table, "no C_API table in web/bhvit.mjs"
    for name, signature in table.items():
        assert name in header, f"web/bhvit.mjs calls {name}, which the header no longer declares"
        assert " ".join(signature.split()) == header[name], f"{name}: the header now says {header[name]!r}"


def test_binding_calls_only_its_table() -> None:
    table = binding_table()
    used = set(re.findall(r"\._(bhvit_\w+)\(", (ROOT / "web" / "bhvit.mjs").read_text()))
    used |= set(re.findall(r"\._(bhvit_\w+)\(", (ROOT / "web" / "app.mjs").read_text()))
    assert used and used <= set(table), f"called but not in C_API: {sorted(used - set(table))}"
    assert set(table) <= used, f"in C_API but never called: {sorted(set(table) - used)}"


def test_wasm_module_exports_the_header() -> None:
    """The page's module exports the header's BHVIT_API functions, read from the header by the CMake build."""
    cmake = (ROOT / "runtime" / "CMakeLists.txt").read_text()
    assert 'file(STRINGS "${BHVIT_HEADER}" api REGEX "^BHVIT_API ")' in cmake
    assert '"-sEXPORTED_FUNCTIONS=[${exports}]"' in cmake
    # every declaration the CMake regex reads names its function on the BHVIT_API line
    for line in HEADER.read_text().splitlines():
        if line.startswith("BHVIT_API "):
            assert re.search(r"(bhvit_[a-z0-9_]+)\(", line), line
