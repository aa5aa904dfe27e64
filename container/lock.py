"""The image's locks, for the image's platform (Linux x86_64, CPython 3.11, glibc 2.36 of Debian bookworm).

    python container/lock.py check requirements.lock          # exit 1 and the missing pins if incomplete
    python container/lock.py download requirements-cpu.lock wheelhouse/cpu

``check`` resolves the lock *with* dependencies (``pip install --dry-run --ignore-installed --report``)
for the image's platform and fails when the resolution adds anything: the Dockerfile installs with
``--no-deps``, so a package the lock misses would be missing in the image (PyPI's CUDA torch without its
``nvidia-*`` wheels was). pip runs ``--isolated`` so the host's pip configuration (a find-links folder
with a CPU torch, say) cannot stand in for what the image's build will see; pass ``--find-links`` or
``--extra-index-url`` for what the build uses beyond PyPI. Environment markers are evaluated on the
running Python, hence Linux x86_64 only.

``download`` fills a wheelhouse with exactly the lock's wheels for that platform (``pip download
--no-deps``), with the user's pip configuration (their mirror, their CA), so the build needs no index.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

PYTHON_VERSION = "3.11"
GLIBC_MINOR = 36  # Debian bookworm
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def platform_args() -> list[str]:
    """pip's target-platform flags: every manylinux tag bookworm's glibc accepts, old aliases included."""
    tags = [f"manylinux_2_{m}_x86_64" for m in range(GLIBC_MINOR, 4, -1)]
    tags += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    out = []
    for tag in tags:
        out += ["--platform", tag]
    return out + ["--python-version", PYTHON_VERSION, "--implementation", "cp", "--abi", "cp311",
                  "--only-binary=:all:"]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """``{canonical name: version}`` of a ``name==version`` lock file."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonical(name)] = version
    return pins


def _cert_args() -> list[str]:
    # --isolated ignores PIP_CERT and pip.conf, so pass on the CA bundle this machine trusts.
    for var in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        if os.environ.get(var) and Path(os.environ[var]).is_file():
            return ["--cert", os.environ[var]]
    return []


def resolve(lock: Path, find_links: list[str], extra_index_urls: list[str], index_url: str | None = None) -> dict:
    """pip's report of installing ``lock`` with its dependencies into an empty target, for the image."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "--isolated", "install", "--dry-run", "--ignore-installed",
               "--quiet", "--report", str(report), "--target", str(Path(tmp) / "target"), *platform_args(),
               *_cert_args(), "-r", str(lock)]
        if index_url:
            cmd += ["--index-url", index_url]
        cmd += _reachable_extra_indexes(extra_index_urls)
        for folder in find_links:
            cmd += ["--find-links", folder]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"pip could not resolve {lock}:\n{p.stderr[-4000:]}")
        return json.loads(report.read_text())


def missing_pins(lock: Path, report: dict) -> list[str]:
    """``name==version`` of what the resolution installs beyond the lock (or at another version)."""
    pins = read_lock(lock)
    out = []
    for item in report["install"]:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        if pins.get(canonical(name)) != version:
            out.append(f"{name}=={version}")
    return sorted(out, key=canonical)


def reachable(url: str, timeout: float = 5) -> bool:
    try:
        urllib.request.urlopen(url, timeout=timeout).close()
        return True
    except OSError:
        return False


def _reachable_extra_indexes(urls: list[str]) -> list[str]:
    out = []
    for url in urls:
        if reachable(url):
            out += ["--extra-index-url", url]
        else:  # an unreachable extra index costs pip minutes of retries per package
            print(f"{url} is unreachable: left out (pip's configuration or --find-links must serve what it would)",
                  file=sys.stderr)
    return out


def check(args) -> int:
    if sys.platform != "linux" or platform.machine() != "x86_64":
        print("the check evaluates environment markers on this machine: run it on Linux x86_64", file=sys.stderr)
        return 2
    lock = Path(args.lock)
    missing = missing_pins(lock, resolve(lock, args.find_links, args.extra_index_url, args.index_url))
    if missing:
        print(f"{lock} is incomplete: resolving it with dependencies adds {len(missing)} package(s):")
        print("\n".join(missing))
        return 1
    print(f"{lock} is complete: resolving it with dependencies adds nothing")
    return 0


def download(args) -> int:
    lock, dest = Path(args.lock), Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(dest), *platform_args(),
           "-r", str(lock)]
    cmd += _reachable_extra_indexes(args.extra_index_url)
    subprocess.run(cmd, check=True)
    wanted = read_lock(lock)
    have = {}
    for wheel in dest.glob("*.whl"):
        name, version = wheel.name.split("-")[:2]
        have.setdefault(canonical(name), set()).add(version)
    # `torch==2.13.0` also matches a local `2.13.0+cpu` wheel (PEP 440), which pip prefers when a
    # find-links folder offers one: a CPU torch in the CUDA wheelhouse would pass unnoticed.
    wrong = sorted(f"{n}=={v} (have {', '.join(sorted(have.get(n, ()))) or 'none'})"
                   for n, v in wanted.items() if v not in have.get(n, ()))
    if wrong:
        print(f"{dest} lacks the locked wheels of: {'; '.join(wrong)}", file=sys.stderr)
        return 1
    print(f"{dest}: {len(wanted)} wheels for {lock}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="fail if resolving the lock with dependencies adds anything")
    c.add_argument("lock")
    c.add_argument("--index-url", help="instead of PyPI (a mirror)")
    c.add_argument("--extra-index-url", action="append", default=[])
    c.add_argument("--find-links", action="append", default=[])
    c.set_defaults(fn=check)
    d = sub.add_parser("download", help="fill a wheelhouse with the lock's wheels")
    d.add_argument("lock")
    d.add_argument("dest")
    d.add_argument("--extra-index-url", action="append", default=[])
    d.set_defaults(fn=download)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
