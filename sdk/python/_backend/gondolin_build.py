"""A minimal PEP 517/660 build backend for this pure-Python package.

It exists so that `pip install ./sdk/python` works offline with only Debian's pip:
pyproject.toml requires nothing, so build isolation has nothing to download. It builds
a py3-none-any wheel (the packages listed under [tool.gondolin-build]), an sdist, and
an editable wheel (a .pth file pointing at this directory).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _project() -> dict[str, Any]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _names() -> tuple[str, str, str]:
    p = _project()["project"]
    name = p["name"]
    norm = name.replace("-", "_").replace(".", "_")
    return name, norm, p["version"]


def _metadata() -> str:
    p = _project()["project"]
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {p['name']}",
        f"Version: {p['version']}",
        f"Summary: {p.get('description', '')}",
        f"Requires-Python: {p.get('requires-python', '>=3')}",
    ]
    lic = p.get("license", {})
    if isinstance(lic, dict) and "text" in lic:
        lines.append(f"License: {lic['text']}")
    for c in p.get("classifiers", []):
        lines.append(f"Classifier: {c}")
    body = ""
    readme = p.get("readme")
    if readme and (ROOT / readme).exists():
        lines.append("Description-Content-Type: text/markdown")
        body = (ROOT / readme).read_text(encoding="utf-8")
    return "\n".join(lines) + "\n\n" + body


def _package_files() -> list[Path]:
    pkgs = _project().get("tool", {}).get("gondolin-build", {}).get("packages", [])
    out: list[Path] = []
    for pkg in pkgs:
        for dirpath, dirnames, filenames in os.walk(ROOT / pkg):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for fn in sorted(filenames):
                if fn.endswith((".py", ".typed", ".pyi")):
                    out.append(Path(dirpath) / fn)
    return out


class _Wheel:
    def __init__(self, path: Path, distinfo: str) -> None:
        self.zf = zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED)
        self.distinfo = distinfo
        self.records: list[str] = []

    def add(self, arcname: str, data: bytes) -> None:
        zi = zipfile.ZipInfo(arcname, date_time=(2020, 1, 1, 0, 0, 0))
        zi.external_attr = 0o644 << 16
        zi.compress_type = zipfile.ZIP_DEFLATED
        self.zf.writestr(zi, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        self.records.append(f"{arcname},sha256={digest},{len(data)}")

    def close(self) -> None:
        rec = f"{self.distinfo}/RECORD"
        self.records.append(f"{rec},,")
        zi = zipfile.ZipInfo(rec, date_time=(2020, 1, 1, 0, 0, 0))
        zi.external_attr = 0o644 << 16
        self.zf.writestr(zi, "\n".join(self.records) + "\n")
        self.zf.close()


def _dist_info_files(wheel: _Wheel) -> None:
    wheel.add(f"{wheel.distinfo}/METADATA", _metadata().encode())
    wheel.add(
        f"{wheel.distinfo}/WHEEL",
        b"Wheel-Version: 1.0\nGenerator: gondolin_build\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    )


def _build(wheel_directory: str, editable: bool) -> str:
    _, norm, version = _names()
    fn = f"{norm}-{version}-py3-none-any.whl"
    w = _Wheel(Path(wheel_directory) / fn, f"{norm}-{version}.dist-info")
    if editable:
        w.add(f"_{norm}_editable.pth", (str(ROOT) + "\n").encode())
    else:
        for f in _package_files():
            w.add(f.relative_to(ROOT).as_posix(), f.read_bytes())
    _dist_info_files(w)
    w.close()
    return fn


def get_requires_for_build_wheel(config_settings: Any = None) -> list[str]:
    return []


def get_requires_for_build_sdist(config_settings: Any = None) -> list[str]:
    return []


def get_requires_for_build_editable(config_settings: Any = None) -> list[str]:
    return []


def prepare_metadata_for_build_wheel(metadata_directory: str, config_settings: Any = None) -> str:
    _, norm, version = _names()
    d = Path(metadata_directory) / f"{norm}-{version}.dist-info"
    d.mkdir(parents=True, exist_ok=True)
    (d / "METADATA").write_text(_metadata(), encoding="utf-8")
    (d / "WHEEL").write_text(
        "Wheel-Version: 1.0\nGenerator: gondolin_build\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    return d.name


prepare_metadata_for_build_editable = prepare_metadata_for_build_wheel


def build_wheel(wheel_directory: str, config_settings: Any = None, metadata_directory: Any = None) -> str:
    return _build(wheel_directory, editable=False)


def build_editable(wheel_directory: str, config_settings: Any = None, metadata_directory: Any = None) -> str:
    return _build(wheel_directory, editable=True)


def build_sdist(sdist_directory: str, config_settings: Any = None) -> str:
    name, norm, version = _names()
    base = f"{norm}-{version}"
    fn = f"{base}.tar.gz"
    files = [ROOT / "pyproject.toml", ROOT / "README.md", ROOT / "_backend" / "gondolin_build.py"]
    files += _package_files()
    files += sorted((ROOT / "tests").glob("*.py"))
    with tarfile.open(Path(sdist_directory) / fn, "w:gz", format=tarfile.PAX_FORMAT) as tf:
        for f in files:
            if f.exists():
                tf.add(f, arcname=f"{base}/{f.relative_to(ROOT).as_posix()}")
        pkg = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
        ti = tarfile.TarInfo(f"{base}/PKG-INFO")
        ti.size = len(pkg)
        ti.mode = 0o644
        tf.addfile(ti, io.BytesIO(pkg))
    return fn
