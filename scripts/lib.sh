# Shared by scripts/test, scripts/demo and scripts/bench: what this project
# needs on the machine, installed when missing. Source it; do not run it.
PG_MAJOR=${PG_MAJOR:-15}
PG_BINDIR=/usr/lib/postgresql/$PG_MAJOR/bin
PG_CONFIG=$PG_BINDIR/pg_config
PGRX_VERSION=0.18.1
# PostgreSQL refuses to run as root: servers and tests run as this user.
TEST_OS_USER=${TEST_OS_USER:-postgres}
PGRX_TESTDATA=${PGRX_TESTDATA:-/tmp/pgrx-testdata-$PG_MAJOR}
APT_PACKAGES="postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR libclang-dev clang pkg-config libpq-dev libkrb5-dev sudo"

step() { printf '\n==> %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

ensure_packages() {
    local missing=()
    for p in $APT_PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    step "installing ${missing[*]}"
    as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
}

ensure_cargo_pgrx() {
    if cargo pgrx --version 2>/dev/null | grep -q " $PGRX_VERSION\$"; then return 0; fi
    step "installing cargo-pgrx $PGRX_VERSION (takes several minutes)"
    cargo install --locked cargo-pgrx --version "$PGRX_VERSION"
}

ensure_pgrx_init() {
    local cfg=${PGRX_HOME:-$HOME/.pgrx}/config.toml
    if [ -f "$cfg" ] && grep -q "^pg$PG_MAJOR = \"$PG_CONFIG\"" "$cfg"; then return 0; fi
    step "cargo pgrx init --pg$PG_MAJOR $PG_CONFIG"
    # Never without --pgNN: it would try to download PostgreSQL.
    cargo pgrx init "--pg$PG_MAJOR" "$PG_CONFIG"
}

ensure_os_user() {
    id "$TEST_OS_USER" >/dev/null 2>&1 && return 0
    step "creating the unprivileged user $TEST_OS_USER"
    as_root useradd --system --create-home --shell /bin/bash "$TEST_OS_USER"
}

ensure_prerequisites() {
    export PATH="$HOME/.cargo/bin:$PG_BINDIR:$PATH"
    export SLS_PG_BINDIR=$PG_BINDIR
    ensure_packages && ensure_cargo_pgrx && ensure_pgrx_init && ensure_os_user
}
