#!/usr/bin/env bash
# One provisioning script for every place minicontainer runs: `make`, `.ci/run` and the
# Vagrantfile all call it. It is idempotent: a second run only checks and returns.
#   scripts/provision.sh               Debian packages + .venv + editable install
#   scripts/provision.sh --jupyter     also install JupyterLab as a systemd service (the student VM)
#   scripts/provision.sh --browser     also Debian's chromium, CJK and emoji fonts, and Playwright (make test-browser)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
browser=0 jupyter=0
for arg in "$@"; do
    case $arg in
        --browser) browser=1 ;;
        --jupyter) jupyter=1 ;;
        *) echo "provision: unknown option $arg (use --jupyter or --browser)" >&2; exit 2 ;;
    esac
done

if [ "$(id -u)" != 0 ]; then
    echo "provision: must run as root (containers need CAP_SYS_ADMIN); try: sudo $0" >&2
    exit 1
fi

# Debian packages: the static busybox is the built-in image; tini's static build is what
# `run --init` mounts into a container; libseccomp2 compiles seccomp filters; the rest are the peers our interop tests and
# benchmarks compare against.
packages=(busybox-static tini libseccomp2 python3-venv python3-dev gcc iproute2 runc crun umoci skopeo docker-registry)
# The browser test: Playwright can't download a browser here, so it drives Debian's chromium;
# the fonts draw the course's Chinese (and its emoji) instead of empty boxes.
if [ $browser = 1 ]; then packages+=(chromium fonts-noto-cjk fonts-noto-color-emoji); fi
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "provision: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Keep package services (docker-registry listens on every interface, port 5000) from
    # starting during the install: policy-rc.d answering 101 means "don't start it".
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
    fi
    apt-get update -qq
    status=0
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || status=$?
    if [ $made_policy = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    if [ $status != 0 ]; then echo "provision: apt-get install failed ($status)" >&2; exit $status; fi
fi
# Debian's docker-registry package starts a registry on every interface; we only ever
# run our own instances bound to 127.0.0.1, so keep the packaged service off.
if command -v systemctl >/dev/null && systemctl is-enabled docker-registry >/dev/null 2>&1; then
    systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi
pkill -f '^/usr/bin/docker-registry serve /etc/docker/registry/config.yml' 2>/dev/null || true

# The venv uses Debian's own python3 so the VM and CI agree on the interpreter.
stamp=.venv/.provisioned
if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv .venv
fi
extras=course,test
if [ $browser = 1 ]; then extras=$extras,browser; fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/provision.sh -nt "$stamp" ] \
        || { [ $browser = 1 ] && ! .venv/bin/python -c 'import playwright' 2>/dev/null; }; then
    echo "provision: installing Python dependencies into .venv"
    .venv/bin/pip install -q --upgrade pip
    # compat mode puts a plain path in a .pth file: no import hook, so the CLI starts faster.
    .venv/bin/pip install -q -e ".[$extras]" --config-settings editable_mode=compat
    touch "$stamp"
fi

if [ $jupyter = 1 ]; then
    # JupyterLab as a service in the student VM, token auth. The token lives in a root-only
    # environment file, so it is neither on the command line (ps) nor in the unit file.
    env_file=/etc/minicontainer/jupyter.env
    mkdir -p /etc/minicontainer
    if [ ! -s "$env_file" ]; then
        (umask 077; echo "JUPYTER_TOKEN=$(.venv/bin/python -c 'import secrets; print(secrets.token_hex(24))')" > "$env_file")
    fi
    # The student's workspace: a copy of the chapters made once, then never touched again
    # by provisioning (cp -n adds new chapters, never overwrites). The repo itself is
    # re-synced by `vagrant up`/`reload`, so work kept there would be lost.
    workspace=${MINICONTAINER_WORKSPACE:-/home/vagrant/work}
    mkdir -p "$workspace"
    mkdir -p "$workspace/notebooks" && cp -rn notebooks/. "$workspace/notebooks/"
    # Labs: the student copies only (README and the released notebook). The instructor's
    # source/ notebooks hold the solutions and hidden tests, and stay out of the workspace.
    for lab in labs/*/; do
        mkdir -p "$workspace/$lab"
        find "$lab" -maxdepth 1 -type f \( -name '*.ipynb' -o -name '*.md' \) -exec cp -n {} "$workspace/$lab" \;
    done
    if [ -f labs/README.md ]; then cp -n labs/README.md "$workspace/labs/"; fi
    if id vagrant >/dev/null 2>&1; then chown -R vagrant: "$workspace"; fi
    cat > /etc/systemd/system/minicontainer-jupyter.service <<UNIT
[Unit]
Description=JupyterLab for the minicontainer course
After=network.target

[Service]
WorkingDirectory=$workspace
EnvironmentFile=$env_file
# 0.0.0.0 inside the VM so Vagrant's port forward reaches it; the Vagrantfile binds the
# host side to 127.0.0.1 only.
ExecStart=$repo/.venv/bin/jupyter lab --allow-root --no-browser --ip=0.0.0.0 --port=8888 --notebook-dir=$workspace
Restart=on-failure

[Install]
WantedBy=multi-user.target
UNIT
    systemctl daemon-reload
    systemctl enable --now minicontainer-jupyter.service
    echo "provision: JupyterLab runs on port 8888 in $workspace; its token is in $env_file"
fi
