"""The command line's stderr without TensorFlow's log lines that report no error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tfsft import quiet

REPO = Path(__file__).resolve().parents[1]

FEATURES = ("Machine type used for XLA:CPU compilation doesn't match the machine type for "
            "execution. Compile machine features: [+64bit,+avx512f,+prefer-no-scatter] vs host "
            "machine features: [64bit,avx512f]. This could lead to execution errors such as "
            "SIGILL.")
# As TensorFlow 2.21 printed them on the development machine (feature lists shortened)
NOISE = [
    "E0000 00:00:1796292972.117618   21079 text_format.cc:378] Error parsing text-format "
    "tensorflow.XlaSerializedCacheEntry: 2:1: Expected identifier, got: 5",
    "E0000 00:00:1796292972.118777   21079 cpu_aot_loader.cc:220] Loading XLA:CPU AOT result. "
    f"Target machine feature +prefer-no-scatter is not  supported on the host machine. {FEATURES}",
    "E0000 00:00:1796292972.118798   21079 cpu_aot_loader.cc:220] Loading XLA:CPU AOT result. "
    f"Target machine feature +prefer-no-gather is not  supported on the host machine. {FEATURES}",
    "E0000 00:00:1796292928.921417   20960 util.cc:131] oneDNN supports DT_INT64 only on "
    "platforms with AVX-512. Falling back to the default Eigen-based implementation if present.",
]
KEPT = [
    # an instruction set the host lacks: the kernel may crash, so this one is shown
    "E0000 00:00:1796292972.118777   21079 cpu_aot_loader.cc:220] Loading XLA:CPU AOT result. "
    f"Target machine feature +avx512f is not  supported on the host machine. {FEATURES}",
    "E0000 00:00:1796292972.117618   21079 text_format.cc:378] Error parsing text-format "
    "tensorflow.ConfigProto: 2:1: Expected identifier, got: 5",
    "W0000 00:00:1796292972.117618   21079 op_kernel.cc:1857] OP_REQUIRES failed at "
    "xla_ops.cc:1: RESOURCE_EXHAUSTED: out of memory",
    "[tfsft] precision: onednn_bfloat16 (train.precision=auto)",
    "Error parsing text-format tensorflow.XlaSerializedCacheEntry (a line of the user's own)",
]


@pytest.mark.parametrize("line", NOISE)
def test_noise_lines_are_dropped(line):
    assert quiet.NOISE.match(line.encode())


@pytest.mark.parametrize("line", KEPT)
def test_other_lines_are_kept(line):
    assert not quiet.NOISE.match(line.encode())


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          env={**os.environ, **env}, timeout=120)


WRITES = f"""
import os, sys
os.write(2, {NOISE[0].encode()!r} + b"\\n")
os.write(2, b"kept 1\\n" + {NOISE[1].encode()!r} + b"\\n")
print("kept 2 (Python's sys.stderr)", file=sys.stderr, flush=True)
os.write(2, {KEPT[0].encode()!r} + b"\\n")
os.write(2, b"no newline at the end")
"""


def test_the_filter_drops_noise_and_keeps_everything_else_in_order_even_on_a_crash():
    """The filter is another process: what was written before an abort still comes out."""
    r = run_python("from tfsft import quiet\nassert quiet.start_filter()\n" + WRITES
                   + "os.abort()\n")
    assert r.returncode != 0
    assert r.stderr.decode() == ("kept 1\nkept 2 (Python's sys.stderr)\n" + KEPT[0] + "\n"
                                 "no newline at the end")


def test_the_filter_is_off_with_tfsft_verbose_tf():
    r = run_python("from tfsft import quiet\nassert not quiet.start_filter()\n" + WRITES,
                   TFSFT_VERBOSE_TF="1")
    assert r.returncode == 0
    assert r.stderr.decode().count("E0000") == 3


def test_the_program_filters_its_stderr_once_tensorflow_is_imported():
    """`tfsft` / `python -m tfsft` (cli.run) ask for the filter; `cli.main`, which a
    library caller or a test may call in-process, does not."""
    after = f"""
os.write(2, {NOISE[0].encode()!r} + b"\\nafter\\n")
sys.exit(code)
"""
    program = run_python("import os, sys\nfrom tfsft import cli\nsys.argv = ['tfsft', 'list']\n"
                         "code = cli.run()\n" + after)
    assert program.returncode == 0, program.stderr.decode()[-2000:]
    assert "after" in program.stderr.decode() and b"XlaSerializedCacheEntry" not in program.stderr
    library = run_python("import os, sys\nfrom tfsft import cli\ncode = cli.main(['list'])\n"
                         + after)
    assert library.returncode == 0, library.stderr.decode()[-2000:]
    assert b"XlaSerializedCacheEntry" in library.stderr


def test_pyplot_is_imported_only_when_used():
    """Keras imports matplotlib.pyplot as TensorFlow starts; tfsft defers the import to the
    first use (defer_pyplot), and code that draws, Keras' own included, gets real pyplot."""
    script = (
        "import sys\n"
        "from tfsft import quiet\n"
        "quiet.import_tensorflow_quietly()\n"
        "from keras.src.visualization import plot_image_gallery as keras_plots\n"
        "print(type(sys.modules['matplotlib.pyplot']).__name__)\n"
        "import matplotlib\n"
        "matplotlib.use('Agg')\n"
        "import matplotlib.pyplot as plt\n"
        "figure = keras_plots.plt.figure()\n"
        "print(type(figure).__name__, plt.gca is sys.modules['matplotlib.pyplot'].gca,\n"
        "      type(sys.modules['matplotlib.pyplot']).__name__)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["_DeferredPyplot", "Figure", "True", "module"], out.stdout


@pytest.mark.parametrize("machine,preset,expected", [
    ("x86_64", None, "1"), ("AMD64", None, "1"), ("x86_64", "0", "0"), ("aarch64", None, None)])
def test_onednn_is_on_by_default_on_x86_unless_the_user_says(monkeypatch, machine, preset,
                                                             expected):
    monkeypatch.setattr(quiet.platform, "machine", lambda: machine)
    if preset is None:
        monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    else:
        monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", preset)
    quiet.use_onednn_by_default()
    assert os.environ.get("TF_ENABLE_ONEDNN_OPTS") == expected


@pytest.mark.skipif(quiet.platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="oneDNN is turned on by default on x86-64 only")
@pytest.mark.parametrize("preset,expected", [(None, "True"), ("0", "False")])
def test_tensorflow_runs_onednn_as_tfsft_sets_it(preset, expected):
    """What a tfsft process's TensorFlow reports (whatever the CPU would have chosen)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if preset is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = preset
    script = ("from tfsft import quiet\n"
              "quiet.import_tensorflow_quietly()\n"
              "from tensorflow.python.util import _pywrap_util_port\n"
              "print(_pywrap_util_port.IsMklEnabled())\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=REPO, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [expected]
