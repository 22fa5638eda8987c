#!/usr/bin/env python3
"""Write `docker/seccomp-iggy.json`: Docker's default seccomp rules, plus io_uring.

Docker 25+ dropped `io_uring_setup`, `io_uring_enter` and `io_uring_register` from its default
profile (moby/moby#46762), so under it the server falls back to its asyncio engine. This
profile is the same rule set as the default one (moby/profiles `seccomp/default.json`,
2026-08), written here as a compact description, with one more rule allowing the three
io_uring syscalls. Nothing else is loosened.

    python docker/gen_seccomp.py           # (re)write docker/seccomp-iggy.json
    python docker/gen_seccomp.py --check   # exit 1 if the file is not what this script writes
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

TARGET = Path(__file__).resolve().parent / "seccomp-iggy.json"

IO_URING = ("io_uring_setup", "io_uring_enter", "io_uring_register")

# the unconditional allow list of the default profile
ALLOWED = """
    accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod chown chown32
    clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64
    clock_nanosleep clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2 dup3
    epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait
    epoll_wait_old eventfd eventfd2 execve execveat exit exit_group faccessat faccessat2 fadvise64
    fadvise64_64 fallocate fanotify_mark fchdir fchmod fchmodat fchmodat2 fchown fchown32 fchownat fcntl
    fcntl64 fdatasync fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat fstat64 fstatat64
    fstatfs fstatfs64 fsync ftruncate ftruncate64 futex futex_requeue futex_time64 futex_wait
    futex_waitv futex_wake futimesat getcpu getcwd getdents getdents64 getegid getegid32 geteuid
    geteuid32 getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid getpgrp getpid getppid
    getpriority getrandom getresgid getresgid32 getresuid getresuid32 getrlimit get_robust_list
    getrusage getsid getsockname getsockopt get_thread_area gettid gettimeofday getuid getuid32 getxattr
    getxattrat inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel ioctl io_destroy
    io_getevents io_pgetevents io_pgetevents_time64 ioprio_get ioprio_set io_setup io_submit ipc kill
    landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown lchown32 lgetxattr link
    linkat listen listmount listxattr listxattrat llistxattr _llseek lremovexattr lseek lsetxattr lstat
    lstat64 madvise map_shadow_stack membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod
    mknodat mlock mlock2 mlockall mmap mmap2 mprotect mq_getsetattr mq_notify mq_open mq_timedreceive
    mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap mseal msgctl msgget msgrcv
    msgsnd msync munlock munlockall munmap name_to_handle_at nanosleep newfstatat _newselect open openat
    openat2 pause pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll
    ppoll_time64 prctl pread64 preadv preadv2 prlimit64 process_mrelease pselect6 pselect6_time64
    pwrite64 pwritev pwritev2 read readahead readlink readlinkat readv recv recvfrom recvmmsg
    recvmmsg_time64 recvmsg remap_file_pages removexattr removexattrat rename renameat renameat2
    restart_syscall riscv_hwprobe rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo
    rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo
    sched_getaffinity sched_getattr sched_getparam sched_get_priority_max sched_get_priority_min
    sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity
    sched_setattr sched_setparam sched_setscheduler sched_yield seccomp select semctl semget semop
    semtimedop semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32
    setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer setpgid setpriority setregid
    setregid32 setresgid setresgid32 setresuid setresuid32 setreuid setreuid32 setrlimit set_robust_list
    setsid setsockopt set_thread_area set_tid_address setuid setuid32 setxattr setxattrat shmat shmctl
    shmdt shmget shutdown sigaltstack signalfd signalfd4 sigprocmask sigreturn socketcall socketpair
    splice stat stat64 statfs statfs64 statmount statx symlink symlinkat sync sync_file_range syncfs
    sysinfo tee tgkill time timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64
    timer_settime timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime
    timerfd_settime64 times tkill truncate truncate64 ugetrlimit umask uname unlink unlinkat uretprobe
    utime utimensat utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write writev
