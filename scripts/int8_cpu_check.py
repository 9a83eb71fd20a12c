#!/usr/bin/env python
"""Are ONNX Runtime's fused INT8 kernels exact for each ORT lowering -- here, and on an emulated CPU?

For each lowering target of ``deploykit quantize --ort-lowering --ort-cpu`` (``x86-vnni``: int8
weights, U8S8 kernels; ``x86``: uint8 weights, U8U8 kernels) it runs, with graph optimizations
on (fused QLinearConv):

* a convolution whose int8 operands make every pair of u8*s8 products exceed int16, against
  the exact integer computation (bit for bit, or the max difference in output LSB);
* the small conv block of the tests against the same graph under reference kernels.

``--emulate CPU`` runs the same checks under ``qemu-x86_64 -cpu CPU`` (Debian package
``qemu-user``), whose TCG reports that CPU's CPUID to ONNX Runtime's kernel dispatch: e.g.
``Haswell-v4`` or ``EPYC-Rome`` for AVX2 without VNNI or AVX-512. QEMU's TCG has no AVX-512,
so AVX-512-without-VNNI CPUs (Skylake-SP) cannot be emulated. Emulation is slow (~20x) but
the graphs are tiny.

    python scripts/int8_cpu_check.py                      # this machine
    python scripts/int8_cpu_check.py --emulate Haswell-v4 # an AVX2 CPU without VNNI
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "precision"))  # the graph builders of tests/precision/test_ort_lowering.py


def checks() -> dict:
    import numpy as np
    import onnxruntime as ort
    from test_ort_lowering import _inputs, _saturating_conv_model, _session, conv_block_model

    from deploykit.precision.ort_lowering import TARGETS, lower_for_ort

    out = {}
    model, x, expected = _saturating_conv_model()
    block = conv_block_model()
    block_ref = _session(block, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    for target in TARGETS:
        got = _session(lower_for_ort(model, target)[0]).run(None, {"x": x})[0]
        lsb = float(np.max(np.abs(got - expected)) / 8.0)  # output scale 2**3
        fused = _session(lower_for_ort(block, target)[0])
        diffs = [float(np.max(np.abs(fused.run(None, {"x": v})[0] - block_ref.run(None, {"x": v})[0])))
                 for v in _inputs((1, 8, 16, 16), 3)]
        out[target] = {"lowering": TARGETS[target][0], "saturating_conv_exact": bool(np.array_equal(got, expected)),
                       "saturating_conv_max_diff_lsb": lsb, "conv_block_max_abs_diff_vs_reference": max(diffs)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--emulate", metavar="CPU", default=None, help="QEMU CPU model, e.g. Haswell-v4")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # child mode: print JSON only
    args = ap.parse_args()
    if args.json:
        print(json.dumps(checks()))
        return
    from deploykit.runtime import cpu

    if args.emulate:
        qemu = shutil.which("qemu-x86_64")
        if qemu is None:
            sys.exit("error: qemu-x86_64 not found: expected the qemu-user package (apt-get install qemu-user)")
        # the real interpreter, not a shim script: QEMU runs ELF binaries
        cmd = [qemu, "-cpu", args.emulate, Path(sys.executable).resolve().as_posix(), __file__, "--json"]
        where = f"QEMU {args.emulate} (CPUID of that model; /proc/cpuinfo still shows the host)"
    else:
        cmd = [sys.executable, __file__, "--json"]
        where = f"this machine ({cpu.cpu_class()})"
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"error: the check failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else '?'}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"ONNX Runtime fused INT8 kernels on {where}:")
    for target, r in result.items():
        verdict = "exact" if r["saturating_conv_exact"] else f"WRONG by up to {r['saturating_conv_max_diff_lsb']:.0f} LSB"
        print(f"  --ort-cpu {target:<9} ({r['lowering']}): saturating conv {verdict}; conv block max |diff| vs "
              f"reference kernels {r['conv_block_max_abs_diff_vs_reference']:.4g}")


if __name__ == "__main__":
    main()
