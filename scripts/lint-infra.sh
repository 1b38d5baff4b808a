#!/usr/bin/env bash
# Static checks of infra/: checkov over the Bicep and Terraform templates, plus `terraform fmt`
# when the terraform CLI happens to be installed. Exits non-zero on any failed check.
#
# checkov lives in its own venv (.venv-lint): its dependency pins clash with the app's .venv.
# The install is skipped when .venv-lint already has the pinned version.
#
# Every skipped check carries its reason inline in the template
# (Terraform: #checkov:skip=ID:reason, Bicep: // checkov:skip=ID:reason inside the resource).
set -euo pipefail

cd "$(dirname "$0")/.."

CHECKOV_VERSION="3.3.30"
VENV=".venv-lint"
PYTHON="${PYTHON:-python3}"

installed=""
if [[ -x "$VENV/bin/checkov" ]]; then
    installed="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("checkov"))' 2>/dev/null || true)"
fi
if [[ "$installed" != "$CHECKOV_VERSION" ]]; then
    echo "lint-infra: installing checkov==$CHECKOV_VERSION into $VENV" >&2
    [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION"
fi

out="$(mktemp)"
trap 'rm -f "$out"' EXIT

# --skip-download: no calls to the vendor's platform (no API key, no network needed).
set +e
"$VENV/bin/checkov" -d infra --framework bicep terraform --quiet --compact --skip-download 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
set -e
if [[ $rc -ne 0 ]]; then
    echo "lint-infra: checkov reported failed checks or an error (exit $rc)" >&2
    exit "$rc"
fi
# A template checkov cannot parse is silently dropped: insist that both frameworks were scanned.
for framework in terraform bicep; do
    if ! grep -q "^$framework scan results" "$out"; then
        echo "lint-infra: checkov scanned no $framework resources (parse failure?)" >&2
        exit 1
    fi
done

if command -v terraform >/dev/null 2>&1; then
    if ! terraform fmt -check -recursive -diff infra/terraform; then
        echo "lint-infra: terraform fmt found unformatted files (run: terraform fmt -recursive infra/terraform)" >&2
        exit 1
    fi
    echo "lint-infra: terraform fmt: ok"
else
    echo "lint-infra: terraform CLI not installed; skipped terraform fmt" >&2
fi

echo "lint-infra: ok"
