#!/usr/bin/env bash
# Check the import contracts of pyproject.toml ([tool.importlinter]) with import-linter.
# The sources live in xinfang/, models/, training/ and serving/ (installed as xinfang.models, ...); import-linter
# reads packages from disk, so the check runs on a copy laid out as installed.
set -euo pipefail
cd "$(dirname "$0")/.."
lint=$(pwd)/.venv/bin/lint-imports
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp -r xinfang "$stage/xinfang"
for pkg in models training serving; do
  mkdir -p "$stage/xinfang/$pkg"
  (cd "$pkg" && find . -name '*.py' -exec cp --parents {} "$stage/xinfang/$pkg/" \;)
done
find "$stage" -name __pycache__ -prune -exec rm -rf {} +
cfg=$(pwd)/pyproject.toml
cd "$stage" && PYTHONPATH="$stage" "$lint" --no-cache --config "$cfg"
