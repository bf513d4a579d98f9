"""Run an untrusted Python program in a sandbox and return a verdict; the machine is left as it was.

Example: `run_program("print(1 + 1)")` -> Verdict(status="passed", stdout="2\\n", ...);
`run_program("while True: pass", timeout_s=1)` -> Verdict(status="timeout", ...).

Each program gets a fresh interpreter (isolated as `python -I -S -B`, but with a fixed string-hash seed so that a
verdict does not change from run to run; minimal environment, stdin /dev/null) in a session
and process group of its own and a fresh temporary directory, removed afterwards. The layers, and who
enforces them (`Verdict.isolation` names those that held for a run):

- Always, by the kernel or this process: wall-clock timeout (SIGKILL); RLIMIT_CPU, RLIMIT_AS (memory, per
  process), RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_CORE = 0; the memory of all its processes together (proportional
  set sizes, checked every POLL_S: over `memory_mb`, all are killed and the status is oom); output read to the end
  but kept only up to `max_output_bytes`; at the end SIGKILL to its process group, to every process of its user
  id and to every stage of it, forks that left the group included (`is_stage`: this interpreter running stage `boot`
  or `guard` with a config that names its directory; a host process that merely names it is left alone), repeated
  until none is left, and only then is the first process reaped.
- Unless `seccomp=False`, by the kernel: a seccomp filter (`sandbox_child.SECCOMP_DENIED`, x86-64 and arm64)
  fails with EPERM the calls no test program needs and that would get round the other layers: execve (another
  program, or an interpreter without the audit hook), sockets, memory outside the address-space limit
  (memfd_create, SysV shared memory, message queues), ptrace and pidfd_getfd, mounts, namespaces (unshare, setns,
  clone with a CLONE_NEW* flag; clone3 gets ENOSYS, so the C library uses clone), bpf, keys, userfaultfd, io_uring.
  The memory check runs over the process tree below the first process (a daemon the program double-forks stays
  in it under namespaces, whose init adopts it) and can be overshot for up to POLL_S.
- With namespaces ("namespaces", the default where the kernel allows; as root directly, otherwise inside
  a user namespace), by the kernel: new pid namespace (the first process's end kills everything it
  started), network namespace (no interface but a loopback that is down), IPC and UTS namespaces, and a
  mount namespace chrooted into a read-only tmpfs that holds only read-only binds of the interpreter's
  directories and /usr plus /dev/null, /dev/zero, /dev/urandom: the user's files are not there to read,
  write or delete. Its directory is a private tmpfs of `disk_mb`. `no_new_privs` is set. In a user namespace
  the program runs as its root with every capability dropped (the bounding set too), so it cannot chroot again
  and climb out of the new root.
- As root, by the kernel: a user id of its own (FIRST_UID + pid, owning nothing), under which
  RLIMIT_NPROC holds (root is exempt from it). Without namespaces this needs the interpreter's
  directories to be readable by others; a user namespace gets the same limit counted inside it. Root with neither
  is refused under "auto" (status error, ROOT_UNISOLATED): only an explicit "process" runs it as root.
- Unless `guard=False`, by Python: an audit hook (PEP 578) that refuses sockets, subprocesses, exec,
  spawn, os.system, ctypes, writes/deletes/renames/chmods outside its directory, reads outside it and the
  interpreter, signals to processes outside its group, and forks beyond `max_processes - 1` (forked
  children may not fork again). It is the only guard of files under "process" isolation, and it is not a
  security boundary: code that means harm can get round it (`os.open` relative to a directory descriptor,
  tampering with the hook's state through introspection; the builtins it calls are bound when it is installed,
  so replacing `builtins.any` does not switch it off). Hence the kernel layers come first.
- "passed" means the program ran to its last line: the guard writes `completed` on the status pipe after it, in
  the same interpreter. The program's `sys.argv` is `["program.py"]`, so the pipe is not handed to it, but code
  that means to can still find it (by trying descriptors, or in the guard's frame) and write the line itself
  before exiting early. The verdict holds against programs that fail or exit early, not against one written to
  forge it. What it writes there can forge its own verdict only: the guard writes `started` before the program's
  first line, and no set-up error is read after it (such an error stops a whole evaluation), nor a signal the
  boot stage's exit status does not confirm.

Linux only. Under "process" isolation, killed forks become zombies of init until it reaps them. The
program's side of all this is `dgft/sandbox_child.py`.
"""

