"""The sandbox against hostile programs: each ends with a verdict and leaves the machine as it was.

Every run is checked the same way (`after`): no process of its group, user id or temporary directory is
alive, the canary file outside the sandbox is unchanged, nothing new appeared beside it or at the escape
path in /tmp, and the sandbox's temporary directory is gone. Each program runs with all layers
(`full`, namespaces when the kernel allows), with the audit hook and no namespaces (`hook`), and where it
is safe to try, with the kernel layers alone (`kernel`: namespaces and the seccomp filter, no hook) or the
namespaces alone (`ns`).
"""

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from dgft.sandbox import STATUSES, Capture, kill_all, namespaces_available, run_program, sandbox_processes

NS = namespaces_available()
needs_ns = pytest.mark.skipif(not NS, reason="this kernel refuses the namespaces")
MODES = {"full": {"isolation": "auto"}, "hook": {"isolation": "process"},
         "kernel": {"isolation": "namespaces", "guard": False},
         "ns": {"isolation": "namespaces", "guard": False, "seccomp": False},
         "bare": {"isolation": "process", "guard": False}}  # only the final sweep: for harmless programs


@pytest.fixture
def box(tmp_path, request):
    """Runs a program in the test's `mode` with `{canary}`, `{home}` and `{escape}` filled in, then checks
    the machine."""
    mode = request.node.callspec.params["mode"]
    home = tmp_path / "home"
    home.mkdir()
    canary = home / "canary.txt"
    canary.write_text("keep me\n")
    before = canary.stat()
    escape = f"/tmp/dgft-escape-{uuid.uuid4().hex}"
    workroot = tmp_path / "work"
    workroot.mkdir()

    def run(source, **kw):
        source = source.format(canary=str(canary), home=str(home), escape=escape)
        v = run_program(source, workroot=str(workroot), **MODES[mode], **kw)
        assert v.status in STATUSES and v.status != "error", v
        left = sandbox_processes(v.pgid, v.uid, str(workroot))
        assert left == [], f"processes left behind: {left}"
        assert canary.read_text() == "keep me\n" and canary.stat().st_mtime_ns == before.st_mtime_ns
        assert sorted(p.name for p in home.iterdir()) == ["canary.txt"]
        assert not os.path.exists(escape)
        assert list(workroot.iterdir()) == [], "the sandbox's directory was not removed"
        return v

    yield run
    if os.path.exists(escape):  # a failed test must not leave it behind either
        os.remove(escape)


def modes(*names):
    return pytest.mark.parametrize("mode", [pytest.param(m, marks=needs_ns) if m in ("full", "kernel", "ns") else m
                                            for m in names])


# --- ordinary programs -----------------------------------------------------------------------------


@modes("full", "hook")
def test_a_program_runs_and_its_output_comes_back(box, mode):
    v = box("import math, hashlib\nprint(math.comb(5, 2), hashlib.md5(b'a').hexdigest()[:6])")
    assert v.status == "passed" and v.completed and v.returncode == 0
    assert v.stdout == "10 0cc175\n" and not v.stdout_truncated
    assert ("namespaces" in v.isolation) == (mode == "full") and "hook" in v.isolation


@modes("full", "hook")
def test_an_exception_fails_with_its_last_line(box, mode):
    v = box("def f():\n    assert 1 == 2, 'no'\nf()")
    assert v.status == "failed" and v.returncode == 1 and v.detail == "AssertionError: no"
    assert 'File "program.py", line 2, in f' in v.stderr


@modes("full", "kernel")
def test_the_limits_are_set_inside(box, mode):
    v = box("import os, resource as r\n"
            "print(*[r.getrlimit(k)[1] for k in (r.RLIMIT_AS, r.RLIMIT_FSIZE, r.RLIMIT_NPROC, r.RLIMIT_CORE)])\n"
            "print(os.getuid() != 0 or 'root', os.getcwd())", memory_mb=300, file_size_mb=2, max_processes=9)
    limits, ident = v.stdout.splitlines()
    assert limits == f"{300 * 2**20} {2 * 2**20} 9 0"
    assert ident == "True /sandbox"


