# shellcheck shell=bash
# Throwaway Postgres and Redis for Tollgate's tests. Sourced by scripts/test,
# scripts/services.sh and bench/*; not meant to be run on its own. Also makes sure
# redis-cli and haproxy are installed: the scale-out scenarios (tests/src/scaleout.rs) start
# their own Redis Cluster nodes and load balancer, and restart a Postgres of their own with
# svc_pg_stop / svc_pg_start_again.
#
# Each server lives in one state directory (made with mktemp under /tmp), listens only on
# 127.0.0.1 on a free port, and keeps nothing anywhere else. The machine's own services
# (5432, 6379, ...) are never touched nor used.
#
# Layout of a state directory:
#   pg/data  pg/sock  pg/port  pg/server.log  pg/initdb.log  pg/bindir
#   redis/pid  redis/port  redis/server.log
#   env      (export lines for TOLLGATE_TEST_POSTGRES_URL and TOLLGATE_TEST_REDIS_URL)

svc_log() { printf '[services] %s\n' "$*" >&2; }

svc_is_root() { [ "$(id -u)" -eq 0 ]; }

# Installs Debian packages (apt-get update runs once per process). Uses sudo when not root.
SVC_APT_UPDATED=${SVC_APT_UPDATED:-0}
svc_apt_install() {
    [ "$#" -gt 0 ] || return 0
    local sudo=()
    if ! svc_is_root; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            svc_log "missing: $* (not root and no sudo: install them, then run again)"
            return 1
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        svc_log "missing: $* (and no apt-get here: install them, then run again)"
        return 1
    fi
    if [ "$SVC_APT_UPDATED" != 1 ]; then
        svc_log "apt-get update"
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || return 1
        SVC_APT_UPDATED=1
    fi
    svc_log "apt-get install -y $*"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2
}

# Prints the folder with Postgres' initdb and pg_ctl, or fails.
svc_find_pg_bindir() {
    local d cands=()
    [ -n "${TOLLGATE_PG_BINDIR:-}" ] && cands+=("$TOLLGATE_PG_BINDIR")
    if command -v pg_config >/dev/null 2>&1; then
        d=$(pg_config --bindir 2>/dev/null || true)
        [ -n "$d" ] && cands+=("$d")
    fi
    # Debian's layout, newest major version first.
    for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -t/ -k5,5 -rn); do
        cands+=("$d")
    done
    if command -v initdb >/dev/null 2>&1; then
        cands+=("$(dirname "$(command -v initdb)")")
    fi
    for d in "${cands[@]}"; do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
            printf '%s\n' "$d"
            return 0
        fi
    done
    return 1
}

svc_have_redis() { command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; }

# HAProxy: the load balancer in front of the replicas in the scale-out scenarios.
svc_have_haproxy() { command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ]; }

# Makes sure the server binaries are there, installing Debian's packages when not.
# Extra package names given as arguments are installed in the same apt-get call when
# anything is missing.
svc_ensure_installed() {
    local pkgs=()
    svc_find_pg_bindir >/dev/null || pkgs+=(postgresql)
    svc_have_redis || pkgs+=(redis-server redis-tools)
    svc_have_haproxy || pkgs+=(haproxy)
    [ "${#pkgs[@]}" -eq 0 ] && return 0
    svc_apt_install "${pkgs[@]}" "$@" || return 1
    svc_find_pg_bindir >/dev/null || { svc_log "no initdb/pg_ctl found after installing postgresql"; return 1; }
    svc_have_redis || { svc_log "no redis-server found after installing redis-server"; return 1; }
    svc_have_haproxy || { svc_log "no haproxy found after installing haproxy"; return 1; }
}

