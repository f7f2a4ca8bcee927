# shellcheck shell=bash
# Helpers shared by scripts/test and scripts/demo. Source it; do not run it.
#
#   ensure_rust           fail clearly when cargo is missing; install
#                         libclang (pg_query's build needs it) when missing
#   ensure_postgres       find (or apt-get install) the PostgreSQL server
#                         binaries; exports PG_BIN
#   pg_start DIR          start a throwaway cluster in DIR on a free port of
#                         127.0.0.1; exports PGPORT, PGHOST, PGUSER, DATABASE_URL
#   pg_stop DIR           stop that cluster and remove DIR
#   ensure_moto           find (or pip install) moto_server, the S3 emulator;
#                         exports RETENTIOND_MOTO
#   ensure_azurite        find (or npm install into .tools/azurite) Azurite,
#                         the Azure Blob emulator; exports RETENTIOND_AZURITE
#   ensure_rclone         find (or apt-get install) rclone (benchmark only)
#   ensure_faketime       find (or apt-get install) libfaketime; exports
#                         RETENTIOND_FAKETIME (the tests age objects with it)
#
# Everything is `set -euo pipefail` friendly, and every install step is
# skipped when the thing is already there. Works as root on a fresh Debian 12
# machine (initdb and postgres refuse to run as root: they then run as the
# `postgres` user via setpriv).

if [[ -n "${_RETENTIOND_COMMON_SH:-}" ]]; then
    return 0
fi
_RETENTIOND_COMMON_SH=1

# The repository's root (this file is scripts/lib/common.sh).
_RETENTIOND_ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd -P)"

# --- output -------------------------------------------------------------------

if [[ -t 1 ]]; then
    _BOLD=$'\033[1m' _DIM=$'\033[2m' _RED=$'\033[31m' _GREEN=$'\033[32m' _RESET=$'\033[0m'
else
    _BOLD='' _DIM='' _RED='' _GREEN='' _RESET=''
fi

# info MSG...: a progress line on stderr.
info() { printf '%s==>%s %s\n' "$_BOLD" "$_RESET" "$*" >&2; }
# warn MSG...
warn() { printf '%swarning:%s %s\n' "$_BOLD" "$_RESET" "$*" >&2; }
# die MSG...: print an error and exit 1.
die() {
    printf '%serror:%s %s\n' "$_RED$_BOLD" "$_RESET" "$*" >&2
    exit 1
}
# banner TITLE: a step header on stdout.
banner() { printf '\n%s=== %s ===%s\n' "$_BOLD" "$*" "$_RESET"; }

_is_root() { [[ "$(id -u)" -eq 0 ]]; }

# _as_root CMD...: run CMD as root (directly, or via sudo when available).
_as_root() {
    if _is_root; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run: $* (run as root, or install sudo)"
    fi
}

# --- apt ------------------------------------------------------------------------

_APT_UPDATED=''

# apt_install PKG...: install Debian packages (apt-get update at most once).
apt_install() {
    command -v apt-get >/dev/null 2>&1 ||
        die "apt-get not found: install these packages by hand: $*"
    if [[ -z "$_APT_UPDATED" ]]; then
        info "apt-get update"
        _as_root apt-get update -qq || die "apt-get update failed"
        _APT_UPDATED=1
    fi
    info "apt-get install $*"
    _as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$@" ||
        die "apt-get install $* failed"
}

# --- rust -----------------------------------------------------------------------

ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1; then
        if [[ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]]; then
            export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
        else
            die "cargo not found: install the Rust toolchain (https://rustup.rs), then re-run"
        fi
    fi
    # pg_query (PostgreSQL's parser, for `where`) generates its bindings with
    # bindgen, which loads libclang.
    if ! ldconfig -p 2>/dev/null | grep -q 'libclang[-.0-9]*\.so'; then
        apt_install libclang-dev
    fi
}

# --- postgres -------------------------------------------------------------------

