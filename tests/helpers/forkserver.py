"""Run ``python -m <module> args`` in a new process without paying for its imports each time.

A command of this project spends ~6 s of CPU importing torch, torchvision and Hydra before it
starts; the suite runs a few hundred of them. Each pytest worker starts one server that imports
those libraries once (never mtcsnn or Lightning, nor runs any computation). Each command is a
process forked from it, with its own pid, environment, working folder, argv, stdin (empty),
stdout and stderr files; mtcsnn and Lightning are imported afresh in it, ``runpy`` runs the
module as ``python -m`` does, and it ends as the interpreter ends (threads joined, ``atexit``
handlers run, streams flushed, the exit status of ``SystemExit`` or of a traceback), except
that the preloaded modules are not torn down: touching their objects made the kernel copy
the server's memory page by page, 1.1 s a command.
Variables the libraries read as they load (``OMP_NUM_THREADS``, ...) get a server of their own
started with them; a command that changes how Python starts (``PYTHONPATH``) gets a new one.

``MTCSNN_TEST_SUBPROCESS=1`` runs every command with a new interpreter instead, as a user would.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

# imported once by the server; what a command imports beyond them is imported in its process.
# Not Lightning: it gives its loggers a handler of its own when it is imported before logging is
# configured, which a command does first (Hydra), and it takes a fifth of a second after these.
PRELOADED = (
    "numpy",
    "scipy.stats",
    "sklearn.model_selection",
    "torch",
    "torchvision",
    "torchmetrics",
    "hydra",
    "omegaconf",
)
# a shell line with any of these is run by bash
SHELL_SIGNS = ("|", "&", ";", "<", ">", "(", ")", "`", "*", "?", "\n", "\\", "$(")
# a command whose environment changes how Python itself starts needs a new interpreter
INTERPRETER_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH", "PYTHONNOUSERSITE")
# read when the preloaded libraries load (thread pools, allocators): a server per their values
LOAD_TIME_PREFIXES = ("OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_", "TORCH", "PYTORCH_", "CUDA_")

_servers: dict[tuple, tuple[subprocess.Popen, str]] = {}


def wanted(env: dict[str, str]) -> bool:
    """Whether a command with environment ``env`` can run in a forked process."""
    if os.environ.get("MTCSNN_TEST_SUBPROCESS") == "1":
        return False
    return all(env.get(name) == os.environ.get(name) for name in INTERPRETER_VARIABLES)


def module_command(text: str, env: dict[str, str]) -> tuple[str, list[str]] | None:
    """``(module, args)`` of a shell line ``python -m module args`` that bash would run as
    ``shlex`` splits it (``$NAME`` filled from ``env``); None for anything else."""
    if any(sign in text for sign in SHELL_SIGNS):
        return None
    text = re.sub(r"\$([A-Za-z_]\w*)|\$\{(\w+)\}", lambda m: env.get(m[1] or m[2], ""), text)
    try:
        words = shlex.split(text)
    except ValueError:
        return None
    if len(words) < 3 or words[:2] != ["python", "-m"] or "~" in "".join(w[:1] for w in words):
        return None
    return words[2], words[3:]


def run(
    module: str, args: list[str], env: dict[str, str], cwd: str | Path | None = None, timeout=600
) -> subprocess.CompletedProcess:
    """``python -m module *args`` in a process forked from this worker's server, or where the
    environment needs it (:func:`wanted`) with a new interpreter."""
    command = [sys.executable, "-m", module, *args]
    if not wanted(env):
        return subprocess.run(
            command, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout
        )
    with tempfile.TemporaryDirectory(prefix="forked-") as folder:
        out, err = Path(folder, "stdout"), Path(folder, "stderr")
        request = {
            "module": module,
            "args": list(args),
            "env": env,
            "cwd": str(Path(cwd or os.getcwd()).resolve()),
            "stdout": str(out),
            "stderr": str(err),
        }
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.connect(_server_socket(env))
            connection.sendall(json.dumps(request).encode() + b"\n")
            connection.settimeout(timeout)
            replies = connection.makefile("r")
            pid = int(replies.readline())
            try:
                returncode = int(replies.readline())
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                raise subprocess.TimeoutExpired(command, timeout) from None
        return subprocess.CompletedProcess(
            command,
            returncode,
            out.read_text(errors="replace"),
            err.read_text(errors="replace"),
        )


def _server_socket(env: dict[str, str]) -> str:
    """The socket of the server started with ``env``'s load-time variables (started now if
    there is none)."""
    loaded = {k: v for k, v in env.items() if k.startswith(LOAD_TIME_PREFIXES)}
    key = tuple(sorted(loaded.items()))
    server = _servers.get(key)
    if server is None or server[0].poll() is not None:
        path = str(Path(tempfile.mkdtemp(prefix="mtcsnn-forkserver-"), "server.sock"))
        own = {k: v for k, v in os.environ.items() if not k.startswith(LOAD_TIME_PREFIXES)}
        process = subprocess.Popen(
            [sys.executable, __file__, path],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env={**own, **loaded},
        )
        if process.stdout.readline().strip() != b"ready":
            raise RuntimeError("the fork server did not start")
        atexit.register(_stop, process, path)
        server = _servers[key] = (process, path)
    return server[1]


def _stop(process: subprocess.Popen, path: str) -> None:
    process.kill()
    process.wait()
    Path(path).unlink(missing_ok=True)
    Path(path).parent.rmdir()


def _serve(path: str) -> None:
    import importlib

    for name in PRELOADED:
        importlib.import_module(name)
    assert not {"pytorch_lightning", "lightning_fabric"} & set(sys.modules)
    gc.freeze()  # the collector of a forked command leaves the preloaded objects (and pages) alone
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the waiters are reaped by the kernel
    print("ready", flush=True)
    while True:
        connection, _ = listener.accept()
        if os.fork() == 0:
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            _wait_for_command(connection)  # returns only in the command's process
            return
        connection.close()


def _wait_for_command(connection: socket.socket) -> None:
    """In a waiter: fork the command's process, report its pid, then its exit status."""
    request = json.loads(connection.makefile("r").readline())
    pid = os.fork()
    if pid == 0:
        connection.close()
        _become_command(request)
        return
    connection.sendall(f"{pid}\n".encode())
    _, status = os.waitpid(pid, 0)
    connection.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
    connection.close()
    os._exit(0)


