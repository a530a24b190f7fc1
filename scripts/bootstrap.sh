#!/usr/bin/env bash
# Prepare a machine for `make demo` / `make test` / `make bench`:
# system packages (when run as root and they are missing), then .venv with the package and dev extras.
set -euo pipefail
cd "$(dirname "$0")/.."

want_pkgs=()
have_pg_server() { compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null; }
have_pg_server || want_pkgs+=(postgresql-15 postgresql-client-15)
command -v psql >/dev/null || want_pkgs+=(postgresql-client-15)
# pgbench ships with the server package (postgresql-15), psql with the client package.
command -v pgbench >/dev/null || want_pkgs+=(postgresql-15)
for extra in "$@"; do
  case "$extra" in
    mariadb) command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || want_pkgs+=(mariadb-server mariadb-client) ;;
    bench)
      command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || want_pkgs+=(pgbouncer)
      command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || want_pkgs+=(haproxy)
      command -v sysbench >/dev/null || want_pkgs+=(sysbench) ;;
  esac
done
python3 -c "import venv, ensurepip" 2>/dev/null || want_pkgs+=(python3 python3-venv)

if [ ${#want_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "bootstrap: installing ${want_pkgs[*]} with apt-get"
    # Debian starts a 'main' cluster on 5432 when postgresql-15 is installed; we need only the binaries.
    mkdir -p /etc/postgresql-common
    if [ ! -f /etc/postgresql-common/createcluster.conf ]; then
      echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${want_pkgs[@]}" >/dev/null
  else
    echo "bootstrap: missing system packages: ${want_pkgs[*]}" >&2
    echo "bootstrap: install them (sudo apt-get install ${want_pkgs[*]}) or run as root" >&2
    exit 1
  fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  # setuptools >= 77 in the venv too: `make compile` runs setup.py with it.
  .venv/bin/python -m pip install -q --upgrade 'setuptools>=77' wheel 2>&1 | grep -v "is ignored" || true
  # The editable checkout stays pure Python; `make compile` builds the compiled package aside.
  DBBALANCER_COMPILE=0 .venv/bin/python -m pip install -q -e '.[dev]' 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -c "import dbbalancer" 
  touch "$stamp"
fi
