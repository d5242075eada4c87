"""Run ``lit-finetune`` command lines as separate processes without paying the imports each time.

A command line costs about 8 s of imports (torch, Lightning, torchvision) before it does anything; the suite runs
dozens. :func:`run_cli` sends each command line to a helper process that imported ``lit_finetune.cli`` once and
forks a child per command line: the child is a new process (its own globals, working folder, environment, exit
status, stdout and stderr at the file-descriptor level), whose ``sys.argv[0]`` is the installed ``lit-finetune``
script (so Lightning's DDP launcher starts its other ranks as the real command would), and which calls the same
``main()`` as that script. The helper never runs a tensor operation, so no thread pool is forked.

The installed script itself is run with ``subprocess`` by ``tests/e2e/test_readme_reference.py``, and ``cli.py`` by
``tests/e2e/test_cli.py``.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SCRIPT = shutil.which("lit-finetune", path=str(Path(sys.executable).parent)) or "lit-finetune"

HELPER = r"""
import json, os, sys, time, traceback
import lit_finetune.cli.app  # the imports, once
from lit_finetune.cli import main

replies = os.fdopen(os.dup(1), "w")  # this process's answers; whatever else writes to stdout goes nowhere
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)

def child(request):
    replies.close()
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    for entry in reversed(request["env"].get("PYTHONPATH", "").split(os.pathsep)):  # read at start-up by a new process
        if entry and entry not in sys.path:
            sys.path.insert(0, entry)
    threads = request["env"].get("OMP_NUM_THREADS")
    if threads:  # read by OpenMP when the helper loaded it; a child sets it again
        import torch
        torch.set_num_threads(int(threads))
    sys.argv = [request["argv0"], *request["args"]]
    code = 0
    try:
        main()
    except SystemExit as exit_:
        if isinstance(exit_.code, str):
            print(exit_.code, file=sys.stderr)
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

for line in sys.stdin:
    request = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        try:
            child(request)
        finally:
            os._exit(1)
    deadline, status = time.monotonic() + request["timeout"], None
    while status is None:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(raw)
        elif time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            status = "timeout"
        else:
            time.sleep(0.02)
    print(json.dumps({"code": status}), file=replies, flush=True)
"""

_helper: subprocess.Popen | None = None


def _start() -> subprocess.Popen:
    global _helper
    if _helper is None or _helper.poll() is not None:
        _helper = subprocess.Popen([sys.executable, "-c", HELPER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        atexit.register(_helper.kill)
    return _helper


def run_cli(args: list[str], cwd: Path | str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """``lit-finetune *args`` in ``cwd`` (with ``env``, default this process's); a ``CompletedProcess`` with text output.

    Raises:
        subprocess.TimeoutExpired: the command line ran longer than ``timeout`` seconds (it is killed).
    """
    helper = _start()
    assert helper.stdin is not None and helper.stdout is not None
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        request = {
            "args": [str(a) for a in args],
            "cwd": str(cwd),
            "env": dict(os.environ if env is None else env),
            "stdout": str(out),
            "stderr": str(err),
            "argv0": SCRIPT,
            "timeout": timeout,
        }
        helper.stdin.write(json.dumps(request) + "\n")
        helper.stdin.flush()
        reply = helper.stdout.readline()
        if not reply:
            raise RuntimeError("the command-line helper process ended")
        code = json.loads(reply)["code"]
        stdout = out.read_text(errors="replace") if out.exists() else ""
        stderr = err.read_text(errors="replace") if err.exists() else ""
    if code == "timeout":
        raise subprocess.TimeoutExpired([SCRIPT, *args], timeout, stdout, stderr)
    return subprocess.CompletedProcess([SCRIPT, *args], code, stdout, stderr)
