#!/usr/bin/env bash
# Installs the servers the test suite starts for itself (PostgreSQL, Redis, Prometheus) from the
# system's packages, when missing. A no-op when they are there. Non-interactive; as root it runs
# apt-get itself, otherwise through `sudo -n` (never prompts). Called by `make test`.
set -euo pipefail

missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "system-deps: installing ${missing[*]}" >&2
if ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: no apt-get here; install ${missing[*]} with this system's package manager" >&2
  exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "system-deps: need root to install ${missing[*]}: run 'sudo make system-deps' once" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
# --no-install-recommends keeps it small; the Debian packages do not start their services in a
# container without systemd, and the tests start their own servers anyway.
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "system-deps: installed ${missing[*]}" >&2