from __future__ import annotations

import collections
import json
import math
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CHILD_PATH = Path(__file__).with_name("sandbox_child.py")
FIRST_UID = 200_000_000  # sandbox user ids are FIRST_UID + the boot process's pid: unused, unique while it runs
STATUSES = ("passed", "failed", "timeout", "oom", "killed", "error")
POLL_S = 0.1  # how often the memory of a program's processes together is checked
ROOT_UNISOLATED = ("no isolation for a program run by root here: the kernel refuses the namespaces, and a user id of "
                   "its own needs the interpreter's directories readable by others; run as a user who is not root, "
                   "make them readable (chmod o+rx), or pass isolation=process to accept the audit hook and seccomp "
                   "alone, as root")


@dataclass
class Verdict:
    """How a program ended. `status`: passed (ran to its last line, whatever its exit after that: a thread
    that outlives it or an atexit hook, as HumanEval's harness counts it; `detail` says so), failed (exception, non-zero
    exit, or exit before the end), timeout (wall or CPU limit), oom (memory limit), killed (another signal),
    error (the sandbox could not be set up: nothing of the program ran)."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    wall_s: float
    completed: bool  # the program's last line ran
    detail: str  # one line on why: "wall-clock limit of 1 s", the exception's last line, ...
    isolation: str  # layers that held, e.g. "namespaces uid hook" or "process hook"
    pgid: int  # its process group (for checks that nothing survived)
    uid: int | None  # its own user id, when it had one

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_program(source: str, *, timeout_s: float = 3.0, memory_mb: int = 1024, file_size_mb: int = 16,
                disk_mb: int = 64, max_processes: int = 16, max_open_files: int = 64,
                max_output_bytes: int = 64 * 1024, isolation: str = "auto", guard: bool = True,
                seccomp: bool = True, workroot: str | None = None) -> Verdict:
    """Run `source` as `__main__` in a sandbox; never raises for anything the program does.

    `memory_mb` is address space (Python itself takes about 30 MB); `disk_mb` is the size of the program's
    directory with namespaces (without, only `file_size_mb` per file holds); output beyond
    `max_output_bytes` per stream is read and dropped, keeping the head and the last 4 KiB. `isolation`:
    "auto" (namespaces when the kernel allows; else "process", but never as root without a user id of its own:
    status error, saying why), "namespaces" (status error when the kernel does not allow them) or "process".
    `memory_mb` also bounds the memory of all its processes together (`collect`'s check, every POLL_S).
    `guard=False` leaves out the audit hook, `seccomp=False` the system-call filter (to test the other layers
    alone). `workroot`: where the temporary directory goes (default: the system's).
    """
    if isolation not in ("auto", "namespaces", "process"):
        raise ValueError(f"isolation={isolation!r}: expected auto, namespaces or process")
    program = source.encode("utf-8", "surrogatepass")  # a lone surrogate: not UTF-8, so the program fails to compile
    room_mb = min(disk_mb, file_size_mb)
    if len(program) > room_mb * 2**20:  # it could not be copied in: the program's fault, not the sandbox's
        return Verdict("failed", None, "", "", False, False, 0.0, False, f"the program ({len(program):,} bytes) is "
                       f"larger than the sandbox's file size limit ({room_mb} MB)", "not run", 0, None)
    if isolation == "auto" and (why := cannot_isolate(isolation)):  # "namespaces": its set-up error says it
        return Verdict("error", None, "", "", False, False, 0.0, False, why, "none", 0, None)
    if isolation == "auto":
        isolation = "namespaces" if namespaces_available() else "process"
    tmp = tempfile.mkdtemp(prefix="dgft-sandbox-", dir=workroot)
    workdir, root = os.path.join(tmp, "work"), os.path.join(tmp, "root")
    os.mkdir(workdir)
    os.mkdir(root)
    Path(workdir, "program.py").write_bytes(program)
    read_roots = interpreter_paths()
    own_uid = os.geteuid() == 0 and (isolation == "namespaces" or readable_by_others(read_roots))
    token = os.path.basename(tmp)  # on every sandbox process's command line, for the final sweep
    status_r, status_w = os.pipe()
    cfg = {"status_fd": status_w, "isolation": isolation, "workdir": workdir, "root": root, "token": token,
           "read_roots": read_roots, "first_uid": FIRST_UID if own_uid else None, "guard": guard,
           "memory_mb": memory_mb, "file_size_mb": file_size_mb, "disk_mb": disk_mb,
           "max_processes": max_processes, "max_open_files": max_open_files, "seccomp": seccomp,
           "cpu_s": max(1, math.ceil(timeout_s)) + 1}
    argv = [sys.executable, "-I", "-S", "-B", str(CHILD_PATH), "boot", json.dumps(cfg)]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    start = time.monotonic()
    proc, uid = None, None
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, cwd=workdir, start_new_session=True, pass_fds=(status_w,))
        os.close(status_w)
        status_w = -1
        uid = FIRST_UID + proc.pid if own_uid else None  # what the boot stage computes from its own pid
        out, err, timed_out, held_mb = collect(proc, start + timeout_s, max_output_bytes,
                                               cleanup=lambda: kill_all(proc.pid, uid, token),
                                               memory=lambda: memory_mb_of(process_tree(proc.pid)
                                                                           or sandbox_processes(proc.pid, uid, token)),
                                               memory_mb=memory_mb)
    finally:
        if status_w >= 0:
            os.close(status_w)
        if proc is not None:
            kill_all(proc.pid, uid, token)
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        status = read_all(status_r)
        remove_tree(tmp)
    wall = time.monotonic() - start
    verdict = judge(proc.returncode, status, out, err, timed_out, timeout_s, cfg["cpu_s"])
    if held_mb is not None and not verdict["completed"]:
        verdict.update(status="oom", detail=f"its processes together held {held_mb:,.0f} MB, over the memory limit "
                                            f"of {memory_mb} MB")
    return Verdict(**verdict, stdout=out.text(), stderr=err.text(), stdout_truncated=out.truncated,
                   stderr_truncated=err.truncated, wall_s=wall, pgid=proc.pid, uid=uid,
                   isolation=verdict_isolation(status, guard))


def collect(proc, deadline, cap, cleanup, memory=None, memory_mb=None):
    """Read both streams until the first process has ended and they are closed, or the deadline passes
    -> (stdout, stderr, timed_out, held_mb). Once the first process has ended, `cleanup` kills what it left behind,
    while the unreaped process still holds its pid (so neither its group id nor its user id can be reused).
    Every POLL_S from the first, `memory()` (MB its processes hold together) is checked against `memory_mb`: over
    it, `cleanup` kills them all and `held_mb` says how much they held (else None). RLIMIT_AS holds per process;
    this holds for forks together (the kernel's seccomp filter keeps memory outside address spaces out)."""
    out, err = Capture(cap), Capture(cap)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    ended, held_mb, check_at = False, None, time.monotonic() + POLL_S
    while True:
        if not ended and exited(proc.pid):
            ended = True
            cleanup()
            deadline = min(deadline, time.monotonic() + 1.0)  # a stray holder of the pipes cannot stall us
        elif not ended and memory is not None and time.monotonic() >= check_at:
            check_at = time.monotonic() + POLL_S
            held = memory()
            if held > memory_mb:
                held_mb = held
                cleanup()  # its first process ends too, and the loop goes on as after any end
        now = time.monotonic()
        if (ended and not sel.get_map()) or now >= deadline:
            break
        if not sel.get_map():  # it closed both streams and runs on
            time.sleep(min(0.02, deadline - now))
        for key, _ in sel.select(timeout=min(0.05, deadline - now)) if sel.get_map() else ():
            chunk = os.read(key.fd, 65536)
            if chunk:
                key.data.feed(chunk)
            else:
                sel.unregister(key.fileobj)
    sel.close()
    return out, err, not ended, held_mb


def exited(pid: int) -> bool:
    """Whether our child `pid` has ended, without reaping it."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


class Capture:
    """One output stream: its first `cap` bytes and its last 4 KiB, with the total seen."""

    TAIL = 4096

    def __init__(self, cap: int):
        self.cap, self.head, self.tail, self.total = cap, bytearray(), collections.deque(maxlen=self.TAIL), 0

    def feed(self, chunk: bytes):
        self.total += len(chunk)
        if len(self.head) < self.cap:
            self.head += chunk[: self.cap - len(self.head)]
        self.tail.extend(chunk[-self.TAIL:])

    @property
    def truncated(self) -> bool:
        return self.total > self.cap

    def text(self) -> str:
        head = self.head.decode("utf-8", "replace")
        if not self.truncated:
            return head
        shown = min(self.TAIL, self.total - self.cap)
        tail = bytes(self.tail)[-shown:].decode("utf-8", "replace")
        return f"{head}\n[... {self.total - self.cap - shown} bytes cut ...]\n{tail}"


def judge(returncode, status, out, err, timed_out, timeout_s, cpu_s) -> dict:
    """status, returncode, completed and detail of a run, from its end and its status-pipe lines. Lines after
    `started` may be the program's own: no set-up error is read there, and a `signal n` line counts only when the
    boot stage exited 128 + n as it does after one. Never raises, whatever the lines say."""
    lines = status.splitlines()
    setup = lines[:lines.index("started")] if "started" in lines else lines
    signals = {line[len("signal "):] for line in lines if line.startswith("signal ")}
    if returncode is not None and returncode > 128 and str(returncode - 128) in signals:
        returncode = 128 - returncode  # the namespace's first process died of this signal
    error = next((line[len("error "):] for line in setup if line.startswith("error ")), None)
    completed = "completed" in lines[len(setup):]
    last = next((line for line in reversed(err.text().splitlines()) if line.strip()), "")
    if error is not None and not completed:
        status_, detail = "error", f"sandbox set-up failed: {error}"
    elif completed:  # it ran to its last line, as HumanEval's harness counts a pass; what came after is detail
        after = ("then the wall-clock limit" if timed_out else f"then exit status {returncode}" if returncode
                 else "")
        status_, detail = "passed", after
    elif timed_out:
        status_, detail = "timeout", f"wall-clock limit of {timeout_s:g} s"
    elif returncode == -signal.SIGXCPU:
        status_, detail = "timeout", f"CPU limit of {cpu_s} s"
    elif last.startswith("MemoryError"):
        status_, detail = "oom", last
    elif returncode < 0:
        status_, detail = "killed", f"signal {signal_name(-returncode)}"
    elif returncode == 0:
        status_, detail = "failed", "exited with status 0 before its last line (os._exit or sys.exit)"
    else:
        status_, detail = "failed", last or f"exit status {returncode}"
    return {"status": status_, "returncode": returncode, "completed": completed, "detail": detail}


def signal_name(number: int) -> str:
    """SIGKILL for 9; SIGRTMIN+6 for a real-time signal, which `signal.Signals` does not name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        rtmin = getattr(signal, "SIGRTMIN", None)
        return f"SIGRTMIN+{number - rtmin}" if rtmin is not None and number > rtmin else f"signal number {number}"


def verdict_isolation(status: str, guard: bool) -> str:
    """The layers that held, from the set-up lines (those before `started`, which the program cannot write)."""
    lines = status.splitlines()
    if "started" not in lines:
        return "none"
    setup = lines[:lines.index("started")]
    line = next((line for line in setup if line.startswith("isolation ")), "isolation none")
    return line[len("isolation "):] + (" seccomp" if "seccomp" in setup else "") + (" hook" if guard else "")


def process_tree(pid: int) -> list[int] | None:
    """`pid` and every process below it (/proc's children lists: a few files, where scanning all of /proc costs
    milliseconds every POLL_S); None where /proc has no children lists. Under namespaces a daemon the program
    double-forks is still below (the namespace's init adopts it); under "process" isolation it leaves the tree, and
    only its own RLIMIT_AS and the final sweep hold it."""
    if not os.path.exists(f"/proc/{pid}/task/{pid}/children"):
        return None
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.scandir(f"/proc/{current}/task"):
                todo += [int(c) for c in Path(task.path, "children").read_text().split()]
        except (OSError, ValueError):
            continue  # it ended meanwhile
    return found


def memory_mb_of(pids: list[int]) -> float:
    """MB that processes hold together: the sum of their proportional set sizes (a page shared by n of them counts
    1/n in each, so a fork's inherited pages count once), or resident sizes where /proc has no smaps_rollup."""
    total_kb = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
            total_kb += next(int(line.split()[1]) for line in text.splitlines() if line.startswith("Pss:"))
        except (OSError, StopIteration, ValueError, IndexError):
            try:
                pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
                total_kb += pages * os.sysconf("SC_PAGE_SIZE") // 1024
            except (OSError, ValueError, IndexError):
                continue  # it ended meanwhile
    return total_kb / 1024


# --- cleanup -----------------------------------------------------------------------------------------


def kill_all(pgid: int, uid: int | None, token: str):
    """SIGKILL the process group, every process of `uid` and every stage of the sandbox whose config holds `token`
    (forks of the sandbox's interpreters that left the group; `is_stage`), until none is left."""
    for _ in range(50):
        victims = sandbox_processes(pgid, uid, token)
        if not victims:
            return
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if _alive_group(pgid):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)


def sandbox_processes(pgid: int, uid: int | None, token: str, include_zombies: bool = False) -> list[int]:
    """Live processes that belong to a sandbox run: its group, its uid, or a stage of it (`is_stage`)."""
    found = []
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            stat_fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            state, pg = stat_fields[0], int(stat_fields[2])
            if state == "Z" and not include_zombies:
                continue
            owner = os.stat(entry.path).st_uid
            hit = pg == pgid or (uid is not None and owner == uid)
            if not hit:
                hit = is_stage(Path(entry.path, "cmdline").read_bytes(), token)
        except (OSError, IndexError, ValueError):
            continue
        if hit:
            found.append(int(entry.name))
    return found


def is_stage(cmdline: bytes, token: str) -> bool:
    """Whether a /proc command line is a stage of this sandbox or a fork of one (`<this python> ... boot|guard
    <config>`, the config holding `token`). A process whose command line merely mentions the token (`ls` of the
    sandbox's directory, an editor) is none of the sandbox's: the sweep leaves it alone."""
    args = cmdline.rstrip(b"\0").split(b"\0")
    return (len(args) >= 3 and args[-2] in (b"boot", b"guard") and args[-1].startswith(b"{")
            and token.encode() in args[-1] and args[0] == os.fsencode(sys.executable))


def _alive_group(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def read_all(fd: int) -> str:
    """Whatever the stages wrote on the status pipe (non-blocking: a stray holder cannot stall us)."""
    os.set_blocking(fd, False)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


def remove_tree(path: str):
    """rmtree that also removes what a program left read-only."""
    def force(func, target, _):
        try:
            os.chmod(os.path.dirname(target), 0o700)
            os.chmod(target, 0o700)
            if func in (os.open, os.scandir, os.listdir, os.lstat):  # a directory it could not open or list
                rmtree(target)
            else:
                func(target)
        except OSError:
            pass

    def rmtree(target):
        if sys.version_info >= (3, 12):
            shutil.rmtree(target, onexc=force)
        else:
            shutil.rmtree(target, onerror=force)

    rmtree(path)


# --- environment -------------------------------------------------------------------------------------


def interpreter_paths() -> list[str]:
    """Directories the program may read: the interpreter's prefixes and /usr (shared libraries, time zones)."""
    paths = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)} | {"/usr"}
    return sorted(p for p in paths if os.path.isdir(p))


def readable_by_others(paths: list[str]) -> bool:
    """Whether a user that owns nothing can reach and read each of `paths` (every parent searchable)."""
    for path in paths:
        parts = Path(path).parts
        for i in range(1, len(parts) + 1):
            mode = os.stat(os.path.join(*parts[:i])).st_mode
            if not (mode & stat.S_IXOTH and mode & stat.S_IROTH):
                return False
    return True


_NAMESPACES: bool | None = None


def cannot_isolate(isolation: str) -> str | None:
    """Why `run_program(..., isolation=isolation)` would run nothing here (ROOT_UNISOLATED for "auto" as root without
    namespaces or a user id of its own; "namespaces" where the kernel refuses them), else None: asked before work
    whose programs it will run, so the refusal comes first."""
    if isolation == "auto" and not namespaces_available() and os.geteuid() == 0 \
            and not readable_by_others(interpreter_paths()):
        return ROOT_UNISOLATED
    if isolation == "namespaces" and not namespaces_available():
        return "the kernel refuses the namespaces here (unshare failed); pass isolation=auto or process"
    return None


def namespaces_available() -> bool:
    """Whether this kernel lets us enter the namespaces (probed once by running an empty program)."""
    global _NAMESPACES
    if _NAMESPACES is None:
        _NAMESPACES = sys.platform == "linux" and run_program("", isolation="namespaces", timeout_s=10,
                                                              guard=False, seccomp=False).passed
    return _NAMESPACES
