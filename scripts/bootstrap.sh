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
# MariaDB for dbbalancer.testing.mariadbcluster: mariadbd and mariadb-install-db come with
# mariadb-server (Debian puts mariadbd in /usr/sbin), the mariadb client with mariadb-client.
have() { command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }
{ have mariadbd && have mariadb-install-db; } || want_pkgs+=(mariadb-server)
have mariadb || want_pkgs+=(mariadb-client)
for extra in "$@"; do
  case "$extra" in
    bench)
      command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || want_pkgs+=(pgbouncer)
      command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || want_pkgs+=(haproxy) ;;
  esac
done
# sysbench: `make bench`, and the MySQL client tests run oltp_read_write through the proxy.
command -v sysbench >/dev/null || want_pkgs+=(sysbench)
python3 -c "import venv, ensurepip" 2>/dev/null || want_pkgs+=(python3 python3-venv)

if [ ${#want_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "bootstrap: installing ${want_pkgs[*]} with apt-get"
    # Debian starts a 'main' cluster on 5432 when postgresql-15 is installed; we need only the binaries.
    mkdir -p /etc/postgresql-common
    if [ ! -f /etc/postgresql-common/createcluster.conf ]; then
      echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
    fi
    # Nor may mariadb-server start a service on 3306: a policy-rc.d that exits 101 makes
    # invoke-rc.d and deb-systemd-invoke refuse every start during the install. An existing
    # policy (container images ship one) is left as it is.
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\n# dbbalancer bootstrap: no service starts during apt-get install\nexit 101\n' > "$policy"
      chmod 755 "$policy"
      trap 'rm -f "$policy"' EXIT
    fi
    new_mariadb=0
    [[ " ${want_pkgs[*]} " == *" mariadb-server "* ]] && new_mariadb=1
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${want_pkgs[@]}" >/dev/null
    if [ "$new_mariadb" -eq 1 ] && command -v systemctl >/dev/null; then
      # The package enables mariadb.service for the next boot; we only need the binaries.
      systemctl disable --quiet mariadb.service 2>/dev/null || true
    fi
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
