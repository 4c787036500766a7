#!/usr/bin/env bash
# Run one shell command as root in a real cgroup v2 machine: a qemu guest that boots
# Debian's kernel with the host's own systemd as PID 1, on the host's root shared read-only
# over virtio-9p with a tmpfs overlay on top (docs/v2-guest.md).
#   scripts/v2guest/run.sh [--timeout SECONDS] [--mem 4G] [--accel auto|kvm|tcg] -- COMMAND...
# COMMAND runs through `sh -c` in a systemd service (system.slice), in the directory this
# script was called from, with PATH, CI and MINICONTAINER_* passed through. One word is
# taken as a shell command line (`run.sh -- 'make test | tail'`); several words are quoted
# one by one, so `run.sh -- sh -c 'echo "$0"'` runs exactly that argv.
# Its output streams here as it happens; the exit status is the command's (128+N if a
# signal N killed it, 124 if --timeout expired, 255 if the guest failed to report one).
set -euo pipefail
t0=$EPOCHREALTIME
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${MINICONTAINER_V2GUEST_CACHE:-/var/cache/minicontainer/v2guest}

usage() { sed -n '5,11s/^# \{0,1\}//p' "$0" >&2; exit 2; }
timeout_s=1200
mem=4G
accel=${V2GUEST_ACCEL:-auto}
while [ $# -gt 0 ]; do
    case $1 in
        --timeout) timeout_s=${2:?}; shift 2 ;;
        --timeout=*) timeout_s=${1#*=}; shift ;;
        --mem) mem=${2:?}; shift 2 ;;
        --mem=*) mem=${1#*=}; shift ;;
        --accel) accel=${2:?}; shift 2 ;;
        --accel=*) accel=${1#*=}; shift ;;
        --) shift; break ;;
        -h|--help) usage ;;
        *) break ;;
    esac
done
[ $# -gt 0 ] || usage
case $timeout_s in ''|*[!0-9]*) echo "v2guest: --timeout takes whole seconds" >&2; exit 2 ;; esac
case $accel in auto|kvm|tcg) ;; *) echo "v2guest: --accel takes auto, kvm or tcg" >&2; exit 2 ;; esac

if [ "$(id -u)" != 0 ]; then
    echo "v2guest: must run as root; try: sudo $0" >&2
    exit 1
fi
"$here/provision.sh" >&2
kver=$(cat "$cache/current")
kdir=$cache/$kver
if [ -f "$kdir/vmlinux" ]; then kernel=$kdir/vmlinux; boot="vmlinux, PVH"
else kernel=$(ls "$kdir"/pkg/boot/vmlinuz-* | head -n1); boot=bzImage; fi

tmp=
qemu_pid=
readers=()
cleanup() {
    trap - EXIT INT TERM HUP
    if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
        kill -TERM "$qemu_pid" 2>/dev/null || true
        wait "$qemu_pid" 2>/dev/null || true
    fi
    for p in "${readers[@]}"; do pkill -P "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
    for p in "${readers[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ -n "$tmp" ]; then
        [ -f "$tmp/console.log" ] && cp "$tmp/console.log" "$cache/last-console.log" 2>/dev/null
        rm -rf "$tmp"
    fi
}
interrupted() { echo; echo "v2guest: interrupted; stopping the guest" >&2; cleanup; exit 130; }
trap cleanup EXIT
trap interrupted INT TERM HUP
# The job directory must be on the host's root: the guest reads it through the 9p share.
tmp=$(mktemp -d /tmp/v2guest.XXXXXX)

