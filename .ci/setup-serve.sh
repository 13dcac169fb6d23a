#!/usr/bin/env bash
# Serving (issue 15): the server's own venv (PyTriton needs numpy<2, the main env
# is on numpy 2) with the openvino extra (`serve --backend openvino`), and nginx for the two-server routing test. Idempotent: fast
# when everything is already there.
#
#   SEGVOL_SERVE_VENV  where the venv goes (default ~/.cache/segvol-rt/serve-venv);
#                      tests/support/serving.py reads the same variable.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SEGVOL_SERVE_VENV:-$HOME/.cache/segvol-rt/serve-venv}"
PY="${PYTHON:-python3}"

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    # The tests start their own nginx on loopback: keep the package's service
    # (port 80, every address) from starting on install.
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; own_policy=1; fi
    apt_status=0
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx >/dev/null; } \
        || apt_status=$?
    if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi
    if [ "$apt_status" != 0 ]; then echo "setup-serve: could not install nginx" >&2; exit 1; fi
fi

stamp="$VENV/.segvol-serve-stamp"
want="$(sha256sum pyproject.toml | cut -c1-16) $(pwd)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c "import pytriton, openvino, segvol_rt" 2>/dev/null; then
    exit 0
fi
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# the build's warnings go to the log, shown only if the install fails
if ! { "$PY" -m venv "$VENV" && "$VENV/bin/python" -m pip install -q --upgrade pip \
       && "$VENV/bin/python" -m pip install -q -e ".[serve,openvino]"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup-serve: could not make the serve venv at $VENV" >&2
    exit 1
fi
echo "$want" > "$stamp"
