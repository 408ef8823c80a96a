"""Where compiled programs spend their time on XLA:CPU: the ops of a jax profile, by phase, with each op's
kind and its jax source, read from XLA's dump of the optimised HLO.

    profile = op_profile.OpProfile()      # before jax's backend starts: XLA then dumps every program
    with profile.phase("update"):         # around calls whose results are blocked on
        jax.block_until_ready(update(...))
    profile.print_summary()

An op's time is the sum of its thunk's trace events (XLA:CPU's ThunkExecutor, one per HLO instruction
run); control flow (while, conditional, call) is left out, its body's ops count on their own. Kinds:
"matmul" (a dot or convolution, alone or fused), else a fusion named by the notable ops inside it
(reduce, dynamic-update-slice, gather, ...; "elementwise" when none) or the op's own opcode (copy,
transpose, ...). Shares are of the phase's op time, which differs from its wall time by what runs
outside ops (dispatch, the host) and by ops overlapping on several threads.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import glob
import gzip
import json
import os
import re
import tempfile
import time

import jax

from instructjax import cpu_runtime

CONTROL_FLOW = {"while", "conditional", "call"}
NOTABLE = ("reduce", "reduce-window", "dynamic-update-slice", "dynamic-slice", "gather", "scatter", "sort",
           "transpose", "copy", "concatenate", "pad", "select-and-scatter", "rng-bit-generator")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*? ([a-z][\w\-]*)\(")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition|branch_computations)=\{?%?([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


@dataclasses.dataclass(frozen=True)
class Op:
    """One HLO instruction of an optimised program: its opcode, kind and the jax op it came from."""
    opcode: str
    kind: str
    source: str


def read_hlo_dump(dump_dir: str) -> dict[tuple[str, str], Op]:
    """(module name, instruction name) -> Op for every `*after_optimizations.txt` program in `dump_dir` (a
    module compiled more than once under one name is read from its last dump)."""
    ops = {}
    for path in sorted(glob.glob(os.path.join(dump_dir, "*after_optimizations.txt"))):
        with open(path) as f:
            text = f.read()
        module = re.match(r"HloModule ([\w.\-]+)", text).group(1)
        opcodes, calls, lines, first_source = collections.defaultdict(set), collections.defaultdict(set), {}, {}
        computation = None
        for line in text.splitlines():
            header = _COMPUTATION.match(line)
            if header:
                computation = header.group(1)
                continue
            instruction = _INSTRUCTION.match(line)
            if instruction and computation:
                name, opcode = instruction.groups()
                opcodes[computation].add(opcode)
                source = _OP_NAME.search(line)
                if source and computation not in first_source:
                    first_source[computation] = source.group(1)
                called = _CALLS.findall(line)
                calls[computation].update(called)
                lines[name] = (opcode, called, line)
        for name, (opcode, called, line) in lines.items():
            inside, inner_source = _reachable(called, opcodes, calls, first_source)
            source = _OP_NAME.search(line)
            ops[(module, name)] = Op(opcode, _kind(opcode, inside), source.group(1) if source else inner_source)
    return ops


def _reachable(computations, opcodes, calls, first_source) -> tuple[set[str], str]:
    """The opcodes in `computations` and the computations they call, and the first jax source among them."""
    seen, todo, found, source = set(), list(computations), set(), ""
    while todo:
        c = todo.pop()
        if c not in seen:
            seen.add(c)
            found |= opcodes.get(c, set())
            source = source or first_source.get(c, "")
            todo.extend(calls.get(c, ()))
    return found, source


def source_group(op_name: str, op: Op) -> str:
    """What an op does, the same for every layer: its jax source without the program's name and call scopes,
    a loop body's scope as `loop/` (a decode step, a microbatch, ...) and layer numbers as `layers_*`; the
    op's name without its number where XLA kept no source."""
    parts = op.source.split("/")[1:] if op.source.startswith("jit(") else op.source.split("/")
    parts = ["loop" if part == "body" else part for part in parts
             if part not in ("while", "closed_call", "checkpoint", "remat")]
    return re.sub(r"layers_\d+", "layers_*", "/".join(parts)) or re.sub(r"\.\d+$", "", op_name)


