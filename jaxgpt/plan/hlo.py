"""What a compiled program holds, read from its HLO text: the attention kernel and the collectives.

`kernels(text)` names the fused attention kernels found (cuDNN's custom calls, Pallas's Mosaic kernels on a
TPU, Triton kernels on a GPU). `collectives(text)` counts every all-gather, reduce-scatter, all-reduce,
all-to-all and collective-permute with the bytes it produces, each multiplied by how often it runs: an
operation inside a loop body (the gradient-accumulation scan) counts once per trip, using the trip count
XLA records on the loop (`known_trip_count`).
"""

from __future__ import annotations

import re
from collections import defaultdict

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
KERNELS = {  # custom-call target (prefix) -> the kernel family it belongs to
    "__cudnn$fmha": "cudnn",
    "tpu_custom_call": "pallas",
    "__gpu$xla.gpu.triton": "triton",
}
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
          "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = ")
_CALLS = re.compile(r"\b(body|calls|to_apply|condition|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')


def _split_shape(rest: str) -> tuple[str, str]:
    """(result shape, the text after it) of an instruction's right-hand side."""
    if not rest.startswith("("):
        shape, _, after = rest.partition(" ")
        return shape, after
    depth = 0
    for i, ch in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            return rest[:i + 1], rest[i + 2:]
    return rest, ""


def _top_level(shape: str) -> list[str]:
    """The top-level elements of a tuple shape "(a, (b, c), d)"; [shape] for an array."""
    shape = re.sub(r"/\*.*?\*/", "", shape)  # "/*index=5*/" markers
    if not shape.startswith("("):
        return [shape]
    parts, depth, start = [], 0, 1
    for i, ch in enumerate(shape):
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
            if depth == 0:
                parts.append(shape[start:i].strip())
        elif ch == "," and depth == 1:
            parts.append(shape[start:i].strip())
            start = i + 1
    return [p for p in parts if p]


def array_bytes(shape: str) -> list[int]:
    """Bytes of every array in a (possibly tuple) shape, in order."""
    out = []
    for dtype, dims in _ARRAY.findall(shape):
        if dtype in _BYTES:
            n = 1
            for d in filter(None, dims.split(",")):
                n *= int(d)
            out.append(n * _BYTES[dtype])
    return out


def _parse(text: str):
    """{computation: [(opcode, shape, rest of line)]}, the entry computation's name, and the call edges
    {callee: [(caller, multiplier)]}."""
    comps: dict[str, list] = defaultdict(list)
    edges: dict[str, list] = defaultdict(list)
    entry, current = None, None
    for line in text.splitlines():
        if current is None:
            m = _COMPUTATION.match(line)
            if m and "=" not in line.split("{")[0].split("(")[0]:
                current = m.group(1)
                if line.startswith("ENTRY"):
                    entry = current
            continue
        if line.strip() == "}":
            current = None
            continue
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        shape, after = _split_shape(line[m.end():])
        opcode = after.split("(", 1)[0].strip()
        comps[current].append((opcode, shape, after))
        trips = _TRIP.search(after)
        for kind, callee in _CALLS.findall(after):
            edges[callee].append((current, int(trips.group(1)) if kind == "body" and trips else 1))
        for group in _BRANCHES.findall(after):
            for callee in group.split(","):
                edges[callee.strip().lstrip("%")].append((current, 1))
    return comps, entry, edges


def _multiplicity(name: str, entry: str | None, edges, seen=()) -> int:
    """How many times a computation runs per call of the entry (the sum over its callers)."""
    if name == entry or name in seen:
        return 1
    callers = edges.get(name)
    if not callers:
        return 1
    return sum(m * _multiplicity(c, entry, edges, seen + (name,)) for c, m in callers)


def collectives(text: str) -> dict[str, dict[str, int]]:
    """{kind: {"count": per step, "bytes": produced per step per device}} of the program's collectives.

    An asynchronous pair (`all-gather-start` / `-done`) counts once, by its start; a start's result is a
    tuple (operands, outputs, ...), of which the outputs count.
    """
    comps, entry, edges = _parse(text)
    out: dict[str, dict[str, int]] = {}
    for comp, instructions in comps.items():
        times = None
        for opcode, shape, _ in instructions:
            kind = opcode.removesuffix("-start")
            if kind not in COLLECTIVES or opcode.endswith("-done"):
                continue
            if times is None:
                times = _multiplicity(comp, entry, edges)
            if opcode.endswith("-start") and kind != "all-reduce":
                parts = _top_level(shape)  # (operands, outputs, [context scalars])
                shape = parts[1] if len(parts) > 1 else shape
            sizes = array_bytes(shape)
            row = out.setdefault(kind, {"count": 0, "bytes": 0})
            row["count"] += times
            row["bytes"] += times * sum(sizes)
    return out


def kernels(text: str) -> dict[str, list[str]]:
    """{family: sorted custom-call targets} of the fused kernels the program calls."""
    found: dict[str, set] = defaultdict(set)
    for target in re.findall(r'custom_call_target="([^"]+)"', text):
        for prefix, family in KERNELS.items():
            if target.startswith(prefix):
                found[family].add(target)
    return {k: sorted(v) for k, v in found.items()}