# _find_pg_bin: print the directory of the PostgreSQL server binaries, or fail.
_find_pg_bin() {
    local initdb dir best=''
    if [[ -n "${PG_BIN:-}" && -x "$PG_BIN/initdb" ]]; then
        printf '%s\n' "$PG_BIN"
        return 0
    fi
    if initdb="$(command -v initdb 2>/dev/null)"; then
        # /usr/local/bin/initdb may be a symlink into /usr/lib/postgresql/N/bin,
        # where pg_ctl, pg_isready and psql live too.
        dir="$(dirname -- "$(readlink -f -- "$initdb")")"
        if [[ -x "$dir/pg_ctl" && -x "$dir/postgres" ]]; then
            printf '%s\n' "$dir"
            return 0
        fi
    fi
    for dir in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V); do
        [[ -x "$dir/initdb" ]] && best="$dir"
    done
    [[ -n "$best" ]] || return 1
    printf '%s\n' "$best"
}

# ensure_postgres: export PG_BIN, installing PostgreSQL when it is missing.
ensure_postgres() {
    local bin prog
    if ! bin="$(_find_pg_bin)"; then
        info "PostgreSQL server binaries not found: installing Debian's postgresql package"
        # Debian's postinst may create and start a `main` cluster on port 5432;
        # nothing here uses it (every script starts its own cluster).
        apt_install postgresql
        bin="$(_find_pg_bin)" || die "postgresql installed, but no initdb found under /usr/lib/postgresql/*/bin"
    fi
    for prog in initdb pg_ctl postgres pg_isready psql; do
        [[ -x "$bin/$prog" ]] || die "$bin/$prog is missing (PG_BIN=$bin)"
    done
    export PG_BIN="$bin"

    if _is_root; then
        if ! command -v setpriv >/dev/null 2>&1; then
            info "setpriv not found: installing util-linux"
            apt_install util-linux
            command -v setpriv >/dev/null 2>&1 || die "setpriv still missing after installing util-linux"
        fi
        if ! id -u postgres >/dev/null 2>&1; then
            info "creating the system user postgres (initdb and postgres refuse to run as root)"
            _as_root useradd --system --user-group --no-create-home \
                --home-dir /var/lib/postgresql --shell /usr/sbin/nologin postgres ||
                die "could not create the postgres user"
        fi
    fi
    info "PostgreSQL: $("$PG_BIN/postgres" --version) ($PG_BIN)"
}

# _pg_run DIR PROG ARGS...: run $PG_BIN/PROG from DIR, as postgres when root.
_pg_run() {
    local dir="$1" prog="$2"
    shift 2
    if _is_root; then
        (cd "$dir" && setpriv --reuid=postgres --regid=postgres --init-groups "$PG_BIN/$prog" "$@")
    else
        (cd "$dir" && "$PG_BIN/$prog" "$@")
    fi
}

# _port_in_use PORT: true when something accepts connections on 127.0.0.1:PORT.
_port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# _pick_port: print a port of 127.0.0.1 nobody listens on (random, 20000-59999).
_pick_port() {
    local port i
    for i in $(seq 1 50); do
        port=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
        if ! _port_in_use "$port"; then
            printf '%s\n' "$port"
            return 0
        fi
    done
    die "no free TCP port found on 127.0.0.1"
}

