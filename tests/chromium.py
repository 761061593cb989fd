"""A headless Chromium for the browser test, from a package registry: Playwright's own `playwright install`
downloads from a CDN this project's machines cannot reach, so the test takes the Chromium that the npm package
@sparticuz/chromium ships (brotli-compressed, with the few shared libraries it needs), checks the tarball against
the registry's integrity hash, and unpacks it once into the model cache."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
import urllib.request
from pathlib import Path

from ppt_core.run import artifacts

VERSION = "153.0.0"
TARBALL = f"https://registry.npmjs.org/@sparticuz/chromium/-/chromium-{VERSION}.tgz"
INTEGRITY = "sha512-jiGWqSvPMdu4+P9TilYqAR7yEGPEHINx+lCvE/NqNO/EHYzF/x1hUiI5T6ioVIt7dEy7n88byyT0vk+dnsgQwA=="
# what Chromium needs to run in a container: no sandbox (no user namespaces), no zygote, one process
LAUNCH_ARGS = ["--no-sandbox", "--no-zygote", "--single-process", "--headless=new"]


def folder() -> Path:
    return artifacts.cache_dir() / "browser" / f"chromium-{VERSION}"


def executable() -> Path:
    """The unpacked Chromium binary, fetched and unpacked on first use."""
    import brotli

    target = folder()
    binary = target / "chromium"
    if binary.exists():
        return binary
    with urllib.request.urlopen(TARBALL, timeout=300) as response:
        tarball = response.read()
    digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    if digest != INTEGRITY:
        raise RuntimeError(f"{TARBALL}: integrity {digest} is not the pinned {INTEGRITY}")
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(tarball)) as package:
        packed = {Path(m.name).name: package.extractfile(m).read() for m in package.getmembers() if m.isfile()}
    for name in ("al2023.tar.br", "swiftshader.tar.br"):  # shared libraries
        with tarfile.open(fileobj=io.BytesIO(brotli.decompress(packed[name]))) as libraries:
            libraries.extractall(target, filter="data")
    with artifacts.atomic_path(binary) as tmp:  # last: its presence marks a finished unpacking
        tmp.write_bytes(brotli.decompress(packed["chromium.br"]))
        tmp.chmod(0o755)
    return binary


def environment() -> dict[str, str]:
    """The variables Chromium's process needs: where its shared libraries are."""
    target = folder()
    return {"LD_LIBRARY_PATH": f"{target / 'lib'}:{target}"}