def _become_command(request: dict) -> None:
    """This process becomes ``python -m module args`` and runs it."""
    import runpy

    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, name, flags in (
        (0, os.devnull, os.O_RDONLY),
        (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
        (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
    ):
        opened = os.open(name, flags, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    module, args = request["module"], request["args"]
    sys.argv = [module, *args]
    sys.orig_argv = [sys.executable, "-m", module, *args]
    sys.path[0] = os.getcwd()  # as python -m puts the working folder first
    ending: list[int] = []
    atexit.register(_end_without_teardown, ending)  # registered first, so it runs last
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        ending.append(_exit_status(stop.code))
        raise  # the interpreter prints a message it carries, as for any command
    except KeyboardInterrupt:
        raise  # the interpreter ends by the signal itself: left to it
    except BaseException:
        ending.append(1)
        raise  # printed as a traceback by the interpreter, before the atexit handlers run
    else:
        ending.append(0)


def _exit_status(code: object) -> int:
    """The status ``SystemExit(code)`` ends a process with."""
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def _end_without_teardown(ending: list[int]) -> None:
    """The last step of the interpreter's shutdown (threads joined and the other handlers run
    by now): streams flushed, then the process ends with the status it was ending with."""
    if not ending:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed stream: nothing left to write
            pass
    os._exit(ending[0])


if __name__ == "__main__":
    sys.path.pop(0)  # this file's folder, which a command would not see
    _serve(sys.argv[1])
