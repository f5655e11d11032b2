"""Build the native core, ``pypool._corepool``, from ``src/_corepool.pyx``.

Metadata lives in pyproject.toml; this file only describes the extension.

Environment variables read at build time:

PYPOOL_NO_EXTENSIONS=1
    Build no extension: a pure-Python install that runs on the Python core.
PYPOOL_REQUIRE_EXTENSION=1
    Refuse PYPOOL_NO_EXTENSIONS (wheel builds set this so a stray opt-out
    cannot produce a wheel without the native core).
PYPOOL_CYTHON_ANNOTATE=1
    Also write src/_corepool.html, Cython's annotated view of the source.

Without PYPOOL_NO_EXTENSIONS, a build that cannot compile the extension fails:
it never falls back quietly to a slower install.
"""

import os
import re
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext as _build_ext
from setuptools.command.build_py import build_py as _build_py
from setuptools.errors import CompileError

CYTHON_MIN = (3, 1)
CYTHON_REQUIREMENT = "Cython>=3.1"

OPT_OUT_HINT = (
    "Set PYPOOL_NO_EXTENSIONS=1 to install the pure-Python core instead "
    "(it behaves the same, only slower)."
)

# Directives are set here, for every .pyx, and not in the source files.
COMPILER_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "embedsignature": False,  # both cores carry identical docstrings
    # The native core relies on the GIL (pypool._core uses the Python core on
    # a free-threaded build): importing it must not claim otherwise.
    "freethreading_compatible": False,
}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


NO_EXTENSIONS = _env_flag("PYPOOL_NO_EXTENSIONS")
if NO_EXTENSIONS and _env_flag("PYPOOL_REQUIRE_EXTENSION"):
    sys.exit("pypool: PYPOOL_NO_EXTENSIONS and PYPOOL_REQUIRE_EXTENSION are both set; unset one.")


def _cython_version(text: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


class BuildExt(_build_ext):
    """Cythonize at build time, add per-compiler flags, and fail loudly."""

    def _cythonize(self) -> None:
        # Done here rather than in finalize_options so that an sdist (which only
        # finalizes build_ext to list sources) neither needs Cython nor picks up .c.
        try:
            import Cython
        except ImportError as exc:
            raise CompileError(
                f"pypool: {CYTHON_REQUIREMENT} is needed to build the native core. {OPT_OUT_HINT}"
            ) from exc
        if _cython_version(Cython.__version__) < CYTHON_MIN:
            raise CompileError(
                f"pypool: the native core needs {CYTHON_REQUIREMENT}, found Cython "
                f"{Cython.__version__}. {OPT_OUT_HINT}"
            )
        from Cython.Build import cythonize

        # setuptools swaps .pyx for .c when Cython was not importable at setup time.
        for ext in self.extensions:
            ext.sources = [
                src[: -len(".c")] + ".pyx" if src.endswith("_corepool.c") else src
                for src in ext.sources
            ]
        try:
            translated = cythonize(
                self.extensions,
                compiler_directives=COMPILER_DIRECTIVES,
                annotate=_env_flag("PYPOOL_CYTHON_ANNOTATE"),
            )
        except Exception as exc:
            raise CompileError(
                f"pypool: Cython could not translate src/_corepool.pyx (see above). {OPT_OUT_HINT}"
            ) from exc
        # Keep the Extension objects build_ext has already prepared; take the .c sources.
        by_name = {ext.name: ext for ext in translated}
        for ext in self.extensions:
            ext.sources = by_name[ext.name].sources

    def build_extensions(self) -> None:
        if self.compiler.compiler_type == "msvc":
            flags = ["/O2", "/std:c11", "/experimental:c11atomics"]
        else:
            flags = ["-O2", "-std=gnu11"]
        for ext in self.extensions:
            ext.extra_compile_args = flags + list(ext.extra_compile_args or [])
        super().build_extensions()

    def run(self) -> None:
        if not self.extensions:
            return
        self._cythonize()
        try:
            super().run()
        except Exception as exc:
            raise CompileError(
                f"pypool: the native core failed to compile ({exc}). {OPT_OUT_HINT}"
            ) from exc


class BuildPy(_build_py):
    """Say once that a pure-Python install was made; drop stale binaries."""

    def run(self) -> None:
        super().run()
        if not NO_EXTENSIONS:
            return
        # An earlier native build in the same tree leaves its module in build/lib;
        # it must not slip into a pure-Python wheel.
        package_dir = os.path.join(self.build_lib, "pypool")
        if os.path.isdir(package_dir):
            for name in os.listdir(package_dir):
                if name.startswith("_corepool.") and name.endswith((".so", ".pyd")):
                    os.remove(os.path.join(package_dir, name))
        print(
            "pypool: PYPOOL_NO_EXTENSIONS is set, so this is a pure-Python install "
            "(the Python core, no compiled extension).",
            file=sys.stderr,
        )


ext_modules = []
if not NO_EXTENSIONS:
    ext_modules.append(
        Extension(
            "pypool._corepool",
            ["src/_corepool.pyx"],
            include_dirs=["src"],
            depends=["src/pypool_freelist.h"],
        )
    )

setup(
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExt, "build_py": BuildPy},
)
