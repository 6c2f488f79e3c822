"""Finding the CUDA toolkit behind the nvcc on PATH: a plain install, a symbolic link into the
toolkit, and a wrapper script that execs the real nvcc (what our machines have)."""

import os
import stat

import pytest

import build_support
from build_support import find_cuda_home


def make_toolkit(root):
    (root / "bin").mkdir(parents=True)
    (root / "lib64").mkdir()
    (root / "lib64" / "libcudart.so").write_text("")
    nvcc = root / "bin" / "nvcc"
    # Answers --dryrun the way the real nvcc does, naming its own directory.
    nvcc.write_text(f'#!/bin/sh\necho "#$ TOP={root}/bin/.." >&2\n')
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IEXEC)
    return root


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    path_dir = tmp_path / "path"
    path_dir.mkdir()
    monkeypatch.setenv("PATH", str(path_dir))
    return path_dir


def test_nvcc_inside_the_toolkit(clean_env, tmp_path):
    toolkit = make_toolkit(tmp_path / "cuda-13.0")
    os.environ["PATH"] = str(toolkit / "bin")
    assert find_cuda_home() == toolkit


def test_symbolic_link_into_the_toolkit(clean_env, tmp_path):
    toolkit = make_toolkit(tmp_path / "cuda-13.0")
    (clean_env / "nvcc").symlink_to(toolkit / "bin" / "nvcc")
    assert find_cuda_home() == toolkit


def test_wrapper_script(clean_env, tmp_path):
    toolkit = make_toolkit(tmp_path / "cuda-13.0")
    wrapper = clean_env / "nvcc"
    wrapper.write_text(f'#!/bin/sh\nexec {toolkit}/bin/nvcc "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    assert find_cuda_home() == toolkit


def test_cuda_home_wins_and_no_nvcc_means_none(clean_env, monkeypatch, tmp_path):
    assert find_cuda_home() is None
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "somewhere"))
    assert find_cuda_home() == tmp_path / "somewhere"


def test_default_arch_list_builds_wgmma_for_hopper():
    # No GPU (our CI machines): A100 and H100 classes, the latter as 9.0a for wgmma.
    assert build_support.default_cuda_arch_list([]) == "8.0;9.0a"
    assert build_support.default_cuda_arch_list([(9, 0), (9, 0)]) == "9.0a"
    # Anything else is torch's own choice.
    assert build_support.default_cuda_arch_list([(8, 0)]) is None
    assert build_support.default_cuda_arch_list([(9, 0), (8, 6)]) is None


def test_sm90a_code_runs_only_without_plain_sm90_beside_it():
    assert build_support.runs_sm90a_code(["8.0", "9.0a"])
    assert not build_support.runs_sm90a_code(["8.0", "9.0"])
    assert not build_support.runs_sm90a_code(["9.0", "9.0a"])