def _kind(opcode: str, inside: set[str]) -> str:
    if opcode in ("dot", "convolution") or inside & {"dot", "convolution"}:
        return "matmul"
    if opcode != "fusion":
        return opcode
    notable = [op for op in NOTABLE if op in inside]
    return "fusion: " + (", ".join(notable) if notable else "elementwise")


def read_trace(trace_dir: str) -> dict[tuple[str, str], tuple[float, int]]:
    """(module, op) -> (seconds, runs) summed over the thunk events of the perfetto trace in `trace_dir`."""
    (path,) = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    with gzip.open(path) as f:
        events = json.load(f)["traceEvents"]
    totals = collections.defaultdict(lambda: [0.0, 0])
    for event in events:
        args = event.get("args", {})
        if event.get("ph") == "X" and "hlo_op" in args:
            total = totals[(args.get("hlo_module", ""), args["hlo_op"])]
            total[0] += event["dur"] / 1e6
            total[1] += 1
    return {key: (seconds, runs) for key, (seconds, runs) in totals.items()}


class OpProfile:
    """Profiles named phases (`phase`) and prints where each one's op time went (`print_summary`). Create
    it before jax's backend starts: it adds XLA's HLO dump to `XLA_FLAGS` (into `dump_dir`, a temporary
    directory by default)."""

    def __init__(self, dump_dir: str | None = None):
        self._tmp = tempfile.TemporaryDirectory()
        self.dump_dir = dump_dir or os.path.join(self._tmp.name, "hlo")
        cpu_runtime.add_xla_flags(flags={"xla_dump_to": self.dump_dir, "xla_dump_hlo_as_text": "true"})
        self.phases: dict[str, tuple[float, dict]] = {}

    @contextlib.contextmanager
    def phase(self, name: str):
        """Trace the block (whose results the caller blocks on) as phase `name`."""
        trace_dir = os.path.join(self._tmp.name, "trace", name)
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            start = time.perf_counter()
            yield
            wall = time.perf_counter() - start
        self.phases[name] = (wall, read_trace(trace_dir))

    def print_summary(self, top: int = 10, source_chars: int = 100) -> None:
        """Per phase: wall and op seconds, the op time by kind, and the `top` groups of ops that do the same
        thing in every layer (`source_group`), with their kind, runs and share."""
        hlo = read_hlo_dump(self.dump_dir)
        if not hlo:
            raise RuntimeError(f"no HLO dump in {self.dump_dir}: create OpProfile() before jax's first computation "
                               "(XLA reads XLA_FLAGS once)")
        for name, (wall, times) in self.phases.items():
            kinds, groups = collections.Counter(), collections.defaultdict(lambda: [0.0, 0, set()])
            for (module, op_name), (seconds, runs) in times.items():
                op = hlo.get((module, op_name), Op("?", "?", ""))
                if op.opcode in CONTROL_FLOW:
                    continue
                kinds[op.kind] += seconds
                group = groups[(op.kind, source_group(op_name, op))]
                group[0] += seconds
                group[1] += runs
                group[2].add(op_name)
            total = sum(kinds.values()) or float("nan")
            print(f"\nphase {name}: {wall:.2f} s wall, {total:.2f} s in ops")
            print("  by kind: " + ", ".join(f"{kind} {s / total:.0%}" for kind, s in kinds.most_common(8)))
            ranked = sorted(groups.items(), key=lambda item: item[1][0], reverse=True)[:top]
            for (kind, source), (seconds, runs, op_names) in ranked:
                print(f"  {seconds / total:5.1%} {seconds:7.3f} s {len(op_names):4d} ops {runs:6d} runs  {kind:22s} "
                      f"{source[-source_chars:]}")
