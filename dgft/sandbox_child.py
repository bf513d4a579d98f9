"""The child side of `dgft.sandbox`: what runs inside the sandbox before, around and after the program.

Standard library only and never imported by dgft: `dgft.sandbox` runs this file in a fresh
`python -I -S -B` (stage `boot`), which hands its own text on to stage `guard` by `-c` (inside the new
root this file is out of sight).

Stage `boot` starts as the caller's user. With namespaces it enters new pid, mount, network, IPC and UTS
namespaces (a user namespace too when not root) and forks the namespace's init, which builds a read-only
root from the interpreter's directories plus a private tmpfs working directory, chroots into it and forks
the process that execs stage `guard`; each parent reaps and exits as its child did. In a user namespace that
process drops every capability first: as the namespace's root it could otherwise chroot again and climb out of the
new root (`chroot` into a subdirectory, then `..`). Without namespaces
`boot` chdirs and execs `guard` itself. Stage `guard` drops to the user id of its own (when started as
root), sets the resource limits, installs the seccomp filter and the audit hook and runs `program.py`; after the
program's last line it writes `completed` on the status pipe, so `os._exit(0)` halfway is not a pass.

Status pipe lines (the parent reads them after the end): `isolation <words>`, `seccomp` (the filter holds),
`error <message>`, then `started` just before the program's first line; after it, `completed` (its last line ran)
and `signal <n>` (the program died of signal n inside the namespaces; the parent believes it only when the boot
stage's exit status says so too). A program can find the pipe and write lines after `started`: the parent reads
no set-up error from there.
"""

import json
import os
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP = 38, 24
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
SETUP_FAILED = 125  # exit status of a stage that could not set the sandbox up (the message is on the pipe)
INSIDE_WORKDIR = "/sandbox"  # the program's directory as seen inside the namespaces


def report(cfg, line):
    os.write(cfg["status_fd"], (line + "\n").encode())


def fail(cfg, message):
    report(cfg, f"error {message}")
    os._exit(SETUP_FAILED)


# --- stage boot --------------------------------------------------------------------------------------


def boot(cfg):
    with open(__file__) as f:
        own_source = f.read()
    cfg["uid"] = cfg["first_uid"] + os.getpid() if cfg["first_uid"] is not None else None
    os.environ.update(HOME=cfg["workdir"], TMPDIR=cfg["workdir"])
    if cfg["isolation"] == "namespaces":
        libc = load_libc(cfg)
        enter_namespaces(cfg, libc)
        pid = os.fork()
        if pid:
            relay_exit(cfg, pid)
        build_root(cfg, libc)  # in the namespace's first process, its init: it reaps, the program is its child
        pid = os.fork()
        if pid:
            relay_exit(cfg, pid)
        if cfg["uid"] is None:  # root of a user namespace (as root, guard takes a user id of its own instead)
            drop_capabilities(libc)
        cfg["workdir"] = INSIDE_WORKDIR
        os.environ.update(HOME=INSIDE_WORKDIR, TMPDIR=INSIDE_WORKDIR)
        report(cfg, "isolation namespaces" + (" uid" if cfg["uid"] is not None else " userns"))
    else:
        os.chdir(cfg["workdir"])
        if cfg["uid"] is not None:
            os.chown(cfg["workdir"], cfg["uid"], cfg["uid"])
        report(cfg, "isolation process" + (" uid" if cfg["uid"] is not None else ""))
    # -s -S -B -P with no PYTHON* variable but a fixed hash seed: isolated as -I is, but every run iterates a set
    # of strings in the same order, so a verdict does not change from run to run (-I would ignore the seed)
    flags = ["-s", "-S", "-B"] + (["-P"] if sys.version_info >= (3, 11) else [])
    argv = [sys.executable, *flags, "-c", own_source, "guard", json.dumps(cfg)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    os.execve(sys.executable, argv, {**env, "PYTHONHASHSEED": "0"})


def load_libc(cfg):
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]

    def call(name, *args):
        if getattr(libc, name)(*args) != 0:
            err = ctypes.get_errno()
            fail(cfg, f"{name}{args!r}: {os.strerror(err)}")

    return call