# --- hostile programs ------------------------------------------------------------------------------


@modes("full", "hook")
def test_infinite_loop_times_out(box, mode):
    v = box("while True:\n    pass", timeout_s=1)
    assert v.status == "timeout" and "wall-clock" in v.detail and 1 <= v.wall_s < 3


@modes("full", "hook")
def test_sleep_times_out(box, mode):
    v = box("import time\ntime.sleep(60)", timeout_s=1)
    assert v.status == "timeout" and v.wall_s < 3


@modes("full", "hook")
def test_input_gets_end_of_file(box, mode):
    v = box("x = input('enter a number')\nprint('got', x)")
    assert v.status == "failed" and v.detail.startswith("EOFError")


@modes("full", "hook")
def test_fork_loop_is_refused_beyond_the_limit(box, mode):
    v = box("import os\nwhile True:\n    os.fork()", max_processes=8)
    assert v.status == "failed" and "os.fork refused" in v.stderr  # several processes share stderr


@modes("kernel")
def test_fork_bomb_is_held_by_the_process_limit_and_cleaned_up(box, mode):
    count = box("import os, time\nfor i in range(100):\n    try:\n        pid = os.fork()\n"
                "    except OSError as e:\n        print(i, e.errno); break\n"
                "    if pid == 0:\n        time.sleep(30)\n        os._exit(0)", max_processes=10)
    assert count.status == "passed" and int(count.stdout.split()[0]) < 10  # EAGAIN before the 10th
    bomb = box("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
               timeout_s=1, max_processes=10)
    assert bomb.status == "timeout"


@modes("full", "hook", "kernel", "bare")
def test_a_daemon_that_leaves_the_group_is_killed(box, mode):
    v = box("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(60)\n"
            "    os._exit(0)\nprint('parent done')")
    assert v.status == "passed" and v.stdout == "parent done\n"  # `box` checks that nothing is left


@modes("full", "hook")
def test_huge_allocation_is_out_of_memory(box, mode):
    assert box("x = bytearray(64 * 2**30)", memory_mb=256).status == "oom"
    v = box("chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))", memory_mb=256)
    assert v.status == "oom" and "256 MB" in v.detail


@modes("full", "hook", "kernel")
def test_chroot_cannot_climb_out_of_the_new_root(box, mode):
    """chroot into a subdirectory, then `..` past its root, then chroot there: refused (no capability, or no
    root user). The unprivileged case, a user namespace's root, is `test_an_unprivileged_user_cannot_chroot_out`."""
    v = box("import os\nos.mkdir('x')\nos.chroot('x')\nfor _ in range(64):\n    os.chdir('..')\n"
            "os.chroot('.')\nprint(open({canary!r}).read())")
    assert v.status == "failed" and "keep me" not in v.stdout


@modes("full", "hook", "kernel")
def test_a_real_time_signal_is_a_kill_not_a_crash(box, mode):
    v = box("import os, signal\nos.kill(os.getpid(), signal.SIGRTMIN + 6)")
    assert v.status == "killed" and v.detail == "signal SIGRTMIN+6"


@modes("full", "hook")
def test_a_program_that_closes_stderr_and_fails_is_a_failure(box, mode):
    """Its traceback cannot be printed; that is the program's doing, not a set-up failure."""
    for source in ("import sys\nsys.stderr.close()\nassert 1 == 2", "import sys\nsys.stderr = 1\nassert 1 == 2",
                   "import os\nos.close(2)\nraise ValueError('x')"):
        v = box(source)
        assert v.status == "failed" and not v.completed, (source, v)


@modes("full", "hook")
def test_string_hashes_are_the_same_on_every_run(box, mode):
    """Set order of strings does not change a verdict from run to run (a fixed hash seed, which -I would ignore)."""
    source = "print(hash('apple'), list({{'apple', 'pear', 'fig', 'kiwi', 'plum'}}))"
    outputs = {box(source).stdout for _ in range(4)}
    assert len(outputs) == 1


