#!/usr/bin/env bash
# Install PostgreSQL for the team-server tests (tests/e2e/test_team.py, the "http-postgres" store):
# Debian's postgresql package. The tests make their own throwaway cluster with its initdb and
# pg_ctl (/usr/lib/postgresql/<version>/bin), owned by the package's `postgres` user.
#
# Idempotent: does nothing when initdb is already there. Needs root for apt-get; without it, says
# so and exits 0, and the PostgreSQL cases skip with that reason. Under NBTRACK_REQUIRE_ALL=1 (CI)
# nothing may skip: it exits 1 instead, and the PostgreSQL cases would fail.
set -euo pipefail

if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && id postgres >/dev/null 2>&1; then
  echo "install_postgres: $(ls -d /usr/lib/postgresql/*/bin/initdb | tail -1) is present."
  exit 0
fi

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "install_postgres: PostgreSQL is missing and apt-get cannot run here (needs root)." >&2
  echo "install_postgres: as root run: apt-get update && apt-get install -y postgresql" >&2
  if [ -n "${NBTRACK_REQUIRE_ALL:-}" ] && [ "${NBTRACK_REQUIRE_ALL}" != 0 ]; then
    echo "install_postgres: NBTRACK_REQUIRE_ALL=1: the PostgreSQL cases may not skip, so this fails." >&2
    exit 1
  fi
  echo "install_postgres: until then the PostgreSQL store cases of tests/e2e/test_team.py skip." >&2
  exit 0
fi

echo "install_postgres: installing postgresql with apt-get..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# The package's own cluster is not needed (the tests start theirs): keep it from being created.
mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/nbtrack-tests.conf
apt-get install -y -qq --no-install-recommends postgresql >/dev/null
echo "install_postgres: $(ls -d /usr/lib/postgresql/*/bin/initdb | tail -1) installed."