# pg_start DIR: initdb a throwaway cluster in DIR/data and start it on a free
# port of 127.0.0.1 (socket in DIR, log in DIR/server.log). Waits for
# pg_isready (60 s at most). Exports PGPORT, PGHOST, PGUSER, DATABASE_URL.
pg_start() {
    local dir="${1:?pg_start: missing DIR}" port attempt deadline
    [[ -n "${PG_BIN:-}" ]] || ensure_postgres
    mkdir -p -- "$dir"
    dir="$(cd -- "$dir" && pwd -P)"
    if _is_root; then
        chown postgres:postgres "$dir"
        setpriv --reuid=postgres --regid=postgres --init-groups test -w "$dir" -a -x "$dir" ||
            die "user postgres cannot use $dir: every parent directory must be searchable by it (chmod o+x, e.g. chmod 711 on a mktemp -d directory)"
    fi

    local initlog="$dir/initdb.log"
    if ! _pg_run "$dir" initdb -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C --no-sync \
        >"$initlog" 2>&1; then
        cat -- "$initlog" >&2
        die "initdb failed in $dir/data (output above)"
    fi

    for attempt in 1 2 3 4 5; do
        port="$(_pick_port)"
        : >"$dir/server.log"
        if _is_root; then
            chown postgres:postgres "$dir/server.log"
        fi
        if ! _pg_run "$dir" pg_ctl -D "$dir/data" -l "$dir/server.log" -W \
            -o "-p $port -k '$dir' -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off ${PG_EXTRA_OPTS:-}" \
            start >/dev/null; then
            cat -- "$dir/server.log" >&2 || true
            die "pg_ctl start failed (server log above: $dir/server.log)"
        fi
        deadline=$((SECONDS + 60))
        while ((SECONDS < deadline)); do
            if "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres; then
                export PGPORT="$port" PGHOST=127.0.0.1 PGUSER=postgres
                export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
                info "PostgreSQL cluster up on 127.0.0.1:$port (data in $dir)"
                return 0
            fi
            if ! _pg_run "$dir" pg_ctl -D "$dir/data" status >/dev/null 2>&1; then
                # Lost a race for the port? Try another one.
                if grep -q 'could not bind\|Address already in use' "$dir/server.log" 2>/dev/null; then
                    warn "port $port was taken (attempt $attempt); retrying on another port"
                    continue 2
                fi
                # Not running 5 s after the start: it died, do not wait 60 s.
                if ((SECONDS > deadline - 55)); then
                    cat -- "$dir/server.log" >&2 || true
                    die "PostgreSQL exited during startup (server log above: $dir/server.log)"
                fi
            fi
            sleep 0.2
        done
        cat -- "$dir/server.log" >&2 || true
        _pg_run "$dir" pg_ctl -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
        die "PostgreSQL did not become ready within 60 s on port $port (server log above: $dir/server.log)"
    done
    cat -- "$dir/server.log" >&2 || true
    die "PostgreSQL could not bind a free port after 5 attempts (server log above)"
}

# pg_stop DIR: stop the cluster started by `pg_start DIR` and remove DIR.
# Safe to call twice, or when pg_start failed half-way.
pg_stop() {
    local dir="${1:?pg_stop: missing DIR}"
    [[ -d "$dir" ]] || return 0
    dir="$(cd -- "$dir" && pwd -P)"
    case "$dir" in
    / | /tmp | /var/tmp | "$HOME") die "pg_stop: refusing to remove $dir" ;;
    esac
    if [[ -f "$dir/data/postmaster.pid" && -n "${PG_BIN:-}" ]]; then
        _pg_run "$dir" pg_ctl -D "$dir/data" -m fast -w stop >/dev/null 2>&1 ||
            warn "pg_ctl stop failed for $dir/data"
    fi
    rm -rf -- "$dir"
}

# --- blob-store emulators -------------------------------------------------------

# _moto_exe: print the absolute path of the moto_server that belongs to the
# python3 on PATH (the one `import moto` works in), or fail.
_moto_exe() {
    local dir exe
    # Prefer the script next to python3's own (pip puts it there): a pyenv
    # shim on PATH may be missing until `pyenv rehash`.
    for dir in "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null)" \
        "$(python3 -c 'import site; print(site.USER_BASE)' 2>/dev/null)/bin"; do
        if [[ -n "$dir" && -x "$dir/moto_server" ]]; then
            printf '%s\n' "$dir/moto_server"
            return 0
        fi
    done
    exe="$(command -v moto_server 2>/dev/null)" || return 1
    printf '%s\n' "$exe"
}

