"""The persistent cache of compiled XLA kernels: where it goes, when it is off, and that a
second process loads what the first compiled."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO

from tfsft import xla_cache

INTEL = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f amx_bf16\n"
AMD = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n"


def test_folder_is_under_the_user_cache_per_tensorflow_and_cpu(tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    intel = xla_cache.folder(env, INTEL)
    assert intel.parent == tmp_path / "tfsft" / "xla"
    assert intel.name.startswith("tf")
    assert xla_cache.folder(env, AMD) != intel  # other instruction sets, other kernels
    assert xla_cache.folder(env, INTEL) == intel
    reordered = "processor\t: 0\nflags\t\t: amx_bf16 avx2 avx512f fpu sse2\n"
    assert xla_cache.folder(env, reordered) == intel


def test_configure_sets_tensorflow_flags_and_keeps_the_users(tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path), "TF_XLA_FLAGS": "--tf_xla_auto_jit=1"}
    where = xla_cache.configure(env, INTEL)
    assert where.is_dir()
    assert env["TF_XLA_FLAGS"].startswith("--tf_xla_auto_jit=1 ")
    assert f"--tf_xla_persistent_cache_directory={where}" in env["TF_XLA_FLAGS"]
    before = env["TF_XLA_FLAGS"]
    assert xla_cache.configure(env, INTEL) is None  # set already: unchanged
    assert env["TF_XLA_FLAGS"] == before


def test_configure_leaves_a_users_own_cache_folder(tmp_path):
    own = f"--tf_xla_persistent_cache_directory={tmp_path / 'mine'}"
    env = {"XDG_CACHE_HOME": str(tmp_path), "TF_XLA_FLAGS": own}
    assert xla_cache.configure(env, INTEL) is None
    assert env["TF_XLA_FLAGS"] == own
    assert not (tmp_path / "tfsft").exists()


def test_configure_off_elsewhere_and_unusable(tmp_path):
    for off in ("off", "0", ""):
        env = {"XDG_CACHE_HOME": str(tmp_path), xla_cache.ENV: off}
        assert xla_cache.configure(env, INTEL) is None
        assert "TF_XLA_FLAGS" not in env
    env = {xla_cache.ENV: str(tmp_path / "elsewhere")}
    assert xla_cache.configure(env, INTEL).parent == tmp_path / "elsewhere"
    env = {xla_cache.ENV: str(tmp_path / "with space")}
    assert xla_cache.configure(env, INTEL) is None  # TF_XLA_FLAGS splits at spaces
    (tmp_path / "file").write_text("not a folder")
    env = {xla_cache.ENV: str(tmp_path / "file")}
    assert xla_cache.configure(env, INTEL) is None
    assert "TF_XLA_FLAGS" not in env


CHILD = """
import json, sys
from tfsft import fused, quiet
quiet.import_tensorflow_quietly()
import tensorflow as tf
x = tf.reshape(tf.range(-3.0, 3.0, 0.25), [4, 6])
with tf.GradientTape() as tape:
    tape.watch(x)
    y = fused.gelu(x)
print(json.dumps({"y": y.numpy().tolist(), "dy": tape.gradient(y, x).numpy().tolist()}))
"""


def test_a_second_process_loads_the_kernels_the_first_compiled(tmp_path):
    env = {**os.environ, xla_cache.ENV: str(tmp_path), "PYTHONPATH": str(REPO)}
    env.pop("TF_XLA_FLAGS", None)

    def run():
        out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                             text=True, timeout=300, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    first = run()
    kernels = sorted(p.name for p in tmp_path.rglob("*.pb"))
    assert len(kernels) >= 2, kernels  # the GELU forward and its gradient
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.pb")}
    assert run() == first  # loaded kernels compute the same
    assert sorted(p.name for p in tmp_path.rglob("*.pb")) == kernels  # nothing new compiled
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.pb")} == stamps
