#!/usr/bin/env bash
# PAROMA-MED set-up and entry point.
#
#   ./paroma.sh demo        set up, then run the 4-hospital demo
#   ./paroma.sh test        set up, then run the whole test suite (lint, types, tests)
#   ./paroma.sh <args>      set up, then run `paroma <args>`
#
# The set-up is idempotent: it installs the Debian packages the platform uses
# (bubblewrap for the training sandbox, chromium for the browser tests) when it
# runs as root and they are missing, creates .venv beside this file, and
# installs the pinned Python dependencies; it is skipped when nothing changed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
APT_PACKAGES=(bubblewrap chromium chromium-driver iproute2 util-linux docker-compose)

log() { printf '[paroma.sh] %s\n' "$*" >&2; }

install_debian_packages() {
    command -v dpkg-query >/dev/null 2>&1 || { log "not a Debian system: skipping system packages"; return 0; }
    local missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        log "missing system packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]}); continuing without them"
        return 0
    fi
    log "installing system packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# pip, without the warnings about this machine's optional local package indexes.
pip_quiet() {
    "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

install_python_packages() {
    local stamp="$VENV/.paroma-installed"
    local want
    want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating $VENV"
        "$PY" -m venv "$VENV"
    fi
    local pip=(pip_quiet "$VENV/bin/python" -m pip --disable-pip-version-check -q)
    log "installing Python dependencies (first run takes a few minutes)"
    # The CPU build of torch first, pinned: an unpinned or ranged torch would
    # fetch a multi-GB CUDA build.
    "${pip[@]}" install "torch==2.13.0"
    "${pip[@]}" install -e "$ROOT[test]"
    echo "$want" > "$stamp"
}

main() {
    install_debian_packages
    install_python_packages
    export PATH="$VENV/bin:$PATH"
    export PYTHONDONTWRITEBYTECODE=1
    local cmd="${1:-}"
    case "$cmd" in
        test)
            shift
            cd "$ROOT"
            exec "$VENV/bin/python" -m pytest "$@"
            ;;
        "")
            exec "$VENV/bin/paroma" --help
            ;;
        *)
            exec "$VENV/bin/paroma" "$@"
            ;;
    esac
}

main "$@"