"""

# native architecture -> the compat architectures a container on it may also use
ARCHES = (
    ("X86_64", ("X86", "X32")), ("AARCH64", ("ARM",)), ("MIPS64", ("MIPS", "MIPS64N32")),
    ("MIPS64N32", ("MIPS", "MIPS64")), ("MIPSEL64", ("MIPSEL", "MIPSEL64N32")),
    ("MIPSEL64N32", ("MIPSEL", "MIPSEL64")), ("S390X", ("S390",)), ("RISCV64", None), ("LOONGARCH64", None),
)

# capability -> syscalls allowed only to a container that holds it
BY_CAPABILITY = (
    ("CAP_DAC_READ_SEARCH", "open_by_handle_at"),
    ("CAP_SYS_ADMIN", "bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie "
                      "lsm_get_self_attr lsm_list_modules lsm_set_self_attr mount mount_setattr move_mount "
                      "open_tree perf_event_open quotactl quotactl_fd setdomainname sethostname setns syslog "
                      "umount umount2 unshare"),
)
BY_CAPABILITY_LATE = (   # listed after the clone rules, as in the default profile
    ("CAP_SYS_BOOT", "reboot"), ("CAP_SYS_CHROOT", "chroot"),
    ("CAP_SYS_MODULE", "delete_module init_module finit_module"), ("CAP_SYS_PACCT", "acct"),
    ("CAP_SYS_PTRACE", "kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev ptrace"),
    ("CAP_SYS_RAWIO", "iopl ioperm"), ("CAP_SYS_TIME", "settimeofday stime clock_settime clock_settime64"),
    ("CAP_SYS_TTY_CONFIG", "vhangup"), ("CAP_SYS_NICE", "get_mempolicy mbind set_mempolicy set_mempolicy_home_node"),
    ("CAP_SYSLOG", "syslog"), ("CAP_BPF", "bpf"), ("CAP_PERFMON", "perf_event_open"),
)

# architecture-specific syscalls
BY_ARCH = (
    (("ppc64le",), "sync_file_range2 swapcontext"),
    (("arm", "arm64"), "arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls"),
    (("amd64", "x32"), "arch_prctl"),
    (("amd64", "x32", "x86"), "modify_ldt"),
    (("s390", "s390x"), "s390_pci_mmio_read s390_pci_mmio_write s390_runtime_instr"),
    (("riscv64",), "riscv_flush_icache"),
)

# clone without namespace flags (CLONE_NEWNS|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWCGROUP)
CLONE_NS_FLAGS = 0x7E020000
# personality(2) values a container may set: PER_LINUX, UNAME26, ADDR_NO_RANDOMIZE (+UNAME26), query
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
# socket(2): every address family but AF_ALG and AF_VSOCK
AF_ALG, AF_NFC, AF_VSOCK = 38, 39, 40


def _names(text: str) -> list:
    return text.split()


def _allow(names, **extra) -> dict:
    return {"names": list(names), "action": "SCMP_ACT_ALLOW", **extra}


def _arg(index: int, value: int, op: str, value_two: int | None = None) -> dict:
    arg = {"index": index, "value": value, "op": f"SCMP_CMP_{op}"}
    if value_two is not None:
        arg["valueTwo"] = value_two
    return arg


def profile() -> dict:
    rules = [
        _allow(_names(ALLOWED)),
        _allow(IO_URING, comment="io_uring for the iggy server's uring engine (not in Docker's default "
                                 "profile since moby/moby#46762)"),
        _allow(_names("process_vm_readv process_vm_writev ptrace"), includes={"minKernel": "4.8"}),
        _allow(["socket"], args=[_arg(0, AF_ALG, "LT")]),
        _allow(["socket"], args=[_arg(0, AF_NFC, "EQ")]),
        _allow(["socket"], args=[_arg(0, AF_VSOCK, "GT")]),
    ]
    rules += [_allow(["personality"], args=[_arg(0, value, "EQ")]) for value in PERSONALITIES]
    rules += [_allow(_names(names), includes={"arches": list(arches)}) for arches, names in BY_ARCH]
    rules += [_allow(_names(names), includes={"caps": [cap]}) for cap, names in BY_CAPABILITY]
    rules += [
        _allow(["clone"], args=[_arg(0, CLONE_NS_FLAGS, "MASKED_EQ", 0)],
               excludes={"caps": ["CAP_SYS_ADMIN"], "arches": ["s390", "s390x"]}),
        _allow(["clone"], args=[_arg(1, CLONE_NS_FLAGS, "MASKED_EQ", 0)],
               comment="s390 parameter ordering for clone is different",
               includes={"arches": ["s390", "s390x"]}, excludes={"caps": ["CAP_SYS_ADMIN"]}),
        # clone3 can't be filtered by its flags: ENOSYS makes glibc fall back to clone
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38, "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
    ]
    rules += [_allow(_names(names), includes={"caps": [cap]}) for cap, names in BY_CAPABILITY_LATE]
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "archMap": [{"architecture": f"SCMP_ARCH_{arch}",
                     "subArchitectures": [f"SCMP_ARCH_{s}" for s in subs] if subs else None}
                    for arch, subs in ARCHES],
        "syscalls": rules,
    }


def render() -> str:
    return json.dumps(profile(), indent=2) + "\n"


def main(argv) -> int:
    text = render()
    if "--check" in argv:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET} is out of date: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
