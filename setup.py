"""Build step: compile the twin's engine core with mypyc (~1.8x faster simulations).

Everything else is declared in pyproject.toml. The compiled modules are the same Python
source, type-checked and turned into C by mypyc; where that cannot happen (no C compiler, a
mypy that refuses the code, TWINBENCH_PURE_PYTHON=1 at install time) the install goes on and
the twin runs as plain Python, with identical results, only slower. `twinbench --version`
says which engine is in use.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
# The engine's hot loop and what it calls on every step (profiled: >90 % of a simulation).
COMPILED = ["engine", "waiting", "kvpool", "steptime", "adapters"]
# Every module lives in one shared library inside the package (not at top level, where an
# editable install could not find it).
SHARED_LIB = "twinbench.twin._native"


def _staged_sources() -> list[str]:
    """mypyc names a module after its path; the folders are flat here (twin/, traces/, ...)
    and installed as twinbench.<folder>, so give mypy that layout through symlinks."""
    stage = ROOT / "build" / "mypyc-src" / "twinbench"
    stage.mkdir(parents=True, exist_ok=True)
    for folder in ("twin", "traces", "reports"):
        link = stage / folder
        if not link.is_symlink():
            if link.exists():
                raise RuntimeError(f"{link} exists and is not a symlink")
            link.symlink_to(ROOT / folder, target_is_directory=True)
    return [f"build/mypyc-src/twinbench/twin/{name}.py" for name in COMPILED]


def _native_extensions() -> list:
    if os.environ.get("TWINBENCH_PURE_PYTHON"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("twinbench: mypy not available, the twin stays pure Python", file=sys.stderr)
        return []
    os.chdir(ROOT)  # mypyc writes its C under ./build and names sources relative to here
    sources = _staged_sources()
    # module names count from the staging folder: build/mypyc-src/twinbench/twin/engine.py
    # is twinbench.twin.engine
    os.environ["MYPYPATH"] = str(ROOT / "build" / "mypyc-src")
    try:
        exts = mypycify(["--ignore-missing-imports", "--follow-imports=silent",
                         "--explicit-package-bases"] + sources,
                        opt_level="3", separate=[(sources, SHARED_LIB)])
    except BaseException as exc:  # mypyc reports type errors by exiting
        print(f"twinbench: mypyc could not compile the twin ({exc!r}); it stays pure Python",
              file=sys.stderr)
        return []
    for ext in exts:
        ext.optional = True  # a failed C build leaves the pure-Python modules in use
    return exts


class StampedBuildExt(build_ext):
    """Writes the hashes of the compiled sources (`_native_build.json`) once every compiled
    module has built: at import, a build that no longer matches its sources (an edited
    editable install) gives way to them (twin/__init__.py). When any of them fails, the
    outputs of earlier builds are removed with the stamp, so an older engine is never taken
    for the current one."""

    def run(self) -> None:
        self._failed: list[str] = []
        super().run()
        if not self.extensions:
            return
        # the build tree (wheels: build_py has already copied package data by now), and the
        # source tree when the build is in place (editable installs); a wheel build leaves
        # the source tree's own build and hashes alone
        places = [Path(self.build_lib) / "twinbench" / "twin"]
        if self.inplace:
            places.append(ROOT / "twin")
        if self._failed:
            print(f"twinbench: the C build failed for {', '.join(self._failed)}; the twin "
                  "stays pure Python", file=sys.stderr)
            for ext in self.extensions:
                name = Path(self.get_ext_filename(self.get_ext_fullname(ext.name))).name
                for place in places:
                    (place / name).unlink(missing_ok=True)
        stamp = "" if self._failed else json.dumps({"sha256": _source_hashes()}, indent=1)
        for place in places:
            if not stamp:
                (place / "_native_build.json").unlink(missing_ok=True)
            elif place.is_dir():
                (place / "_native_build.json").write_text(stamp)

    def build_extension(self, ext) -> None:
        try:
            super().build_extension(ext)
        except BaseException:
            self._failed.append(ext.name)
            raise


def _source_hashes() -> dict[str, str]:
    return {name: hashlib.sha256((ROOT / "twin" / f"{name}.py").read_bytes()).hexdigest()
            for name in COMPILED}


setup(ext_modules=_native_extensions(), cmdclass={"build_ext": StampedBuildExt})
