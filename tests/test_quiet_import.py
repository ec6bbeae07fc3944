"""TensorFlow's import-time INFO lines are hidden (``kseg.core.quiet_import``), its warnings are not. A stand-in
module writes what TensorFlow 2.21 writes on a CPU with oneDNN on, straight to file descriptor 2 as C++ does."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

CHATTER = textwrap.dedent(
    """
    import os
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
    os.write(2, b"I0000 00:00:1796395484.240228   14485 port.cc:153] oneDNN custom operations are on.\\n")
    os.write(2, b"W0000 00:00:1796395484.240229   14485 cuda.cc:1] a real warning\\n")
    VALUE = 42
    """
)


def _run(tmp_path, level: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "chatty_tf.py").write_text(CHATTER)
    code = (
        "from kseg.core import quiet_import\n"
        "quiet_import.install('chatty_tf')\n"
        "import chatty_tf\n"
        "print(chatty_tf.VALUE)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = level
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), os.path.dirname(os.path.dirname(__file__))])
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)


def test_info_lines_are_hidden_and_warnings_kept(tmp_path):
    for level in (None, "1", "2"):  # None: kseg's own default, 2
        done = _run(tmp_path, level)
        assert done.stdout == "42\n"
        assert done.stderr == "W0000 00:00:1796395484.240229   14485 cuda.cc:1] a real warning\n"


def test_everything_shows_when_info_lines_are_asked_for(tmp_path):
    assert _run(tmp_path, "0").stderr.count("\n") == 3