def test_a_source_that_is_not_utf8_fails_and_leaves_nothing(tmp_path):
    v = run_program('x = "\ud800"', workroot=str(tmp_path))
    assert v.status == "failed" and "SyntaxError" in v.detail
    assert list(tmp_path.iterdir()) == []


def _unprivileged(driver: str) -> subprocess.CompletedProcess | None:
    """Run `driver` (Python, standard library only) as a user that is not root, with `dgft.sandbox` importable as
    `sandbox`; None where that cannot be arranged (root, but no interpreter that user may run)."""
    import shutil
    import tempfile

    import dgft.sandbox as S

    if os.geteuid() != 0:
        return subprocess.run([sys.executable, "-c", f"import dgft.sandbox as sandbox\n{driver}"],
                              capture_output=True, text=True, timeout=120)
    nobody = {"user": 65534, "group": 65534, "extra_groups": []}

    def runs(python):
        try:
            return subprocess.run([python, "-c", "pass"], capture_output=True, cwd="/", **nobody).returncode == 0
        except OSError:  # e.g. an interpreter under /root
            return False
    python = next((p for p in (sys.executable, "/usr/bin/python3") if runs(p)), None)
    if python is None:
        return None
    folder = tempfile.mkdtemp(prefix="dgft-unprivileged-")
    try:
        os.chmod(folder, 0o777)
        for f in (S.CHILD_PATH, Path(S.__file__)):
            shutil.copy(f, folder)
        return subprocess.run([python, "-c", f"import sys\nsys.path.insert(0, {folder!r})\nimport sandbox\n{driver}"],
                              capture_output=True, text=True, timeout=120, cwd=folder, **nobody)
    finally:
        shutil.rmtree(folder)


@needs_ns
def test_an_unprivileged_user_cannot_chroot_out(tmp_path):
    """A user who is not root gets a user namespace whose root could chroot again and climb out of the sandbox's
    root; the capabilities are dropped before the program starts, so it cannot."""
    out = _unprivileged(
        "program = ('import os\\nos.mkdir(\"x\")\\nos.chroot(\"x\")\\nfor _ in range(64):\\n    os.chdir(\"..\")\\n'\n"
        "           'os.chroot(\".\")\\nprint(sorted(os.listdir(\"/\")))')\n"
        "v = sandbox.run_program(program, isolation='namespaces', guard=False)\n"
        "print(v.status, v.isolation, '|', v.stdout.strip(), '|', v.detail)")
    if out is None:
        pytest.skip("no interpreter an unprivileged user may run")
    if "set-up failed" in out.stdout:
        pytest.skip(f"no user namespace for an unprivileged user here: {out.stdout.strip()}")
    assert out.returncode == 0, out.stderr
    status, isolation = out.stdout.split()[:2]
    assert status == "failed" and isolation == "namespaces" and "PermissionError" in out.stdout, out.stdout


def test_a_directory_left_unreadable_is_removed():
    """A program that makes a directory unreadable and unlistable (as a user root's permissions do not bypass)."""
    out = _unprivileged(
        "import os, tempfile\nroot = tempfile.mkdtemp()\nos.makedirs(root + '/a/b')\n"
        "open(root + '/a/b/f', 'w').close()\nos.chmod(root + '/a', 0)\nsandbox.remove_tree(root)\n"
        "print(os.path.exists(root))")
    if out is None:
        pytest.skip("no interpreter an unprivileged user may run")
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr[-2000:]

@modes("full", "hook", "kernel")
def test_writing_outside_fails(box, mode):
    for target in ("{escape}", "{home}/new.txt", "../../escape.txt"):
        v = box(f"open({target!r}, 'w').write('x')")
        assert v.status == "failed", (target, v)
    v = box("open({canary!r}, 'a').write('more')")
    assert v.status == "failed"
    expected = "PermissionError: sandbox: open refused" if mode != "kernel" else "FileNotFoundError"
    assert v.detail.startswith(expected)


