#!/usr/bin/env bash
# Makes (or keeps) a venv installed from a lock: ensure_venv.sh PYTHON VENV LOCK.
# The venv's stamp records its Python version and the hashes of the lock and pyproject.toml;
# when any differs the venv is rebuilt and the reason printed, so a venv made with the wrong
# Python (or an old lock) never sticks.
set -euo pipefail
python=$1 venv=$2 lock=$3
stamp=$venv/.installed-stamp

if ! command -v "$python" >/dev/null 2>&1; then
  echo "ensure_venv: '$python' not found; give a Python 3.10-3.13 as PYTHON=..." >&2
  exit 1
fi
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
supported=$(sed -n 's/^requires-python = ">=3\.\([0-9]*\),<3\.\([0-9]*\)"/\1 \2/p' pyproject.toml)
read -r lo hi <<<"${supported:-10 14}"
minor=${version#3.}
if [[ ${version%%.*} != 3 || $minor -lt $lo || $minor -ge $hi ]]; then
  echo "ensure_venv: $python is Python $version; this project supports 3.$lo to 3.$((hi - 1)) (PYTHON=python3.11 for example)" >&2
  exit 1
fi
want="python=$version lock=$lock:$(sha256sum "$lock" pyproject.toml | cut -c1-16 | tr '\n' ' ')"

if [[ -f $stamp && "$(cat "$stamp")" == "$want" && -x $venv/bin/python ]]; then
  exit 0
fi
if [[ -d $venv ]]; then
  have=$(cat "$stamp" 2>/dev/null || true)
  have_py=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo "none")
  if [[ $have_py != "$version" ]]; then
    echo "ensure_venv: $venv has Python $have_py but $python is Python $version: rebuilding $venv"
    rm -rf "$venv"
  elif [[ -z $have ]]; then
    echo "ensure_venv: $venv has no install stamp (interrupted or older install): re-syncing it with $lock"
  else
    echo "ensure_venv: $lock or pyproject.toml changed since $venv was installed: re-syncing it"
  fi
fi
if [[ ! -x $venv/bin/python ]]; then
  "$python" -m venv "$venv"
fi
echo "ensure_venv: installing $venv from $lock with Python $version"
"$venv/bin/python" -m pip --version >/dev/null 2>&1 || "$venv/bin/python" -m ensurepip >/dev/null
uv_version=$(sed -n 's/^uv==\([^ ;]*\).*/\1/p' "$lock" | head -1)
"$venv/bin/python" -m pip install -q --disable-pip-version-check "uv==$uv_version"
"$venv/bin/uv" pip sync -q --python "$venv/bin/python" "$lock"
"$venv/bin/uv" pip install -q --python "$venv/bin/python" --no-deps -e .
# setuptools leaves an .egg-info here; with the repo on sys.path Airflow would see the package twice.
rm -rf airflow_provider_qwenbatch.egg-info
echo "$want" >"$stamp"
