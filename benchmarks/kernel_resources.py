"""What the split-K decode attention kernel costs a GPU's multiprocessor, found without a GPU: compile it for a target
(sm_90 by default) at given launch settings and read shared memory, registers a thread (ptxas) and the stages of
asynchronous copies the pipeliner made, for bf16 and float8 caches, one split and several.

The arguments are specialised as Triton's launcher specialises the engine's calls (pointers and strides divisible by
16; the FP8 scale strides are not): without those hints the loops are not pipelined at all, which a real launch never
sees. Needs Triton (its wheel brings ptxas); torch may be the CPU build. Programs an SM follow from the figures: at
most 65,536 registers / (registers x 32 x warps) and 228 KB / shared bytes.

    PYTHONPATH=src python benchmarks/kernel_resources.py                       # the defaults and a few settings
    PYTHONPATH=src python benchmarks/kernel_resources.py --settings 64,8,2 32,4,3 --arch 90
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile

SHAPE = {"KV_HEADS": 8, "G": 4, "GP": 16, "D": 128}  # Qwen3-4B: 8 key/value heads, 4 query heads each, head_dim 128
UNHINTED = {"stride_ksb", "stride_ksh", "stride_pksb", "stride_pksh"}  # FP8 scale strides: 1 in bf16 runs


def signature(fn, kv_fp8: bool) -> tuple:
    """(types, hints) of `fn`'s runtime arguments as the engine passes them."""
    types = {}
    for name in fn.arg_names:
        if name.startswith("stride"):
            types[name] = "i32"
        elif name in ("scale_log2", "eps"):
            types[name] = "fp32"
        elif name in ("PAD", "SLOT", "SRC", "WIDTH"):
            types[name] = "*i64"
        elif name in ("ACC", "M", "L", "KS", "VS", "PKS", "PVS"):
            types[name] = "*fp32"
        elif name in ("K", "V", "PK", "PV") and kv_fp8:
            types[name] = "*fp8e4nv"
        else:
            types[name] = "*bf16"
    hints = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n, t in types.items()
             if t.startswith("*") or (t == "i32" and n not in UNHINTED)}
    return types, hints


def resources(block_n: int, warps: int, stages: int, nsplit: int, kv_fp8: bool, arch: int) -> dict:
    """Compile the partial kernel for sm_`arch` at one setting; shared bytes, registers, async copies."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from mathgrpo.rollout import decode_attention

    fn = decode_attention._partial_kernel
    types, hints = signature(fn, kv_fp8)
    # as the engine launches it: raw q / k projections, Qwen3's q / k norms and the rotary applied in the kernel
    consts = {**SHAPE, "BLOCK_N": block_n, "NSPLIT": nsplit, "HAS_NEW": True, "KV_FP8": kv_fp8, "ROTARY": True, "QK_NORM": True}
    types.update({name: "constexpr" for name in consts})
    kernel = triton.compile(ASTSource(fn, types, consts, hints), target=GPUTarget("cuda", arch, 32),
                            options={"num_warps": warps, "num_stages": stages})
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "k.ptx")
        with open(ptx, "w") as f:
            f.write(kernel.asm["ptx"])
        done = subprocess.run([ptxas, "-v", f"-arch=sm_{arch}a" if arch >= 90 else f"-arch=sm_{arch}", ptx, "-o",
                               os.path.join(tmp, "k.cubin")], capture_output=True, text=True)
    line = next((l for l in (done.stdout + done.stderr).splitlines() if "registers" in l), "")
    registers = int(line.split("Used ")[1].split(" registers")[0]) if "Used " in line else None
    per_sm = min(65536 // (registers * 32 * warps), 228 * 1024 // max(1, kernel.metadata.shared)) if registers else None
    return {"block_n": block_n, "warps": warps, "stages": stages, "nsplit": nsplit, "kv_fp8": kv_fp8,
            "shared_bytes": kernel.metadata.shared, "registers": registers, "programs_per_sm": per_sm,
            "async_copies": kernel.asm["ttgir"].count("async_copy_global_to_local")}


def main() -> None:
    from mathgrpo.rollout.decode_attention import SplitKDecode, available

    if not available():
        raise SystemExit("kernel_resources.py needs Triton (pip install triton; its wheel brings ptxas)")
    default = f"{SplitKDecode.BLOCK_N},{SplitKDecode.NUM_WARPS},{SplitKDecode.NUM_STAGES}"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", nargs="+", default=[default, "32,4,3", "64,8,2", "32,8,2"],
                    help="block_n,warps,stages (the first: the engine's defaults)")
    ap.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100 / H200; 89: L4)")
    args = ap.parse_args()
    print(f"{'block_n':>7} {'warps':>5} {'stages':>6} {'splits':>6} {'cache':>5} {'shared B':>8} {'regs':>5} "
          f"{'progs/SM':>8} {'async copies':>12}")
    for setting in args.settings:
        block_n, warps, stages = (int(x) for x in setting.split(","))
        for kv_fp8 in (False, True):
            for nsplit in (1, 2):
                r = resources(block_n, warps, stages, nsplit, kv_fp8, args.arch)
                print(f"{block_n:>7} {warps:>5} {stages:>6} {nsplit:>6} {'fp8' if kv_fp8 else 'bf16':>5} "
                      f"{r['shared_bytes']:>8} {r['registers'] or '?':>5} {r['programs_per_sm'] or '?':>8} {r['async_copies']:>12}",
                      flush=True)


if __name__ == "__main__":
    main()