# Single-quote a word for sh.
q() { local s=${1//\'/\'\\\'\'}; printf "'%s'" "$s"; }
if [ $# = 1 ]; then cmd=$1
else cmd=; for w in "$@"; do cmd+="${cmd:+ }$(q "$w")"; done; fi
{
    echo "export PATH=$(q "$PATH")"
    [ -n "${CI+set}" ] && echo "export CI=$(q "$CI")"
    for v in $(compgen -e); do
        case $v in MINICONTAINER_*) echo "export $v=$(q "${!v}")" ;; esac
    done
    echo "export PYTHONDONTWRITEBYTECODE=1"
    # Python block-buffers a pipe; unbuffered, test output arrives as it is written.
    echo "export PYTHONUNBUFFERED=1"
    echo "V2_CWD=$(q "$PWD")"
    echo "V2_REPO=$(q "$repo")"
    echo "V2_CMD=$(q "$cmd")"
} > "$tmp/job"

# qemu_args PREFIX: the machine, with the two virtio-serial ports on FIFOs PREFIX{out,status}.{in,out}.
qemu_args() {
    qemu=(qemu-system-x86_64 -machine q35 -smp 2 -m "$mem"
        -nodefaults -no-user-config -display none -nic none -monitor none -no-reboot
        -kernel "$kernel" -initrd "$kdir/initrd.cpio"
        -fsdev "local,id=hostroot,path=/,security_model=passthrough,readonly=on,multidevs=remap"
        -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot
        -device virtio-serial-pci,id=vser
        -chardev "pipe,id=out,path=${1}out" -device virtserialport,bus=vser.0,chardev=out,name=v2guest.out
        -chardev "pipe,id=status,path=${1}status" -device virtserialport,bus=vser.0,chardev=status,name=v2guest.status
        -device virtio-rng-pci)
}
tcg=(-accel tcg,thread=multi -cpu qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt,+cx16)
kvm=(-accel kvm -cpu host)
# The guest's kernel command line. systemd boots v2guest.target (basic.target + the command).
append="console=ttyS0 quiet panic=-1 tsc=reliable systemd.show_status=1 v2guest.job=$tmp systemd.unit=v2guest.target${V2GUEST_APPEND:+ $V2GUEST_APPEND}"

# KVM: /dev/kvm may exist and still not run this kernel (nested, paravirtualised hosts), so
# probe once: boot to the initramfs, check the CPU has x86-64-v2, power off. The answer is
# cached per host kernel, qemu and guest kernel.
kvm_works() {
    [ -r /dev/kvm ] && [ -w /dev/kvm ] || return 1
    local key stamp
    key="$(uname -r) $(qemu-system-x86_64 --version | head -n1) $kver"
    stamp=$cache/kvm-probe
    if [ "$(sed -n 1p "$stamp" 2>/dev/null)" != "$key" ]; then
        local p=$tmp/probe result=no
        mkfifo "$p.out.in" "$p.out.out" "$p.status.in" "$p.status.out"
        cat "$p.out.out" > "$p.out.log" &
        readers+=($!)
        cat "$p.status.out" > "$p.status.log" &
        readers+=($!)
        qemu_args "$p."
        # (the braces' redirection also silences bash's report of a qemu that aborts)
        { timeout -k 2 10 "${qemu[@]}" "${kvm[@]}" \
            -append "console=ttyS0 panic=-1 v2guest.probe=1" -serial "file:$p.console" >/dev/null; } 2>/dev/null || true
        kill "${readers[@]}" 2>/dev/null || true; wait "${readers[@]}" 2>/dev/null || true
        readers=()
        grep -q '^probe [0-9.]* x86-64-v2$' "$p.status.log" 2>/dev/null && result=yes
        printf '%s\n%s\n' "$key" "$result" > "$stamp"
    fi
    [ "$(sed -n 2p "$stamp")" = yes ]
}
if [ "$accel" = kvm ] || { [ "$accel" = auto ] && kvm_works; }; then
    accel_args=("${kvm[@]}"); accel_name="KVM"
else
    accel_args=("${tcg[@]}"); accel_name="TCG (no KVM)"
fi
echo "v2guest: $accel_name, kernel $kver ($boot), ${mem} RAM, 2 CPUs, timeout ${timeout_s}s" >&2

mkfifo "$tmp/out.in" "$tmp/out.out" "$tmp/status.in" "$tmp/status.out"
# The command's output, as it comes; the status port's lines, stamped with the host's clock.
# (if our stdout goes away, as with `| head`, drain the rest so the guest isn't blocked; the
# FIFO is opened once, by the group, so the second cat can't block in open())
{ cat || cat >/dev/null; } < "$tmp/out.out" &
readers+=($!)
while IFS= read -r line; do echo "$EPOCHREALTIME $line"; done < "$tmp/status.out" > "$tmp/status.log" &
readers+=($!)

t_qemu=$EPOCHREALTIME
# timeout(1) puts qemu in its own process group: Ctrl-C reaches this script, which stops it.
qemu_args "$tmp/"
timeout -k 10 "$timeout_s" "${qemu[@]}" "${accel_args[@]}" \
    -append "$append" -serial "file:$tmp/console.log" </dev/null 2>"$tmp/qemu.log" &
qemu_pid=$!
rc=0
wait "$qemu_pid" || rc=$?
qemu_pid=
t_end=$EPOCHREALTIME
# qemu has closed the FIFOs; the readers finish what is left and see end of file.
for p in "${readers[@]}"; do wait "$p" 2>/dev/null || true; done
readers=()

# Status lines: "<host time> <event> <guest uptime> ...".
ev() { awk -v e="$1" '$2 == e { print; exit }' "$tmp/status.log"; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
t_init=$(ev initramfs | cut -d' ' -f1)
t_service=$(ev service | cut -d' ' -f1)
t_cmd=$(ev command | cut -d' ' -f1)
t_exit=$(ev exit | cut -d' ' -f1)
exit_line=$(ev exit)
error_line=$(ev error)

status=255
if [ $rc = 124 ] || [ $rc = 137 ]; then
    echo "v2guest: TIMEOUT: killed the guest after ${timeout_s}s" >&2
    status=124
elif [ -n "$exit_line" ]; then
    set -- $exit_line            # host-time exit uptime EXIT_CODE EXIT_STATUS SERVICE_RESULT
    case ${4:-}:${5:-} in
        exited:*[!0-9]*|exited:) ;;
        exited:*) status=$5 ;;
        killed:*|dumped:*) n=$(kill -l "$5" 2>/dev/null) && status=$((128 + n)) ;;
    esac
    [ "${4:-}" = exited ] || echo "v2guest: the command ended: ${4:-} ${5:-} (${6:-})" >&2
elif [ -n "$error_line" ]; then
    echo "v2guest: the guest's init failed: ${error_line#* error * }" >&2
else
    echo "v2guest: the guest stopped (qemu status $rc) without reporting an exit status" >&2
    sed 's/^/v2guest: qemu: /' "$tmp/qemu.log" >&2
fi

timing="boot to command $( [ -n "$t_cmd" ] && secs "$t_qemu" "$t_cmd" || echo '?') s"
[ -n "$t_init" ] && timing+=" (initramfs at $(secs "$t_qemu" "$t_init") s"
[ -n "$t_init" ] && [ -n "$t_service" ] && timing+=", service at $(secs "$t_qemu" "$t_service") s"
[ -n "$t_init" ] && timing+=")"
[ -n "$t_cmd" ] && [ -n "$t_exit" ] && timing+=", command $(secs "$t_cmd" "$t_exit") s"
[ -n "$t_exit" ] && timing+=", poweroff $(secs "$t_exit" "$t_end") s"
timing+=", total $(secs "$t0" "$t_end") s"
echo "v2guest: exit status $status; $timing" >&2
if [ $status = 124 ] || [ $status = 255 ]; then echo "v2guest: console log: $cache/last-console.log" >&2; fi
exit "$status"