# ensure_moto: export RETENTIOND_MOTO, the absolute path of moto_server (the
# S3 emulator, PyPI moto[server]), pip-installing it when it is missing.
# An executable RETENTIOND_MOTO that is already set is kept.
ensure_moto() {
    local exe version
    local probe='import moto, flask; print(moto.__version__)'
    if [[ -n "${RETENTIOND_MOTO:-}" && -x "$RETENTIOND_MOTO" ]]; then
        info "moto_server: $RETENTIOND_MOTO (from RETENTIOND_MOTO)"
        return 0
    fi
    command -v python3 >/dev/null 2>&1 || apt_install python3 python3-pip
    if command -v moto_server >/dev/null 2>&1 &&
        version="$(python3 -c "$probe" 2>/dev/null)" && exe="$(_moto_exe)"; then
        :
    else
        info "moto_server not found: installing moto[server] from PyPI"
        python3 -m pip install --quiet 'moto[server]' ||
            die "pip install 'moto[server]' failed (a Debian python3 refusing it as externally managed needs a venv or pyenv python)"
        hash -r
        version="$(python3 -c "$probe" 2>/dev/null)" ||
            die "moto[server] installed, but python3 cannot import moto and flask"
        exe="$(_moto_exe)" || die "moto[server] installed, but no moto_server executable found"
    fi
    exe="$(cd -- "$(dirname -- "$exe")" && pwd -P)/$(basename -- "$exe")"
    export RETENTIOND_MOTO="$exe"
    info "moto_server: moto $version ($exe)"
}

# ensure_azurite: export RETENTIOND_AZURITE, the absolute path of azurite-blob
# (the Azure Blob emulator), npm-installing azurite into the project-local
# prefix .tools/azurite (gitignored) when it is not there yet. npm picks the
# newest azurite whose `engines` accepts this node (azurite >= 3.36 wants
# node >= 21). An executable RETENTIOND_AZURITE that is already set is kept.
ensure_azurite() {
    local prefix="$_RETENTIOND_ROOT/.tools/azurite"
    local exe="$prefix/node_modules/.bin/azurite-blob"
    if [[ -n "${RETENTIOND_AZURITE:-}" && -x "$RETENTIOND_AZURITE" ]]; then
        info "azurite-blob: $RETENTIOND_AZURITE (from RETENTIOND_AZURITE)"
        return 0
    fi
    if [[ ! -x "$exe" ]]; then
        if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
            info "node or npm not found: installing Debian's nodejs and npm"
            apt_install nodejs npm
        fi
        info "installing azurite from npm into $prefix"
        mkdir -p -- "$prefix"
        # Pinned: the newest release that runs on Debian's and this image's
        # node 20 (3.36 and later want node >= 21).
        npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error azurite@3.35.0 ||
            die "npm install --prefix $prefix azurite failed"
        [[ -x "$exe" ]] || die "azurite installed, but $exe is missing"
    fi
    export RETENTIOND_AZURITE="$exe"
    info "azurite-blob: azurite $("$exe" --version 2>/dev/null || echo '?') ($exe)"
}

# ensure_rclone: install rclone when it is missing (only the benchmark uses it).
ensure_rclone() {
    if ! command -v rclone >/dev/null 2>&1; then
        info "rclone not found: installing Debian's rclone"
        apt_install rclone
        command -v rclone >/dev/null 2>&1 || die "rclone installed, but not on PATH"
    fi
    info "rclone: $(rclone version 2>/dev/null | head -n 1) ($(command -v rclone))"
}

# ensure_faketime: export RETENTIOND_FAKETIME, the path of libfaketime.so.1.
# S3 and Azure set an object's last-modified time themselves, so the tests
# start the emulators under libfaketime and move their clock back to write
# "old" objects.
ensure_faketime() {
    local lib
    lib="$(ls /usr/lib/*/faketime/libfaketime.so.1 2>/dev/null | head -n 1 || true)"
    if [[ -z "$lib" ]]; then
        info "libfaketime not found: installing Debian's faketime"
        apt_install faketime
        lib="$(ls /usr/lib/*/faketime/libfaketime.so.1 2>/dev/null | head -n 1 || true)"
        [[ -n "$lib" ]] || die "faketime installed, but libfaketime.so.1 is missing"
    fi
    export RETENTIOND_FAKETIME="$lib"
    info "libfaketime: $lib"
}