# Prints a TCP port that is free on 127.0.0.1 right now.
svc_free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
        return
    fi
    local p
    for _ in $(seq 1 100); do
        p=$((20000 + RANDOM % 30000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            printf '%s\n' "$p"
            return 0
        fi
    done
    return 1
}

# Runs a command as the user that owns the Postgres files: `postgres` when we are root
# (the server refuses to run as root), else ourselves. Runs from the state directory so
# that the postgres user never needs to read our working directory.
svc_pg_run() {
    local dir=$1
    shift
    if svc_is_root; then
        if command -v runuser >/dev/null 2>&1; then
            (cd "$dir" && runuser -u postgres -- "$@")
        else
            local cmd
            cmd=$(printf '%q ' "$@")
            (cd "$dir" && su -s /bin/sh postgres -c "$cmd")
        fi
    else
        (cd "$dir" && "$@")
    fi
}

# Starts Postgres in "$1/pg" on a free port. Writes pg/port.
svc_pg_start() {
    local dir=$1 bindir port attempt ok=0
    bindir=$(svc_find_pg_bindir) || { svc_log "Postgres server binaries (initdb, pg_ctl) not found"; return 1; }
    mkdir -p "$dir/pg/sock"
    printf '%s\n' "$bindir" >"$dir/pg/bindir"
    if svc_is_root; then
        if ! id postgres >/dev/null 2>&1; then
            svc_log "creating system user postgres (Postgres will not run as root)"
            useradd --system --no-create-home --shell /usr/sbin/nologin postgres || return 1
        fi
        chmod 711 "$dir"
        chown -R postgres: "$dir/pg" || return 1
    fi
    if ! svc_pg_run "$dir" "$bindir/initdb" -D "$dir/pg/data" -U postgres -A trust -E UTF8 \
        --no-locale --no-sync >"$dir/pg/initdb.log" 2>&1; then
        svc_log "initdb failed:"
        cat "$dir/pg/initdb.log" >&2
        return 1
    fi
    for attempt in 1 2 3; do
        port=$(svc_free_port) || return 1
        # Later lines win: a retry simply appends its port.
        cat >>"$dir/pg/data/postgresql.conf" <<EOF

# tollgate scripts/test (attempt $attempt)
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir/pg/sock'
max_connections = 300
shared_buffers = 32MB
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
        if svc_pg_run "$dir" "$bindir/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/server.log" \
            -w -t 60 start >/dev/null 2>&1; then
            ok=1
            break
        fi
        svc_log "Postgres did not start on port $port (attempt $attempt)"
    done
    if [ "$ok" != 1 ]; then
        svc_log "Postgres failed to start; its log:"
        tail -n 30 "$dir/pg/server.log" >&2 || true
        return 1
    fi
    local isready="$bindir/pg_isready" ready=0
    [ -x "$isready" ] || isready=$(command -v pg_isready || true)
    for _ in $(seq 1 100); do
        if [ -n "$isready" ]; then
            "$isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres && ready=1
        else
            (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && ready=1
        fi
        [ "$ready" = 1 ] && break
        sleep 0.1
    done
    if [ "$ready" != 1 ]; then
        svc_log "Postgres on port $port does not accept connections; its log:"
        tail -n 30 "$dir/pg/server.log" >&2 || true
        return 1
    fi
    printf '%s\n' "$port" >"$dir/pg/port"
    svc_log "Postgres ($("$bindir/postgres" --version 2>/dev/null | sed -n 's/.*PostgreSQL) \([^ ]*\).*/\1/p')) on 127.0.0.1:$port, data in $dir/pg/data"
}

# Stops the Postgres in "$1" the way an operator's restart does (`pg_ctl -m fast`: open
# connections are cut); svc_pg_start_again starts it again on the same port and data.
svc_pg_stop() {
    local dir=$1 bindir
    bindir=$(cat "$dir/pg/bindir")
    svc_pg_run "$dir" "$bindir/pg_ctl" -D "$dir/pg/data" -m fast -w -t 60 stop >/dev/null
}

svc_pg_start_again() {
    local dir=$1 bindir
    bindir=$(cat "$dir/pg/bindir")
    svc_pg_run "$dir" "$bindir/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/server.log" -w -t 60 start >/dev/null
}

# True while process "$1" runs (a zombie, killed but not yet reaped, counts as gone).
svc_alive() {
    local state
    kill -0 "$1" 2>/dev/null || return 1
    state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 0
    [ "$state" != Z ]
}

svc_redis_ping() {
    local port=$1
    if command -v redis-cli >/dev/null 2>&1; then
        [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = PONG ]
        return
    fi
    (
        exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
        printf 'PING\r\n' >&3
        IFS= read -r -t 2 reply <&3 || exit 1
        [[ $reply == +PONG* ]]
    ) 2>/dev/null
}

# Starts redis-server in the background in "$1/redis" on a free port. Writes redis/pid and
# redis/port.
svc_redis_start() {
    local dir=$1 port pid attempt
    mkdir -p "$dir/redis"
    for attempt in 1 2 3; do
        port=$(svc_free_port) || return 1
        redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
            --daemonize no --dir "$dir/redis" --logfile "" \
            >>"$dir/redis/server.log" 2>&1 </dev/null &
        pid=$!
        printf '%s\n' "$pid" >"$dir/redis/pid"
        for _ in $(seq 1 100); do
            if svc_redis_ping "$port"; then
                printf '%s\n' "$port" >"$dir/redis/port"
                svc_log "Redis ($(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')) on 127.0.0.1:$port, pid $pid"
                return 0
            fi
            svc_alive "$pid" || break
            sleep 0.1
        done
        svc_log "Redis did not answer PING on port $port (attempt $attempt)"
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$dir/redis/pid"
    done
    svc_log "Redis failed to start; its log:"
    tail -n 30 "$dir/redis/server.log" >&2 || true
    return 1
}

# Writes "$1/env" with the export lines for the tests.
svc_write_env() {
    local dir=$1
    {
        printf 'export TOLLGATE_TEST_POSTGRES_URL=%q\n' "postgres://postgres@127.0.0.1:$(cat "$dir/pg/port")/postgres"
        printf 'export TOLLGATE_TEST_REDIS_URL=%q\n' "redis://127.0.0.1:$(cat "$dir/redis/port")/"
    } >"$dir/env"
}

# Starts both servers in the state directory "$1" and writes "$1/env".
svc_start_all() {
    local dir=$1
    svc_pg_start "$dir" || return 1
    svc_redis_start "$dir" || return 1
    svc_write_env "$dir"
}

# Stops whatever runs in the state directory "$1" and removes it. Safe to call twice and
# on a half-started directory.
svc_stop_all() {
    local dir=$1 pid
    [ -n "$dir" ] && [ -d "$dir" ] || return 0
    if [ -f "$dir/redis/pid" ]; then
        pid=$(cat "$dir/redis/pid")
        if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
            for _ in $(seq 1 50); do
                svc_alive "$pid" || break
                sleep 0.1
            done
            if svc_alive "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi
            # Reap it when it is our child (scripts/test); harmless otherwise.
            wait "$pid" 2>/dev/null || true
        fi
        rm -f "$dir/redis/pid"
    fi
    if [ -f "$dir/pg/data/postmaster.pid" ]; then
        local bindir
        bindir=$(cat "$dir/pg/bindir" 2>/dev/null || svc_find_pg_bindir || true)
        if ! svc_pg_run "$dir" "$bindir/pg_ctl" -D "$dir/pg/data" -m immediate -w -t 30 stop \
            >/dev/null 2>&1; then
            pid=$(head -n 1 "$dir/pg/data/postmaster.pid" 2>/dev/null || true)
            if [ -n "$pid" ]; then kill -9 "$pid" 2>/dev/null || true; fi
        fi
    fi
    case "$dir" in
        /tmp/tollgate-test.*) rm -rf "$dir" ;;
        *) svc_log "not removing unexpected state directory $dir" ;;
    esac
}

# Makes a fresh state directory and prints its path.
svc_make_dir() {
    mktemp -d /tmp/tollgate-test.XXXXXXXX
}
