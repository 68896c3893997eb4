# Sourced by scripts/serve and scripts/test: make .venv and install the project.
# Usage: ensure_venv [extra]   (extra: "dev" installs the test and lint tools)
ensure_venv() {
  local extra=${1:-}
  local py=${PYTHON:-python3}
  if [[ ! -x .venv/bin/python ]]; then
    echo "==> creating .venv with $($py --version)" >&2
    "$py" -m venv .venv
  fi
  local spec="."
  [[ -n $extra ]] && spec=".[$extra]"
  # Reinstall only when pyproject.toml changed since the last install of this extra.
  local stamp=".venv/.installed-${extra:-base}"
  if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
    echo "==> installing tokenpipe ($spec) into .venv" >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$spec" >&2
    touch "$stamp"
  fi
}
