#!/usr/bin/env bash
# Throwaway Postgres and Redis for running tests by hand (scripts/test starts its own).
#
#   eval "$(scripts/services.sh start)"   # start both (or reuse running ones), export URLs
#   cargo test -p tollgate-tests          # ... any test command, with the URLs set
#   scripts/services.sh stop              # stop both and delete their data
#
#   scripts/services.sh env | status
#
# Both listen only on 127.0.0.1 on free ports; their data lives in a /tmp/tollgate-test.*
# folder named in .test-services/dir. The machine's own Postgres and Redis are not used.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib/services.sh
source "$ROOT/scripts/lib/services.sh"

POINTER="$ROOT/.test-services/dir"

current_dir() {
    local dir
    [ -f "$POINTER" ] || return 1
    dir=$(cat "$POINTER")
    [ -d "$dir" ] && [ -f "$dir/env" ] || return 1
    printf '%s\n' "$dir"
}

running() {
    local dir=$1 pid
    pid=$(cat "$dir/redis/pid" 2>/dev/null || true)
    [ -n "$pid" ] && svc_alive "$pid" || return 1
    "$(cat "$dir/pg/bindir")/pg_isready" -q -h 127.0.0.1 -p "$(cat "$dir/pg/port")" -U postgres
}

cmd=${1:-}
case "$cmd" in
    start)
        if dir=$(current_dir) && running "$dir"; then
            svc_log "already running (state in $dir)"
            cat "$dir/env"
            exit 0
        fi
        if dir=$(current_dir); then
            svc_stop_all "$dir"
        fi
        # shellcheck disable=SC2119
        svc_ensure_installed
        dir=$(svc_make_dir)
        mkdir -p "$(dirname "$POINTER")"
        printf '%s\n' "$dir" >"$POINTER"
        if ! svc_start_all "$dir"; then
            svc_stop_all "$dir"
            rm -f "$POINTER"
            exit 1
        fi
        cat "$dir/env"
        ;;
    env)
        dir=$(current_dir) || { svc_log "not running (scripts/services.sh start)"; exit 1; }
        cat "$dir/env"
        ;;
    status)
        if dir=$(current_dir) && running "$dir"; then
            svc_log "running, state in $dir"
            cat "$dir/env"
        else
            svc_log "not running"
            exit 1
        fi
        ;;
    stop)
        if dir=$(current_dir); then
            svc_stop_all "$dir"
            svc_log "stopped"
        else
            svc_log "not running"
        fi
        rm -rf "$ROOT/.test-services"
        ;;
    *)
        sed -n '2,11s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
        exit 2
        ;;
esac
