"""Builds electra_fast._C, the torch extension that holds the C++ and CUDA kernels.

Install with `pip install --no-build-isolation -e .` into an environment that already has torch.

Environment:
  ELECTRA_FAST_CUDA      unset: build the CUDA kernels when torch has CUDA and nvcc is found;
                         0: never; 1: require them (their absence is an error).
  TORCH_CUDA_ARCH_LIST   architectures to build for; with none given: "8.0;9.0a" when no GPU is
                         visible, "9.0a" when the visible GPUs are all H100/H200 (9.0a has the
                         wgmma instructions, plain 9.0 does not), else the visible GPUs' own.
  MAX_JOBS               parallel compile jobs (ninja).
  CUDA_HOME              the CUDA toolkit; by default found from the nvcc on PATH.
"""

import json
import os
import re
import sys
from pathlib import Path

from setuptools import Extension, setup

try:
    import torch
except ImportError:
    sys.exit(
        "electra_fast: torch is not installed. Install torch first (for example "
        "`pip install torch`), then `pip install --no-build-isolation -e .`."
    )

ROOT = Path(__file__).parent.resolve()
sys.path.insert(0, str(ROOT))
from build_support import default_cuda_arch_list, find_cuda_home, runs_sm90a_code  # noqa: E402


def want_cuda() -> bool:
    setting = os.environ.get("ELECTRA_FAST_CUDA", "").strip()
    if setting not in ("", "0", "1"):
        sys.exit(f"electra_fast: ELECTRA_FAST_CUDA must be 0, 1 or unset, got {setting!r}")
    if setting == "0":
        return False
    reasons = []
    if torch.version.cuda is None:
        reasons.append(f"the installed torch {torch.__version__} has no CUDA")
    cuda_home = find_cuda_home()
    if cuda_home is None:
        reasons.append("no CUDA toolkit found (no nvcc on PATH and CUDA_HOME unset)")
    if reasons:
        if setting == "1":
            sys.exit("electra_fast: ELECTRA_FAST_CUDA=1 but " + "; ".join(reasons))
        print("electra_fast: building CPU kernels only: " + "; ".join(reasons))
        return False
    # torch.utils.cpp_extension reads CUDA_HOME when it is imported.
    os.environ["CUDA_HOME"] = str(cuda_home)
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        visible = [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
        archs = default_cuda_arch_list(visible)
        if archs is not None:
            os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    return True


WITH_CUDA = want_cuda()

from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def cuda_archs() -> list[str]:
    from torch.utils.cpp_extension import _get_cuda_arch_flags

    found = re.findall(r"arch=compute_(\d+)(a?)", " ".join(_get_cuda_arch_flags()))
    return sorted({f"{int(num) // 10}.{int(num) % 10}{suffix}" for num, suffix in found})


class BuildWithInfo(BuildExtension):
    """Also writes _build_info.json beside the extension, so that a failed load can say why."""

    def run(self):
        super().run()
        info = {
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "cuda_built": WITH_CUDA,
            "cuda_archs": cuda_archs() if WITH_CUDA else [],
            # The wgmma attention kernels, for H100/H200 (ELECTRA_FAST_WGMMA=1 turns them on).
            "sm90a_kernels": WITH_CUDA and runs_sm90a_code(cuda_archs()),
        }
        out = Path(self.get_ext_fullpath("electra_fast._C")).parent / "_build_info.json"
        out.write_text(json.dumps(info, indent=1) + "\n")


def extension():
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc/ops").glob("*.cpp"))
    # No fused multiply-adds: the CPU kernels must round like the torch references and CUDA.
    cxx = ["-O3", "-std=c++20", "-fopenmp", "-ffp-contract=off", "-DPy_LIMITED_API=0x030A0000"]
    if not WITH_CUDA:
        return CppExtension(
            "electra_fast._C", sources, extra_compile_args={"cxx": cxx}, py_limited_api=True
        )
    sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc/ops/cuda").glob("*.cu"))
    nvcc = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"]
    if runs_sm90a_code(cuda_archs()):
        nvcc.append("-DELECTRA_FAST_SM90A")  # the host code may launch the wgmma kernels
    return CUDAExtension(
        "electra_fast._C",
        sources,
        py_limited_api=True,
        extra_compile_args={"cxx": cxx + ["-DELECTRA_FAST_CUDA"], "nvcc": nvcc},
    )


def pybind11_include() -> str:
    """pybind11's headers: from the pybind11 package, else the copy that torch ships."""
    try:
        import pybind11

        return pybind11.get_include()
    except ImportError:
        from torch.utils.cpp_extension import include_paths

        return include_paths()[0]


def vietnamese_extension():
    """electra_fast._vi, the Vietnamese segmenter: plain C++ and pybind11, no torch."""
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc/tokenizer").glob("vi_*.cpp"))
    return Extension(
        "electra_fast._vi",
        sources,
        include_dirs=[pybind11_include()],
        extra_compile_args=["-O3", "-std=c++17", "-ffp-contract=off", "-fvisibility=hidden"],
        extra_link_args=["-pthread"],
        language="c++",
    )


def coccoc_extension():
    """electra_fast._coccoc, a binding to an installed coccoc-tokenizer, when its headers are
    found: under $COCCOC_ROOT (an error if they are not there), else under cmake's default
    prefix /usr/local, where coccoc's `cmake .. && make install` puts include/tokenizer/."""
    given = os.environ.get("COCCOC_ROOT")
    root = Path(given) if given else Path("/usr/local")
    if not (root / "include/tokenizer/tokenizer.hpp").is_file():
        if given:
            sys.exit(f"COCCOC_ROOT={given}: no include/tokenizer/tokenizer.hpp under it")
        return []
    return [
        Extension(
            "electra_fast._coccoc",
            ["csrc/coccoc/binding.cpp"],
            include_dirs=[pybind11_include(), str(root / "include")],
            extra_compile_args=["-O3", "-std=c++17", "-fvisibility=hidden", "-w"],
            language="c++",
        )
    ]


setup(
    ext_modules=[extension(), vietnamese_extension(), *coccoc_extension()],
    cmdclass={"build_ext": BuildWithInfo.with_options(use_ninja=True)},
)