def enter_namespaces(cfg, libc):
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    uid, gid = os.getuid(), os.getgid()
    libc("unshare", flags | (0 if uid == 0 else CLONE_NEWUSER))
    if uid != 0:  # become root of the new user namespace, mapped to the caller: mounts are then allowed
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    libc("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def drop_capabilities(libc):
    """Empty the bounding set (so an exec as uid 0 regains nothing), then the effective, permitted and inheritable
    sets (the ambient set follows the permitted one)."""
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    for cap in range(64):  # up to the kernel's last capability: it refuses the first number past it (EINVAL)
        if prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    libc("capset", ctypes.byref(Header(_LINUX_CAPABILITY_VERSION_3, 0)), (Data * 2)())


def relay_exit(cfg, pid):
    """Reap children until `pid` ends, then exit as it did (a signal is reported on the pipe). When the
    namespace's init exits, the kernel kills whatever else runs in it."""
    while True:
        done, status = os.waitpid(-1, 0)
        if done == pid:
            break
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        report(cfg, f"signal {-code}")
        os._exit(128 - code)
    os._exit(code)


def build_root(cfg, libc):
    """A tmpfs root holding read-only binds of the interpreter's directories and a tmpfs `/sandbox`."""
    root = cfg["root"]
    libc("mount", None, b"/", None, MS_REC | MS_PRIVATE, None)  # nothing below propagates to the host
    libc("mount", b"tmpfs", root.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"size=1m,mode=755")
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):  # merged-/usr links, kept as links
        if os.path.islink("/" + top):
            os.symlink(os.readlink("/" + top), f"{root}/{top}")
    for path in cfg["read_roots"]:
        if os.path.isdir(path) and not os.path.islink(path):
            bind(libc, path, root + path, MS_RDONLY | MS_NOSUID | MS_NODEV)
    for dev in ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"):
        bind(libc, dev, root + dev, MS_NOSUID)  # devices, so no MS_NODEV
    work = root + INSIDE_WORKDIR
    os.makedirs(work)
    size = f"size={cfg['disk_mb']}m,mode=700".encode()
    libc("mount", b"tmpfs", work.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, size)
    with open(os.path.join(cfg["workdir"], "program.py"), "rb") as src, open(work + "/program.py", "wb") as dst:
        dst.write(src.read())
    if cfg["uid"] is not None:
        os.chown(work, cfg["uid"], cfg["uid"])
    libc("mount", None, root.encode(), None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None)
    os.chroot(root)
    os.chdir(INSIDE_WORKDIR)


def bind(libc, source, target, flags):
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    elif os.path.exists(source):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "w").close()
    else:
        return
    libc("mount", source.encode(), target.encode(), None, MS_BIND | MS_REC, None)
    libc("mount", None, target.encode(), None, MS_BIND | MS_REMOUNT | flags, None)


# --- stage guard -------------------------------------------------------------------------------------


def guard(cfg):
    import resource
    import traceback  # imported before the hook: printing the program's traceback needs it

    if cfg["uid"] is not None:
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])
    mb = 1024 * 1024
    limits = [(resource.RLIMIT_CORE, 0), (resource.RLIMIT_AS, cfg["memory_mb"] * mb),
              (resource.RLIMIT_FSIZE, cfg["file_size_mb"] * mb), (resource.RLIMIT_NOFILE, cfg["max_open_files"])]
    if cfg["uid"] is not None or cfg["isolation"] == "namespaces":  # root ignores RLIMIT_NPROC
        limits.append((resource.RLIMIT_NPROC, cfg["max_processes"]))
    for kind, value in limits:
        resource.setrlimit(kind, (value, value))
    resource.setrlimit(resource.RLIMIT_CPU, (cfg["cpu_s"], cfg["cpu_s"] + 1))  # soft: SIGXCPU, hard: SIGKILL
    with open("program.py", "rb") as f:
        source = f.read()
    if cfg["seccomp"] and install_seccomp():
        report(cfg, "seccomp")
    if cfg["guard"]:
        install_audit_hook(cfg["workdir"], cfg["read_roots"], cfg["max_processes"] - 1)
    report(cfg, "started")  # what the pipe says after this line may be the program's: only set-up lines come before
    namespace = {"__name__": "__main__", "__file__": "program.py", "__builtins__": __builtins__}
    sys.argv[:] = ["program.py"]  # as `python program.py` shows it: the stage's config (the status pipe) is not
    # handed to the program (it could write `completed` itself); it stays in this frame, see `dgft.sandbox`
    try:  # from here on, whatever goes wrong is the program's doing (a syntax error too)
        exec(compile(source, "program.py", "exec"), namespace)
    except MemoryError:
        namespace.clear()  # the traceback's frames would keep the program's allocations alive
        try:
            os.write(2, f"MemoryError: memory limit of {cfg['memory_mb']} MB reached\n".encode())
        except OSError:
            pass  # the program closed its stderr
        os._exit(1)
    except SystemExit:
        raise  # an explicit exit before the end: its status stands, but no `completed`
    except BaseException as e:
        try:  # the program may have closed or replaced stderr: it failed all the same, and that is no set-up error
            traceback.print_exception(type(e), e, e.__traceback__.tb_next)  # drop this frame
        except BaseException:  # noqa: BLE001
            pass
        flush()  # what it printed before failing comes back too
        os._exit(1)
    flush()
    report(cfg, "completed")


def flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass  # the program closed or replaced it: its business


# System calls the program never gets (EPERM): starting another program (execve, execveat: an interpreter without
# the audit hook, a binary), memory the address-space limit does not count (memfd_create, memfd_secret, SysV shared
# memory, message queues), sockets, reading or writing other processes (ptrace, process_vm_*, pidfd_getfd), and
# mounts, namespaces, chroot, file handles, keys, bpf, perf events, userfaultfd and io_uring (clone into new
# namespaces: install_seccomp).
SECCOMP_DENIED = ("execve", "execveat", "memfd_create", "memfd_secret", "shmget", "shmat", "msgget", "mq_open",
                  "socket", "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "unshare", "setns",
                  "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount", "fsopen", "fsmount",
                  "mount_setattr", "open_by_handle_at", "add_key", "request_key", "keyctl", "bpf", "perf_event_open",
                  "userfaultfd", "io_uring_setup")
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}  # the architectures with a table, and the filter's check
SYSCALLS = {  # name: (x86-64 number, arm64 number)
    "execve": (59, 221), "execveat": (322, 281), "memfd_create": (319, 279), "memfd_secret": (447, 447),
    "shmget": (29, 194), "shmat": (30, 196), "msgget": (68, 186), "mq_open": (240, 180), "socket": (41, 198),
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271), "pidfd_getfd": (438, 438),
    "unshare": (272, 97), "setns": (308, 268), "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41),
    "chroot": (161, 51), "open_tree": (428, 428), "move_mount": (429, 429), "fsopen": (430, 430),
    "fsmount": (432, 432), "mount_setattr": (442, 442), "open_by_handle_at": (304, 265), "add_key": (248, 217),
    "request_key": (249, 218), "keyctl": (250, 219), "bpf": (321, 280), "perf_event_open": (298, 241),
    "userfaultfd": (323, 282), "io_uring_setup": (425, 425), "clone": (56, 220), "clone3": (435, 435)}


def syscall_number(name, machine=None):
    """`name`'s system-call number on this machine's architecture (platform.machine()); None without a table."""
    import platform

    machine = machine or platform.machine()
    return SYSCALLS[name][list(AUDIT_ARCH).index(machine)] if machine in AUDIT_ARCH else None


CLONE_NEW_ANY = 0x7E020000  # CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
PR_SET_SECCOMP, SECCOMP_MODE_FILTER, EPERM, ENOSYS = 22, 2, 1, 38


def install_seccomp():
    """A seccomp filter that fails SECCOMP_DENIED's calls with EPERM (any call of another architecture's ABI, and on
    x86-64 every x32 call, too), and clone with a new namespace in its flags; clone3, whose flags sit in memory the
    filter cannot read, fails with ENOSYS, so the C library falls back to clone. The rest is allowed. False on an
    architecture without a list (nothing installed); a filter the kernel refuses is a set-up error. Held by the
    kernel, whatever the program does in Python."""
    import ctypes
    import platform

    audit_arch = AUDIT_ARCH.get(platform.machine())
    if audit_arch is None:
        return False
    denied = {syscall_number(name) for name in SECCOMP_DENIED}
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ/JGE/JSET|K, BPF_RET|K
    allow, refuse = 0x7FFF0000, 0x00050000 | EPERM  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
    clone, clone3 = syscall_number("clone"), syscall_number("clone3")
    checks = [(jge, 0x40000000)] if audit_arch == 0xC000003E else []  # x32 calls: never
    checks += [(jeq, nr) for nr in sorted(denied)]
    code = [(ld, 0, 0, 4), (jeq, 1, 0, audit_arch), (ret, 0, 0, refuse), (ld, 0, 0, 0),  # seccomp_data: nr, arch
            (jeq, 0, 1, clone3), (ret, 0, 0, 0x00050000 | ENOSYS),
            (jeq, 0, 4, clone), (ld, 0, 0, 16), (jset, 0, 1, CLONE_NEW_ANY),  # clone's flags: args[0], low half
            (ret, 0, 0, refuse), (ret, 0, 0, allow)]
    for i, (op, k) in enumerate(checks):
        code.append((op, len(checks) - i, 0, k))  # taken: jump over the rest and the allow, to the refusal
    code += [(ret, 0, 0, allow), (ret, 0, 0, refuse)]

    class Instruction(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                    ("k", ctypes.c_uint32)]

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(Instruction))]

    table = (Instruction * len(code))(*code)
    program = Program(len(code), table)  # both held here while the kernel copies the filter
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    for args in ((PR_SET_NO_NEW_PRIVS, 1, None, 0, 0),
                 (PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(program), 0, 0)):
        if prctl(*args) != 0:
            raise OSError(ctypes.get_errno(), f"prctl{args[:2]}: {os.strerror(ctypes.get_errno())}")
    return True


