#!/bin/sh
# Installs what `make bench` compares against, only when missing:
# nginx, nchan (nginx module) and Pushpin from Debian packages, and
# matplotlib for the plot. Idempotent; safe to run on every `make bench`.
set -u
need=""
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need="$need nginx"
[ -f /usr/lib/nginx/modules/ngx_nchan_module.so ] || need="$need libnginx-mod-nchan"
command -v pushpin >/dev/null 2>&1 || need="$need pushpin"
if [ -n "$need" ]; then
    echo "installing:$need"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get -o DPkg::Lock::Timeout=300 update || true
    # A peer that fails to install is reported by the runner as "could not
    # start"; do not abort the whole benchmark here.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y $need || true
fi
if ! python3 -c 'import matplotlib' >/dev/null 2>&1; then
    python3 -m pip install --quiet matplotlib || echo "matplotlib unavailable: the runner will note the missing plot"
fi
exit 0
