#!/usr/bin/python3
"""Runs a command under a systemd service unit's hardening, for machines where systemd is not
PID 1 (containers, CI), so that a test can check that the daemon still works under its unit.

    unit-sandbox.py UNIT [--rw PATH]... -- COMMAND [ARG]...

Applies what systemd's executor would, from the unit's [Service] section:
  CapabilityBoundingSet=   the bounding set; root's exec then holds exactly these
  NoNewPrivileges=, UMask=, LimitMEMLOCK=
  ProtectSystem=strict     a private mount namespace, every mount read-only but /dev and /proc,
                           ReadWritePaths= and --rw PATHs (stand-ins for them, e.g. a test's bpffs)
  SystemCallFilter=, SystemCallErrorNumber=, SystemCallArchitectures=native
                           seccomp, with the groups expanded by `systemd-analyze syscall-filter`
  RestrictAddressFamilies= socket() only for the listed families
  MemoryDenyWriteExecute=  no writable and executable mappings
  RestrictNamespaces=yes   no unshare, setns or clone into new namespaces
Settings that only hide things (PrivateTmp=, ProtectHome=, PrivateDevices=, ...) are not
emulated. Needs Debian's python3-seccomp (run with /usr/bin/python3).
"""
import ctypes
import errno
import os
import resource
import socket
import subprocess
import sys

import seccomp

CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
        "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
        "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
        "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
        "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
        "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN",
        "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
        "CAP_CHECKPOINT_RESTORE"]
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 24, 38
CLONE_NEWNS = 0x00020000
NAMESPACE_FLAGS = [0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000,
                   0x00000080]  # NEWNS NEWCGROUP NEWUTS NEWIPC NEWUSER NEWPID NEWNET NEWTIME
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = \
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18
PROT_WRITE, PROT_EXEC = 2, 4

libc = ctypes.CDLL(None, use_errno=True)


def fail(message):
    sys.exit(f"unit-sandbox: {message}")


def check(result, what):
    if result != 0:
        fail(f"{what}: {os.strerror(ctypes.get_errno())}")


def service_settings(path):
    """The [Service] section: key -> list of values, in order (assignments may repeat)."""
    settings, section = {}, None
    with open(path) as unit:
        for line in unit:
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                section = line
            elif section == "[Service]" and "=" in line:
                key, value = line.split("=", 1)
                settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def flag(settings, key):
    return settings.get(key, ["no"])[-1].lower() in ("yes", "true", "1", "on")


def expand(name, seen=None):
    """Syscall names of one SystemCallFilter= entry (@group or a name), groups recursively."""
    if not name.startswith("@"):
        return {name}
    seen = seen if seen is not None else set()
    if name in seen:
        return set()
    seen.add(name)
    out = subprocess.run(["systemd-analyze", "syscall-filter", name], check=True, capture_output=True, text=True).stdout
    names = set()
    for line in out.splitlines()[1:]:
        entry = line.strip()
        if entry and not entry.startswith("#"):
            names |= expand(entry, seen)
    return names


def mounts():
    """(mount point, MS_ flags to keep) of this mount namespace, parents first."""
    with open("/proc/self/mountinfo") as info:
        entries = [line.split() for line in info]
    out = []
    for fields in sorted(entries, key=lambda f: f[4]):
        options = fields[5].split(",")
        keep = (MS_NOSUID if "nosuid" in options else 0) | (MS_NODEV if "nodev" in options else 0) \
            | (MS_NOEXEC if "noexec" in options else 0)
        out.append((fields[4].encode().decode("unicode_escape"), keep))
    return out


def protect_system(writable):
    check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    for target, keep in mounts():
        if target in ("/dev", "/proc") or target.startswith(("/dev/", "/proc/")):
            continue
        # A mount hidden below another cannot be reached by its path; the one on top is.
        libc.mount(None, target.encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY | keep, None)
    for path in writable:
        path = os.path.realpath(path)
        check(libc.mount(path.encode(), path.encode(), None, MS_BIND | MS_REC, None), f"bind {path}")
        # The bind and every mount below it (e.g. a bpffs) read-write again.
        for target, keep in mounts():
            if target == path or target.startswith(path.rstrip("/") + "/"):
                check(libc.mount(None, target.encode(), None, MS_REMOUNT | MS_BIND | keep, None),
                      f"remount {target} read-write")


