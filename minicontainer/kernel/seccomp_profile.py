"""The default seccomp profile, in Docker's profile format (``--security-opt seccomp=FILE`` reads the same shape).

Docker's default profile is an **allow-list**: about 350 system calls a normal program
needs, and every other call fails with EPERM. What it leaves out falls in a few groups,
each for a reason:

- calls that act on kernel-wide state no namespace isolates: the keyrings (``add_key``,
  ``keyctl``, ``request_key``), kernel modules, ``kexec``, ``swapon``, the clock, ``acct``,
  ``reboot``;
- calls that build new isolation or undo it, which a container's root needs only if it
  was given CAP_SYS_ADMIN: ``mount``, ``umount2``, ``unshare``, ``setns``, ``pivot_root``,
  and ``clone`` with namespace flags;
- calls with a history of kernel bugs that containers rarely need: ``userfaultfd``,
  ``io_uring_*``, ``bpf``, ``perf_event_open``, ``open_by_handle_at`` (the "shocker"
  escape read host files with it), AF_VSOCK sockets, and ``personality`` beyond the
  harmless values.

Some of those come back when the container holds the matching capability (``includes``),
as Docker does, so ``--cap-add SYS_TIME`` also allows ``settimeofday``. The names are those
of libseccomp; a name this kernel or libseccomp doesn't know is skipped, as runc skips it.
This list was written for minicontainer from Docker's documented behaviour; it is not a
copy of Docker's file.
"""
from __future__ import annotations

# The calls every container may make (x86-64 and arm64 names; 32-bit x86 variants too).
ALLOWED = """
accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod chown chown32
clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64
clock_nanosleep clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2 dup3
epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old
eventfd eventfd2 execve execveat exit exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate
fanotify_mark fchdir fchmod fchmodat fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync
fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64
fsync ftruncate ftruncate64 futex futex_requeue futex_time64 futex_wait futex_waitv futex_wake
futimesat getcpu getcwd getdents getdents64 getegid getegid32 geteuid geteuid32 getgid getgid32
getgroups getgroups32 getitimer getpeername getpgid getpgrp getpid getppid getpriority getrandom
getresgid getresgid32 getresuid getresuid32 getrlimit get_robust_list getrusage getsid getsockname
getsockopt get_thread_area gettid gettimeofday getuid getuid32 getxattr inotify_add_watch inotify_init
inotify_init1 inotify_rm_watch io_cancel ioctl io_destroy io_getevents io_pgetevents
io_pgetevents_time64 ioprio_get ioprio_set io_setup io_submit ipc kill landlock_add_rule
landlock_create_ruleset landlock_restrict_self lchown lchown32 lgetxattr link linkat listen listxattr
llistxattr _llseek lremovexattr lseek lsetxattr lstat lstat64 madvise map_shadow_stack membarrier
memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap mmap2
mprotect mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend
mq_timedsend_time64 mq_unlink mremap msgctl msgget msgrcv msgsnd msync munlock munlockall munmap
nanosleep newfstatat _newselect open openat openat2 pause pidfd_open pidfd_send_signal pipe pipe2
pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl pread64 preadv preadv2 prlimit64
process_mrelease pselect6 pselect6_time64 ptrace process_vm_readv process_vm_writev pwrite64 pwritev
pwritev2 read readahead readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg
remap_file_pages removexattr rename renameat renameat2 restart_syscall rmdir rseq rt_sigaction
rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait
rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam
sched_get_priority_max sched_get_priority_min sched_getscheduler sched_rr_get_interval
sched_rr_get_interval_time64 sched_setaffinity sched_setattr sched_setparam sched_setscheduler
sched_yield seccomp select semctl semget semop semtimedop semtimedop_time64 send sendfile sendfile64
sendmmsg sendmsg sendto setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32 setgroups setgroups32
setitimer setpgid setpriority setregid setregid32 setresgid setresgid32 setresuid setresuid32 setreuid
setreuid32 setrlimit set_robust_list setsid setsockopt set_thread_area set_tid_address setuid setuid32
setxattr shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4 sigprocmask sigreturn
socketcall socketpair splice stat stat64 statfs statfs64 statx symlink symlinkat sync sync_file_range
syncfs sysinfo tee tgkill time timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64
timer_settime timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime
timerfd_settime64 times tkill truncate truncate64 ugetrlimit umask uname unlink unlinkat utime
utimensat utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write writev
""".split()

# Calls that come back with a capability, as Docker's profile gives them back.
BY_CAPABILITY = {
    "CAP_SYS_ADMIN": "bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie mount "
                     "mount_setattr move_mount name_to_handle_at open_tree perf_event_open pivot_root quotactl "
                     "quotactl_fd setdomainname sethostname setns syslog umount umount2 unshare",
    "CAP_SYS_BOOT": "reboot",
    "CAP_SYS_CHROOT": "chroot",
    "CAP_SYS_MODULE": "delete_module init_module finit_module",
    "CAP_SYS_PACCT": "acct",
    "CAP_SYS_PTRACE": "kcmp pidfd_getfd process_madvise",
    "CAP_SYS_RAWIO": "iopl ioperm",
    "CAP_SYS_TIME": "settimeofday stime clock_settime clock_settime64",
    "CAP_SYS_TTY_CONFIG": "vhangup",
    "CAP_SYS_NICE": "get_mempolicy mbind set_mempolicy set_mempolicy_home_node move_pages",
    "CAP_SYSLOG": "syslog",
    "CAP_BPF": "bpf",
    "CAP_PERFMON": "perf_event_open",
    "CAP_DAC_READ_SEARCH": "open_by_handle_at",
}

# clone's flags that create namespaces: CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
CLONE_NAMESPACE_FLAGS = 0x7E020000
EPERM, ENOSYS = 1, 38


def _rule(names: str | list[str], action: str = "SCMP_ACT_ALLOW", **extra) -> dict:
    return {"names": names.split() if isinstance(names, str) else names, "action": action, **extra}


def default_profile() -> dict:
    """minicontainer's default profile as a Docker-format dict (a fresh copy: callers may change it)."""
    rules = [_rule(ALLOWED)]
    # socket(): every family but AF_VSOCK (40), which talks to the hypervisor, not the network
    rules.append(_rule("socket", args=[{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]))
    # personality(): only the harmless values (Linux defaults, 32-bit address space, and the query)
    for value in (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF):
        rules.append(_rule("personality", args=[{"index": 0, "value": value, "op": "SCMP_CMP_EQ"}]))
    # x86's own calls for thread-local storage and segment tables
    rules.append(_rule("arch_prctl modify_ldt", includes={"arches": ["amd64", "x32", "x86"]}))
    # clone() may start threads and processes, but not new namespaces, unless CAP_SYS_ADMIN
    rules.append(_rule("clone", args=[{"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0,
                                        "op": "SCMP_CMP_MASKED_EQ"}],
                       excludes={"caps": ["CAP_SYS_ADMIN"], "arches": ["s390", "s390x"]}))
    # clone3() passes its flags in memory, where seccomp can't look: answer ENOSYS, and
    # libc falls back to clone(), which the rule above can check
    rules.append(_rule("clone3", "SCMP_ACT_ERRNO", errnoRet=ENOSYS, excludes={"caps": ["CAP_SYS_ADMIN"]}))
    for cap, names in BY_CAPABILITY.items():
        rules.append(_rule(names, includes={"caps": [cap]}))
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "archMap": [
            {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
            {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
        ],
        "syscalls": rules,
    }