@modes("full", "kernel")
def test_big_files_and_a_full_disk_fail(box, mode):
    v = box("open('big', 'wb').write(bytes(3 * 2**20))", file_size_mb=1)
    assert v.status == "failed" and "File too large" in v.detail
    v = box("for i in range(10):\n    open(f'f{{i}}', 'wb').write(bytes(2**20))", file_size_mb=1, disk_mb=4)
    assert v.status == "failed" and "No space left" in v.detail


@modes("full", "hook", "kernel")
def test_reading_the_users_files_fails(box, mode):
    v = box("print(open({canary!r}).read())")
    assert v.status == "failed" and "keep me" not in v.stdout
    assert v.detail.startswith("FileNotFoundError" if mode == "kernel" else "PermissionError: sandbox: open")


@modes("full", "hook", "kernel", "ns")
def test_deleting_files_outside_fails(box, mode):
    for source in ("import os\nos.remove({canary!r})", "import shutil\nshutil.rmtree({home!r})",
                   "import os\nos.rename({canary!r}, 'mine.txt')"):
        v = box(source)
        assert v.status == "failed"
        assert v.detail.startswith("FileNotFoundError" if mode in ("kernel", "ns") else "PermissionError: sandbox:")
    v = box("import subprocess\nsubprocess.run(['rm', '-rf', {home!r}], check=True)")
    if mode == "ns":  # rm runs, and finds nothing: the user's files are out of sight
        assert v.status == "passed"
    elif mode == "kernel":  # the seccomp filter refuses execve
        assert v.status == "failed" and v.detail.startswith("PermissionError: [Errno 1] Operation not permitted")
    else:
        assert v.status == "failed" and "subprocess.Popen refused" in v.detail


@modes("full", "hook", "kernel", "ns")
def test_a_socket_reaches_nothing(box, mode):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        v = box(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'hi')")
        assert v.status == "failed"
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert box("import socket\ns = socket.socket()\ns.bind(('0.0.0.0', 0))\ns.listen()").status \
        == ("passed" if mode == "ns" else "failed")  # with namespaces alone: its own empty network


@modes("full", "hook")
def test_os_exit_before_the_end_is_not_a_pass(box, mode):
    v = box("import os\nos._exit(0)\nprint('never')")
    assert v.status == "failed" and v.returncode == 0 and not v.completed
    assert box("import sys\nsys.exit(0)").status == "failed"
    # the stage's config (with the status pipe's descriptor) is not in the program's argv: the obvious forgery,
    # writing `completed` on that pipe and leaving before the tests, finds nothing to parse
    forged = box("import json, os, sys\nprint(sys.argv)\nfd = json.loads(sys.argv[-1])['status_fd']\n"
                 "os.write(fd, b'completed\\n')\nos._exit(0)")
    assert forged.stdout == "['program.py']\n" and forged.status == "failed" and not forged.completed


@modes("full", "hook")
def test_a_program_that_reached_its_last_line_passes_whatever_follows(box, mode):
    """HumanEval's harness counts a pass when the program's last line has run; a thread that outlives it or an
    atexit hook that exits non-zero was scored a timeout or a failure."""
    v = box("import threading, time\nthreading.Thread(target=lambda: time.sleep(60)).start()\nprint('done')",
            timeout_s=1)
    assert v.status == "passed" and v.completed and "wall-clock" in v.detail and v.stdout == "done\n"
    v = box("import atexit, os\natexit.register(lambda: os._exit(3))\nprint('done')")
    assert v.status == "passed" and v.returncode == 3 and "exit status 3" in v.detail


@modes("full", "hook")
def test_printing_megabytes_is_cut(box, mode):
    v = box("import sys\nfor _ in range(800):\n    sys.stdout.write('x' * 10_000 + '\\n')\nprint('END')",
            max_output_bytes=50_000)
    assert v.status == "passed" and v.stdout_truncated
    assert v.stdout.startswith("x" * 1000) and v.stdout.endswith("END\n") and len(v.stdout) < 60_000


