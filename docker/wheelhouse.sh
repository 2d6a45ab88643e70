#!/usr/bin/env bash
# Every third-party Python package ainode needs, as wheels in docker/wheelhouse/, so the images install
# with `pip install --no-index --find-links` and never ask an index: the way an offline site installs, and
# the only way where a bare image does not trust the certificate authority in front of PyPI.
# Run it from anywhere, with the network (PyPI, and PyTorch's index for torch), on Linux x86_64 with
# Python 3.11 (the images' Python and platform):
#   docker/wheelhouse.sh                   # torch's CPU build
#   docker/wheelhouse.sh --torch cu126     # torch's CUDA 12.6 build instead (several GB with nvidia-* wheels)
#   docker/wheelhouse.sh --torch cu126 --torch-index-url https://mirror.example/whl/cu126   # a site's mirror
# --torch names the build (PyTorch's local version: cpu, cu126, ...); the image is built for the same one
# (compose's AINODE_TORCH, the Dockerfile's TORCH argument), which refuses a wheelhouse holding another.
# The CPU build (about 190 MB, where PyPI's is the CUDA build that pulls several GB of nvidia-* wheels) comes
# from pip's own find-links where this machine has it, else from PyTorch's CPU index. A torch wheel of the
# build asked for already in the wheelhouse is kept. Also writes requirements.txt, the exact set the image
# installs.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3.11}
torch=cpu index=
while [ $# -gt 0 ]; do
    case $1 in
        --torch) torch=${2:?--torch needs a build: cpu, cu126, ...}; shift 2 ;;
        --torch-index-url) index=${2:?--torch-index-url needs a URL}; shift 2 ;;
        *) echo "usage: $0 [--torch cpu|cu126|...] [--torch-index-url URL]" >&2; exit 2 ;;
    esac
done
[[ $torch =~ ^(cpu|cu[0-9]+|rocm[0-9.]+)$ ]] || { echo "--torch $torch: not a build of torch (cpu, cu126, ...)" >&2; exit 2; }
out=docker/wheelhouse
"$python" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "the images run Python 3.11, not " + sys.version.split()[0])'
pip=("$python" -m pip --disable-pip-version-check)
new=$(mktemp -d "${out%/*}/.wheelhouse.XXXXXX")
trap 'rm -rf "$new"' EXIT

if compgen -G "$out/torch-2.13.0+$torch-*.whl" >/dev/null && [ -z "$index" ]; then
    cp "$out"/torch-2.13.0+"$torch"-*.whl "$new"/
else
    if [ "$torch" = cpu ] && [ -z "$index" ]; then
        # a CPU wheel in pip's configured find-links (no index asked), else PyTorch's CPU index
        "${pip[@]}" download --no-deps --dest "$new" --no-index torch==2.13.0 >/dev/null 2>&1 || true
        compgen -G "$new/torch-2.13.0+cpu-*.whl" >/dev/null || rm -f "$new"/torch-*.whl
    fi
    if ! compgen -G "$new/torch-2.13.0+$torch-*.whl" >/dev/null; then
        "${pip[@]}" download --no-deps --dest "$new" --index-url "${index:-https://download.pytorch.org/whl/$torch}" \
            "torch==2.13.0+$torch"
    fi
fi

# ainode's dependencies (torch pinned to the build just put there, not an earlier run's other build), and
# setuptools and wheel, which build ainode from the repository's source inside the image; the wheels of an
# earlier run are reused where they fit
earlier=(); [ -d "$out" ] && earlier=(--find-links "$PWD/$out")
"${pip[@]}" wheel -qq --wheel-dir "$new" --find-links "$new" "${earlier[@]}" . "torch==2.13.0+$torch" 'setuptools>=68' wheel
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
