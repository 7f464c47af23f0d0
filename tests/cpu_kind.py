"""The CPU kind that decides oneDNN's kernels, and so the last bits of a float result: its vendor and widest
vector and matrix extensions."""
from __future__ import annotations


def cpu_kind() -> str:
    flags, vendor = set(), "?"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            for line in stream:
                if line.startswith("vendor_id"):
                    vendor = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    extensions = [name for name in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if name in flags]
    return f"{vendor} {'+'.join(extensions) or 'sse'}"
