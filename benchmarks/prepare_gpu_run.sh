#!/usr/bin/env bash
# What `bash benchmarks/gpu.sh` needs on the GPU machine that cannot be made there (no network, no mencoder):
# run here, on the development machine, before the device call. Both folders are git-ignored; the call names
# them in `carry`:
#   .whl/            PyAV (the version constraints.txt pins) and PyNvVideoCodec, for the image's Python 3.12;
#                    PyNvVideoCodec's wheel is trimmed of its FFmpeg source tarball, samples and benchmarks
#                    (27 MB -> ~10 MB; the installed package is the same), since what travels is limited to 64 MiB
#   benchmarks/xvid/ UCF-101's encoding (MEncoder XviD, packed B-frames): benchmarks/make_xvid.py
#   bash benchmarks/prepare_gpu_run.sh        # idempotent: keeps what is already there
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
NVC_VERSION=${NVC_VERSION:-2.2.4}
AV_VERSION=$(sed -n 's/^av==//p' constraints.txt)
mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
download() {  # NAME==VERSION, unless a wheel of it is already there
  local name=${1%%==*}
  if ! compgen -G ".whl/${name}-${1##*==}-*.whl" >/dev/null; then
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${platforms[@]}" -d .whl "$1"
  fi
}
download "av==$AV_VERSION"
download "pynvvideocodec==$NVC_VERSION"
"$PY" - <<'EOF'
# Trim PyNvVideoCodec's wheel: drop what the installed package never loads (its FFmpeg source tarball, the
# samples and benchmarks), and their RECORD lines. Written beside, then renamed over the original.
import glob, os, zipfile
for path in glob.glob(".whl/pynvvideocodec-*.whl"):
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        drop = [n for n in names if n.startswith(("samples/", "benchmarks/")) or "/data/external/" in n]
        if not drop:
            continue
        tmp = path + ".part"
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
            for info in z.infolist():
                if info.filename in drop:
                    continue
                data = z.read(info)
                if info.filename.endswith(".dist-info/RECORD"):
                    lines = data.decode().splitlines(keepends=True)
                    data = "".join(l for l in lines if l.split(",")[0] not in drop).encode()
                out.writestr(info, data)
    os.replace(tmp, path)
    print(f"{path}: dropped {len(drop)} files, now {os.path.getsize(path) / 1e6:.1f} MB")
EOF
if [ ! -f benchmarks/xvid/manifest.json ]; then
  "$PY" benchmarks/make_xvid.py --out benchmarks/xvid
fi
du -sh .whl/*.whl benchmarks/xvid
# What the device call sends: tracked and untracked-not-ignored files plus the two carried folders (<= 64 MiB).
tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 du -cb 2>/dev/null | tail -n1 | cut -f1)
carried=$(du -cb .whl benchmarks/xvid | tail -n1 | cut -f1)
echo "would travel: $(( (tree + carried) / 1048576 )) MiB of 64 (working tree $(( tree / 1048576 )) MiB)"
