"""Fetch onnxruntime-web for the static page (web/index.html) into web/vendor/: one pinned version of
the npm package, refused unless its sha512 is the one the registry published, and only the three
files the page loads. Standard library only; run it once, with the network:

    python web/fetch_ort.py
"""
import base64
import hashlib
import io
import os
import sys
import tarfile
import urllib.error
import urllib.request

VERSION = "1.31.1"
# dist.integrity of https://registry.npmjs.org/onnxruntime-web/1.31.1: a tarball with another hash is refused
INTEGRITY = "sha512-5GeH+bWQ+HxM10z7erGlsWqryrwMbSvm/1tkIsKTT48g0fI19VXVVC435t4t7VsPdSQeS7NmuZPXrQ73k82URw=="
URL = f"https://registry.npmjs.org/onnxruntime-web/-/onnxruntime-web-{VERSION}.tgz"
# The WebGPU bundle: its one WebAssembly build runs both the webgpu and the wasm (CPU) backends.
FILES = ("ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm")
VENDOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vendor")
MARKER = os.path.join(VENDOR, "VERSION")  # holds INTEGRITY once every file is in place
HOW = "run `python web/fetch_ort.py` again with network access (the page web/index.html needs these files)"


def vendor_mb():
    return sum(os.path.getsize(os.path.join(VENDOR, f)) for f in FILES) / 1e6


def present():
    """Whether web/vendor/ holds every file of this version."""
    try:
        with open(MARKER) as f:
            marker = f.read().strip()
    except OSError:
        return False
    return marker == INTEGRITY and all(os.path.isfile(os.path.join(VENDOR, f)) for f in FILES)


def download():
    """The package tarball, checked against INTEGRITY; raises OSError or ValueError saying why not."""
    with urllib.request.urlopen(URL, timeout=120) as r:
        data = r.read()
    algo, _, want = INTEGRITY.partition("-")
    got = base64.b64encode(hashlib.new(algo, data).digest()).decode()
    if got != want:
        raise ValueError(f"refused {URL}: its {algo} is {got}, not the pinned {want}")
    return data


def extract(data):
    """Write FILES from the tarball into VENDOR, each to a temporary name and then renamed."""
    os.makedirs(VENDOR, exist_ok=True)
    if os.path.exists(MARKER):
        os.remove(MARKER)  # until every file of this version is in place
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for name in FILES:
            member = tar.getmember(f"package/dist/{name}")  # KeyError when the package lacks it
            if not member.isfile():
                raise ValueError(f"package/dist/{name} in {URL} is not a regular file")
            tmp = os.path.join(VENDOR, name + ".part")
            with tar.extractfile(member) as src, open(tmp, "wb") as dst:
                dst.write(src.read())
            os.replace(tmp, os.path.join(VENDOR, name))
    with open(MARKER, "w") as f:
        f.write(INTEGRITY + "\n")


def main():
    if present():
        print(f"onnxruntime-web {VERSION} is already in {VENDOR} ({vendor_mb():.1f} MB)")
        return 0
    try:
        extract(download())
    except (OSError, ValueError, KeyError, tarfile.TarError) as e:
        why = e.reason if isinstance(e, urllib.error.URLError) else e
        print(f"could not fetch onnxruntime-web {VERSION} from {URL}: {why}; {HOW}", file=sys.stderr)
        return 1
    print(f"fetched onnxruntime-web {VERSION} into {VENDOR}: {', '.join(FILES)} ({vendor_mb():.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