def install_audit_hook(workdir, read_roots, forks_left):
    """Refuse what the program should not do, at the Python level (see `dgft.sandbox` for its limits). The builtins
    it calls are bound here, so a program that replaces `builtins.any` does not switch it off."""
    import builtins

    join, realpath, getcwd, readlink, fsdecode = os.path.join, os.path.realpath, os.getcwd, os.readlink, os.fsdecode
    any, bool, int, isinstance, len, str = (builtins.any, builtins.bool, builtins.int, builtins.isinstance,
                                            builtins.len, builtins.str)
    PermissionError = builtins.PermissionError
    pid, pgid = os.getpid(), os.getpgrp()
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    roots = [realpath(workdir)]
    readable = roots + [realpath(p) for p in read_roots] + ["/dev/null", "/dev/zero", "/dev/urandom"]
    forks = [forks_left]
    refused = ("socket.", "ctypes.", "subprocess.", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
               "os.forkpty", "pty.", "resource.", "gc.get_", "webbrowser.", "sys.remote_exec")
    # event -> (argument positions that must lie inside the working directory, position of dir_fd)
    writes = {"os.remove": ((0,), 1), "os.rmdir": ((0,), 1), "os.mkdir": ((0,), 2), "os.chmod": ((0,), 2),
              "os.chown": ((0,), 3), "os.utime": ((0,), 3), "os.truncate": ((0,), None),
              "os.rename": ((0, 1), 2), "os.link": ((0, 1), 2), "os.symlink": ((1,), 2),
              "os.setxattr": ((0,), None), "os.removexattr": ((0,), None), "os.chflags": ((0,), None),
              "shutil.rmtree": ((0,), 1), "shutil.copyfile": ((1,), None), "shutil.copytree": ((1,), None),
              "shutil.copymode": ((1,), None), "shutil.copystat": ((1,), None), "shutil.move": ((0, 1), None),
              "shutil.chown": ((0,), None), "shutil.make_archive": ((0,), None)}
    reads = {"os.listdir": 0, "os.scandir": 0, "glob.glob": 0, "os.chdir": 0, "shutil.copyfile": 0,
             "shutil.copytree": 0, "os.listxattr": 0}

    def resolve(path, dir_fd=None):
        if path is None:
            path = "."
        if isinstance(path, int):
            return None  # an open descriptor: already checked when it was opened
        base = getcwd()
        if dir_fd is not None and dir_fd >= 0:
            try:
                base = readlink(f"/proc/self/fd/{dir_fd}")
            except OSError:
                pass  # no /proc (namespaces): resolved against the cwd, the mounts hold anyway
        return realpath(join(base, fsdecode(path)))

    def inside(path, allowed):
        return path is None or any(path == r or path.startswith(r.rstrip("/") + "/") for r in allowed)

    def refuse(event, detail):
        raise PermissionError(f"sandbox: {event} refused ({detail})")

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & write_flags)
            target = resolve(path)
            if not inside(target, roots if writing else readable):
                refuse(event, f"{'writing' if writing else 'reading'} {target} outside the sandbox")
        elif event.startswith(refused):
            refuse(event, "not allowed in the sandbox")
        elif event == "os.fork":
            if forks[0] <= 0:
                refuse(event, "process limit")
            forks[0] -= 1
        elif event in ("os.kill", "os.killpg"):
            target = args[0]
            if not (target in (0, pid) or (event == "os.kill" and target == -pgid) or
                    (event == "os.killpg" and target == pgid)):
                refuse(event, f"signals go only to the sandbox's own process group, not {target}")
        if event in writes:
            positions, fd_at = writes[event]
            dir_fd = args[fd_at] if fd_at is not None and fd_at < len(args) else None
            for i in positions:
                target = resolve(args[i], dir_fd)
                if not inside(target, roots):
                    refuse(event, f"{target} is outside the sandbox")
        if event in reads:
            target = resolve(args[reads[event]])
            if not inside(target, readable):
                refuse(event, f"{target} is outside the sandbox")

    os.register_at_fork(after_in_child=lambda: forks.__setitem__(0, 0))  # only the first process forks
    sys.addaudithook(hook)


if __name__ == "__main__":
    stage, config = sys.argv[1], json.loads(sys.argv[2])
    if stage == "boot":
        try:
            boot(config)
        except Exception as e:  # noqa: BLE001 - any failure to set up is reported, never run unguarded
            fail(config, f"{type(e).__name__}: {e}")
    else:
        try:
            guard(config)
        except SystemExit:
            raise
        except Exception as e:  # raised before the program started: a setup failure  # noqa: BLE001
            fail(config, f"{type(e).__name__}: {e}")