# --- the parts ----------------------------------------------------------------------------------------


def test_capture_keeps_head_and_tail():
    c = Capture(10)
    for chunk in (b"0123456789", b"abcdef", b"XYZ"):
        c.feed(chunk)
    assert c.truncated and c.total == 19
    assert c.text() == "0123456789\n[... 0 bytes cut ...]\nabcdefXYZ"
    small = Capture(10)
    small.feed(b"hi")
    assert small.text() == "hi" and not small.truncated


def test_bad_isolation_is_named():
    with pytest.raises(ValueError, match="isolation='chroot'"):
        run_program("", isolation="chroot")


def test_a_set_up_failure_is_an_error_not_a_failure(tmp_path):
    v = run_program("print(1)", max_open_files=0, workroot=str(tmp_path))  # it cannot open program.py
    assert v.status == "error" and "set-up failed" in v.detail and not v.completed
    assert list(tmp_path.iterdir()) == []


# --- what a program cannot do to the verdict, the evaluation or the host (session 35's probe) -----------------

FORGE = ("import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, {lines!r})\n    except OSError:\n"
         "        pass\nos._exit(0)")


@modes("full", "hook")
@pytest.mark.parametrize("lines", [b"signal x\n", b"error it was the sandbox\n", b"signal 9\n", b"isolation none\n"])
def test_lines_a_program_writes_on_the_status_pipe_claim_no_set_up_error_and_raise_nothing(box, mode, lines):
    """A program can find the status pipe; what it writes there after `started` is not the sandbox's word: no
    set-up `error` (which would stop a whole evaluation), no signal its boot stage did not see, no exception out of
    run_program, and the layers reported are those that held."""
    v = box(FORGE.format(lines=lines))
    assert v.status == "failed" and v.returncode == 0 and not v.completed, v
    assert "hook" in v.isolation and v.isolation != "none hook"


@modes("full", "hook")
def test_replacing_a_builtin_does_not_switch_the_audit_hook_off(box, mode):
    v = box("import builtins\nbuiltins.any = lambda it: True\nbuiltins.isinstance = lambda *a: False\n"
            "open({escape!r}, 'w').write('x')")
    assert v.status == "failed" and v.detail.startswith("PermissionError: sandbox: open refused"), v


