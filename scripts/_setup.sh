# Shared by scripts/run, scripts/test and scripts/bench: Debian packages and the virtualenv.
# Sourced, not executed. Idempotent: a second run installs nothing.

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

ensure_debian_packages() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "==> Installing Debian packages: ${missing[*]}"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
}

ensure_venv() {
  local extras="${1:-}"
  local target="."
  [ -n "$extras" ] && target=".[$extras]"
  if ! python3 -c "import venv, ensurepip" 2>/dev/null; then
    ensure_debian_packages python3-venv
  fi
  if [ ! -x .venv/bin/python ]; then
    echo "==> Creating .venv"
    python3 -m venv .venv
  fi
  # Re-install only when pyproject.toml changed since the last install.
  local stamp=".venv/.installed-${extras:-base}"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "==> Installing Python packages ($extras)"
    if ! .venv/bin/pip install -q --disable-pip-version-check "$target" >.venv/pip.log 2>&1; then
      grep -v "is ignored" .venv/pip.log >&2; echo "pip install failed" >&2; exit 1
    fi
    touch "$stamp"
  fi
}
