#!/usr/bin/env bash
# Installs what stepkernel's tests and examples need, idempotently:
# Debian packages (when missing), the Python virtualenv .venv with pinned
# packages (reused when its requirements have not changed), and a debug build.
# `--demo`: only what scripts/demo.sh needs (no browser, tmux or netns tools
# for the end-to-end tests).
set -euo pipefail
cd "$(dirname "$0")/.."

demo_only=false
for arg in "$@"; do
  case "$arg" in
    --demo) demo_only=true ;;
    *) echo "setup: unknown option $arg (usage: scripts/setup.sh [--demo])" >&2; exit 4 ;;
  esac
done

need_apt=()
command -v git >/dev/null || need_apt+=(git)
if ! $demo_only; then
  command -v tmux >/dev/null || need_apt+=(tmux)
  command -v ip >/dev/null || need_apt+=(iproute2)
  # The ssh xdist worker test runs a real sshd in a network namespace.
  [ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
  # The browser test drives JupyterLab in Debian's Chromium (never a downloaded browser).
  command -v chromium >/dev/null || need_apt+=(chromium fonts-liberation)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  sudo_cmd=()
  [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
  # Best effort: the tests that need a missing tool (browser, tmux, netns) skip and say why.
  if ! { "${sudo_cmd[@]}" apt-get update -qq &&
         "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null; }; then
    echo "setup: WARNING: could not install ${need_apt[*]}; tests needing them will be skipped" >&2
  fi
fi
command -v git >/dev/null || { echo "setup: git is required" >&2; exit 1; }

command -v cargo >/dev/null || { echo "setup: cargo (Rust) is required: https://rustup.rs" >&2; exit 1; }

PYTHON=${PYTHON:-python3}
stamp=.venv/.stepkernel-requirements
want=$(sha256sum tests/requirements.txt | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: creating the Python virtualenv .venv (pip installs the pinned packages of tests/requirements.txt: a minute or two)"
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r tests/requirements.txt
  echo "$want" > "$stamp"
fi
plugins_stamp=.venv/opt-plugins/.stepkernel-requirements
plugins_want=$(sha256sum tests/plugin-requirements.txt | cut -d' ' -f1)
if [ "$(cat "$plugins_stamp" 2>/dev/null)" != "$plugins_want" ]; then
  rm -rf .venv/opt-plugins
  .venv/bin/python -m pip install -q --no-deps --target .venv/opt-plugins -r tests/plugin-requirements.txt
  echo "$plugins_want" > "$plugins_stamp"
fi

# playwright-core (pinned in tests/browser/package.json, no dependencies) drives
# that Chromium; it downloads no browser of its own. The demo does not need it.
if $demo_only; then
  :
elif command -v npm >/dev/null; then
  js_stamp=tests/browser/node_modules/.stepkernel-package
  js_want=$(sha256sum tests/browser/package.json | cut -d' ' -f1)
  if [ "$(cat "$js_stamp" 2>/dev/null)" != "$js_want" ]; then
    echo "setup: installing the browser test's node packages"
    if (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install -s --no-package-lock --no-audit --no-fund); then
      echo "$js_want" > "$js_stamp"
    else
      echo "setup: WARNING: npm install failed; the browser test will be skipped" >&2
    fi
  fi
else
  echo "setup: npm not found: the browser test will be skipped" >&2
fi

# Every crate the lockfile names, for every platform (cargo build fetches only this
# one's): the packaging test's `maturin build --offline` reads them all.
cargo fetch --locked -q
if [ -x "${CARGO_TARGET_DIR:-target}/debug/stepkernel" ]; then
  cargo build -q
else
  # The first build compiles every dependency: show cargo's progress.
  echo "setup: building stepkernel with cargo (the first build compiles every dependency: 1-2 minutes on 2 cores; later ones take seconds)"
  build_started=$SECONDS
  cargo build
  echo "setup: first build took $(( (SECONDS - build_started) / 60 ))m$(( (SECONDS - build_started) % 60 ))s"
fi