@modes("full", "hook", "kernel")
def test_the_seccomp_filter_refuses_exec_memfd_and_shared_memory(box, mode):
    """Calls the hook can be talked round and the address-space limit does not count: refused by the kernel."""
    import platform

    from dgft.sandbox_child import AUDIT_ARCH

    if platform.machine() not in AUDIT_ARCH:
        pytest.skip(f"no seccomp list for {platform.machine()}")
    v = box("import os\nos.memfd_create('x')")
    assert v.status == "failed" and v.detail.startswith("PermissionError: [Errno 1]") and "seccomp" in v.isolation
    if mode == "kernel":  # without the hook, ctypes reaches libc: the filter alone refuses
        v = box("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                "print(libc.shmget(0, 2**20, 0o1600), ctypes.get_errno(), libc.execve(b'/bin/true', None, None))")
        assert v.status == "passed" and v.stdout.split() == ["-1", "1", "-1"], v


@modes("full", "hook")
def test_forks_together_are_held_to_the_memory_limit(box, mode):
    """RLIMIT_AS holds each process to memory_mb; three forks holding 150 MB each hold more together, and are
    stopped as out of memory (the parent checks the processes' memory together)."""
    v = box("import os, time\nfor _ in range(3):\n    if os.fork() == 0:\n"
            "        block = bytearray(b'x') * (150 * 2**20)\n        time.sleep(30)\n        os._exit(0)\n"
            "time.sleep(30)", memory_mb=256, timeout_s=10)
    assert v.status == "oom" and "together" in v.detail and "256 MB" in v.detail and v.wall_s < 5, v


def test_a_program_larger_than_the_sandbox_fails_without_running():
    v = run_program("x = 1\n" + "#" * (2 * 2**20), file_size_mb=1)
    assert v.status == "failed" and "larger than the sandbox's file size limit (1 MB)" in v.detail


def test_auto_refuses_root_without_a_user_id_of_its_own(monkeypatch):
    """Without namespaces, root keeps no layer but the hook and seccomp unless the program gets a user id of its
    own: `auto` says so (status error, nothing run) rather than run it as root; isolation=process is the opt-in."""
    import dgft.sandbox as S

    monkeypatch.setattr(S, "namespaces_available", lambda: False)
    monkeypatch.setattr(S, "readable_by_others", lambda paths: False)
    monkeypatch.setattr(S.os, "geteuid", lambda: 0)
    v = run_program("print(1)")
    assert v.status == "error" and v.detail == S.ROOT_UNISOLATED and not v.completed


@modes("full", "hook")
def test_threads_still_start_under_the_seccomp_filter(box, mode):
    """clone3 fails with ENOSYS (its flags are out of the filter's reach), so the C library starts threads by clone."""
    v = box("import threading\nout = []\nt = threading.Thread(target=lambda: out.append(1))\nt.start()\nt.join()\n"
            "print(out)")
    assert v.status == "passed" and v.stdout == "[1]\n", v


@modes("kernel")
def test_clone_into_new_namespaces_is_refused(box, mode):
    """A new user namespace would give the program every capability there (chroot again, climb out of the root)."""
    import platform

    from dgft.sandbox_child import syscall_number

    clone = syscall_number("clone")
    if clone is None:
        pytest.skip(f"no seccomp list for {platform.machine()}")
    v = box("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            f"print(libc.syscall({clone}, 0x10000000 | 17, 0, 0, 0, 0), ctypes.get_errno())")
    assert v.status == "passed" and v.stdout.split() == ["-1", "1"], v


def test_the_namespace_probe_and_an_up_front_refusal(monkeypatch):
    """The probe runs the namespaces alone (no hook, no filter), so a kernel without seccomp still gets them; an
    evaluation asks `cannot_isolate` before it samples, and gets ROOT_UNISOLATED where run_program would."""
    import dgft.sandbox as S

    monkeypatch.setattr(S, "namespaces_available", lambda: False)
    monkeypatch.setattr(S, "readable_by_others", lambda paths: False)
    monkeypatch.setattr(S.os, "geteuid", lambda: 0)
    assert S.cannot_isolate("auto") == S.ROOT_UNISOLATED and S.cannot_isolate("process") is None
    assert "kernel refuses the namespaces" in S.cannot_isolate("namespaces")


def test_the_sweep_kills_the_sandboxs_stages_only(tmp_path):
    """The final sweep finds forks that left the group by their stage's command line; a host process that merely
    names the sandbox's directory (`ls`, an editor, `tail -f` of a file in it) is not one of them and lives on."""
    token = f"dgft-sandbox-{uuid.uuid4().hex}"
    sleep = "import time\ntime.sleep(60)"
    host = subprocess.Popen([sys.executable, "-c", sleep, f"/tmp/{token}/work/notes.txt"])
    stage = subprocess.Popen([sys.executable, "-c", sleep, "guard", json.dumps({"token": token})],
                             start_new_session=True)
    leader = subprocess.Popen([sys.executable, "-c", sleep], start_new_session=True)  # the run's group
    try:
        time.sleep(0.3)  # both have exec'd: /proc shows their command lines
        assert sorted(sandbox_processes(leader.pid, None, token)) == sorted([leader.pid, stage.pid])
        kill_all(leader.pid, None, token)
        assert stage.wait(5) == -9 and leader.wait(5) == -9
        assert host.poll() is None, "the sweep killed a host process that only named the sandbox's directory"
    finally:
        for p in (host, stage, leader):
            p.kill()
            p.wait()
