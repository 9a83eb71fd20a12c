"""What ONNX Runtime's CPU integer kernels do on this machine: the CPU class of an INT8 lowering.

ONNX Runtime (MLAS) runs a fused ``QLinearConv`` / ``QGemm`` with uint8 activations (on
x86 it rewrites int8 activation Q/DQ pairs to uint8, zero point 128) and the graph's
weights. With **int8 weights (U8S8)** the x86 kernels it dispatches to are, in ONNX
Runtime 1.32 (``core/mlas/lib/platform.cpp``):

* AVX-512 VNNI (with AVX-512 BW/DQ/VL), AVX-VNNI (without AVX-512 BW/DQ/VL), AMX-INT8:
  ``vpdpbusd`` / tile dot products that accumulate u8·s8 products in int32 -- exact;
* AVX2, and AVX-512 without VNNI: ``vpmaddubsw``, which adds *pairs* of u8·s8 products
  in a **saturating int16** (255·127·2 = 64770 > 32767) -- large activations times large
  weights clip, and a lowered graph gives wrong answers.

With **uint8 weights (U8U8)** every x86 kernel widens both operands to int16 and
multiplies with ``vpmaddwd`` into int32: exact on every x86 CPU (slower than VNNI U8S8).

:func:`cpu_class` names the class this machine belongs to:

``x86-vnni``     U8S8 kernels exact (VNNI / AMX)
``x86-no-vnni``  U8S8 kernels saturate (AVX2, AVX-512 without VNNI, older)
``non-x86``      another architecture (ARM64 kernels keep int8 activations; not measured here)
``unknown``      x86 whose CPU flags cannot be read (no ``/proc/cpuinfo``)

No torch, no ONNX Runtime import: the runtime's ``Session`` uses it to warn when a
lowered graph runs on a CPU class it was not made for.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Iterable

__all__ = ["X86_VNNI", "X86_NO_VNNI", "NON_X86", "UNKNOWN", "CLASSES", "TARGET_CLASSES", "cpu_flags",
           "cpu_class", "classify_flags", "lowering_mismatch"]

X86_VNNI = "x86-vnni"
X86_NO_VNNI = "x86-no-vnni"
NON_X86 = "non-x86"
UNKNOWN = "unknown"
CLASSES = (X86_VNNI, X86_NO_VNNI, NON_X86, UNKNOWN)

#: ``deploykit quantize --ort-lowering`` targets (manifest ``precision.ort_lowering.cpu_class``)
#: -> the CPU classes on which the lowered graph's fused integer kernels are exact. ``x86``
#: (uint8 weights) covers an x86 CPU whose flags are unknown too.
TARGET_CLASSES = {"x86-vnni": {X86_VNNI}, "x86": {X86_VNNI, X86_NO_VNNI, UNKNOWN}}

_X86_MACHINES = {"x86_64", "amd64", "i386", "i686", "x86"}
#: AVX-512 "core" (MLAS's Avx512Core kernels need all four, and then override AVX-VNNI's).
_AVX512_CORE = {"avx512f", "avx512bw", "avx512dq", "avx512vl"}


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str] | None:
    """The ``flags`` of the first processor in ``cpuinfo`` (Linux), or None when unreadable."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return set(value.split())
    return None


def classify_flags(flags: Iterable[str]) -> str:
    """``x86-vnni`` or ``x86-no-vnni`` for an x86 CPU with these ``/proc/cpuinfo`` flags."""
    flags = set(flags)
    if _AVX512_CORE <= flags:
        # MLAS picks its AVX-512 core kernels (saturating) unless AVX-512 VNNI is there too;
        # AMX CPUs all have AVX-512 VNNI (the convolution kernels key on it, not on AMX).
        return X86_VNNI if "avx512_vnni" in flags else X86_NO_VNNI
    if {"avx2", "fma"} <= flags and "avx_vnni" in flags:
        return X86_VNNI
    return X86_NO_VNNI


def cpu_class(flags: Iterable[str] | None = None, machine: str | None = None) -> str:
    """This machine's class (see the module doc); ``flags``/``machine`` override what is detected."""
    machine = (machine if machine is not None else platform.machine()).lower()
    if machine not in _X86_MACHINES:
        return NON_X86
    if flags is None:
        flags = cpu_flags()
        if flags is None:
            return UNKNOWN
    return classify_flags(flags)


def lowering_mismatch(manifest: dict | None, this: str | None = None) -> str | None:
    """Why the ONNX Runtime lowering recorded in ``manifest`` is not made for this CPU, or None.

    ``this`` is the CPU class to check against (default: :func:`cpu_class`). A lowered graph
    written before deploykit recorded a CPU class holds int8 weights: target ``x86-vnni``.
    """
    record = ((manifest or {}).get("precision") or {}).get("ort_lowering")
    if not isinstance(record, dict):
        return None
    target = record.get("cpu_class", "x86-vnni")
    lowering = record.get("lowering", "u8s8")
    this = this or cpu_class()
    if this in TARGET_CLASSES.get(target, set()):
        return None
    if lowering == "u8s8" and this in (X86_NO_VNNI, UNKNOWN):
        consequence = ("its int8 weights run on ONNX Runtime's U8S8 kernels, which "
                       + ("saturate in int16 on this CPU: outputs can be wrong" if this == X86_NO_VNNI else
                          "saturate in int16 on x86 CPUs without VNNI, and this CPU's flags cannot be read"))
    elif this == NON_X86:
        consequence = "ONNX Runtime's integer kernels on this architecture were not checked for it"
    else:
        consequence = f"its CPU class {target!r} is unknown to this deploykit"
    return (f"INT8 graph lowered for ONNX Runtime on {target} CPUs ({lowering}) runs on a {this} CPU: "
            f"{consequence}; re-run `deploykit quantize --ort-lowering --ort-cpu x86` for every x86 CPU, "
            "or use the graph without --ort-lowering")
