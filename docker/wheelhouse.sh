#!/usr/bin/env bash
# Every third-party Python package ainode needs, as wheels in docker/wheelhouse/, so the images install
# with `pip install --no-index --find-links` and never ask an index: the way an offline site installs, and
# the only way where a bare image does not trust the certificate authority in front of PyPI.
# Run it from anywhere, with the network (PyPI, and PyTorch's index for torch), on Linux x86_64 with
# Python 3.11 (the images' Python and platform):
#   docker/wheelhouse.sh
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 docker/wheelhouse.sh   # CUDA torch instead of CPU
# torch 2.13.0 comes as its CPU build by default (about 190 MB, where PyPI's is the CUDA build that pulls
# several GB of nvidia-* wheels): from pip's own find-links where this machine has it, else from PyTorch's
# CPU index. A torch wheel already in the wheelhouse is kept. Also writes requirements.txt, the exact set
# the image installs.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3.11}
out=docker/wheelhouse
"$python" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "the images run Python 3.11, not " + sys.version.split()[0])'
pip=("$python" -m pip --disable-pip-version-check)
new=$(mktemp -d "${out%/*}/.wheelhouse.XXXXXX")
trap 'rm -rf "$new"' EXIT

if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "${pip[@]}" download --no-deps --dest "$new" --index-url "$TORCH_INDEX_URL" torch==2.13.0
elif compgen -G "$out/torch-2.13.0+cpu-*.whl" >/dev/null; then
    cp "$out"/torch-2.13.0+cpu-*.whl "$new"/
else
    # a CPU wheel in pip's configured find-links (no index asked), else PyTorch's CPU index
    "${pip[@]}" download --no-deps --dest "$new" --no-index torch==2.13.0 >/dev/null 2>&1 || true
    if ! compgen -G "$new/torch-2.13.0+cpu-*.whl" >/dev/null; then
        rm -f "$new"/torch-*.whl
        "${pip[@]}" download --no-deps --dest "$new" --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
    fi
fi

# ainode's dependencies (torch is the one just put there), and setuptools and wheel, which build ainode
# from the repository's source inside the image; the wheels of an earlier run are reused where they fit
earlier=(); [ -d "$out" ] && earlier=(--find-links "$PWD/$out")
"${pip[@]}" wheel -qq --wheel-dir "$new" --find-links "$new" "${earlier[@]}" . 'setuptools>=68' wheel
rm -f "$new"/ainode-*.whl  # the images build ainode from the source they are given
for wheel in "$new"/*.whl; do
    base=${wheel##*/}
    name=${base%%-*}; rest=${base#*-}
    echo "$name==${rest%%-*}"
done | sort -f >"$new/requirements.txt"
rm -rf "$out"
mv "$new" "$out"
trap - EXIT
echo "$out: $(wc -l <"$out/requirements.txt") wheels, $(du -sm "$out" | cut -f1) MB"