def syscall_filter(settings):
    allow, deny = None, set()
    for value in settings.get("SystemCallFilter", []):
        negate = value.startswith("~")
        names = set().union(*(expand(n) for n in value.lstrip("~").split()))
        if negate and allow is None:
            deny |= names
        elif negate:
            allow -= names
        else:
            allow = names if allow is None else allow | names
    number = settings.get("SystemCallErrorNumber", [None])[-1]
    action = seccomp.ERRNO(getattr(errno, number)) if number else seccomp.KILL_PROCESS
    families = None
    if "RestrictAddressFamilies" in settings:
        families = {int(getattr(socket, f)) for v in settings["RestrictAddressFamilies"] for f in v.split()}
    # Syscalls whose arguments the other settings restrict get conditional rules instead.
    conditional = {"socket"} if families is not None else set()
    if flag(settings, "MemoryDenyWriteExecute"):
        conditional |= {"mmap", "mprotect", "pkey_mprotect"}
    if settings.get("RestrictNamespaces", ["no"])[-1] == "yes":
        conditional |= {"unshare", "setns", "clone", "clone3"}

    f = seccomp.SyscallFilter(defaction=action if allow is not None else seccomp.ALLOW)
    f.set_attr(seccomp.Attr.CTL_NNP, 1 if flag(settings, "NoNewPrivileges") else 0)
    restricted = allow if allow is not None else set()

    def permitted(name):
        return (name in restricted) if allow is not None else (name not in deny)

    def add(act, name, *args):
        try:
            f.add_rule(act, name, *args)
        except (RuntimeError, ValueError):
            pass  # not a syscall on this architecture

    if allow is not None:
        for name in sorted(restricted - conditional):
            add(seccomp.ALLOW, name)
    else:
        for name in sorted(deny - conditional):
            add(action, name)
    # With a default of ALLOW, conditional restrictions are denials; with an allow list, they
    # are the allowed cases.
    if "socket" in conditional and permitted("socket"):
        if allow is not None:
            for family in families:
                add(seccomp.ALLOW, "socket", seccomp.Arg(0, seccomp.EQ, family))
        else:
            for family in set(range(46)) - families:
                add(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.EQ, family))
    for name, prot in (("mmap", 2), ("mprotect", 2), ("pkey_mprotect", 2)):
        if name in conditional and permitted(name):
            if allow is not None:
                add(seccomp.ALLOW, name, seccomp.Arg(prot, seccomp.MASKED_EQ, PROT_EXEC, 0))
                if name == "mmap":
                    add(seccomp.ALLOW, name, seccomp.Arg(prot, seccomp.MASKED_EQ, PROT_WRITE, 0))
            else:
                mask = PROT_EXEC | PROT_WRITE if name == "mmap" else PROT_EXEC
                add(seccomp.ERRNO(errno.EPERM), name, seccomp.Arg(prot, seccomp.MASKED_EQ, mask, mask))
    if "clone" in conditional:
        # As systemd does: clone3 answers ENOSYS, so glibc falls back to clone, whose flags
        # seccomp can see; setns is refused; unshare and clone only without CLONE_NEW*.
        add(seccomp.ERRNO(errno.ENOSYS), "clone3")
        if allow is None:
            add(seccomp.ERRNO(errno.EPERM), "setns")
        for name in ("unshare", "clone"):
            if not permitted(name):
                continue
            if allow is not None:
                add(seccomp.ALLOW, name, seccomp.Arg(0, seccomp.MASKED_EQ, sum(NAMESPACE_FLAGS), 0))
            else:
                for ns in NAMESPACE_FLAGS:
                    add(seccomp.ERRNO(errno.EPERM), name, seccomp.Arg(0, seccomp.MASKED_EQ, ns, ns))
    return f


def main():
    argv = sys.argv[1:]
    if "--" not in argv or not argv:
        fail("usage: unit-sandbox.py UNIT [--rw PATH]... -- COMMAND [ARG]...")
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1:]
    unit, writable = options[0], []
    rest = options[1:]
    while rest:
        if rest[0] != "--rw" or len(rest) < 2:
            fail(f"unknown option {rest[0]}")
        writable.append(rest[1])
        rest = rest[2:]
    settings = service_settings(unit)

    if "LimitMEMLOCK" in settings:
        value = settings["LimitMEMLOCK"][-1]
        limit = resource.RLIM_INFINITY if value == "infinity" else int(value)
        try:
            resource.setrlimit(resource.RLIMIT_MEMLOCK, (limit, limit))
        except (ValueError, OSError):
            # Without CAP_SYS_RESOURCE (some containers) the hard limit stays.
            print(f"unit-sandbox: LimitMEMLOCK={value} not applied, keeping {resource.getrlimit(resource.RLIMIT_MEMLOCK)}",
                  file=sys.stderr)
    if "UMask" in settings:
        os.umask(int(settings["UMask"][-1], 8))
    if settings.get("ProtectSystem", ["no"])[-1] == "strict":
        writable = [p for v in settings.get("ReadWritePaths", []) for p in v.split()
                    if os.path.exists(p.lstrip("-"))] + writable
        protect_system([p.lstrip("-") for p in writable])
    if "CapabilityBoundingSet" in settings:
        keep = {c for v in settings["CapabilityBoundingSet"] for c in v.split()}
        unknown = keep - set(CAPS)
        if unknown:
            fail(f"unknown capabilities {sorted(unknown)}")
        for number, name in enumerate(CAPS):
            if name not in keep:
                check(libc.prctl(PR_CAPBSET_DROP, number, 0, 0, 0), f"drop {name}")
    if flag(settings, "NoNewPrivileges"):
        check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    f = syscall_filter(settings)
    # execve must pass the filter; an allow list from the unit includes it (@process).
    f.load()
    try:
        os.execvp(command[0], command)
    except OSError as error:
        fail(f"exec {command[0]}: {error}")


if __name__ == "__main__":
    main()
