"""Build script for editx-rt.

Maps the source folders onto one import package:
    runtime/ -> editx, kernels/ -> editx.kernels, export/ -> editx.export
and builds the C++ scheduler extension `editx._scheduler` through CMake (the
pybind/cmake_example pattern; pybind11 and cmake come from pyproject's build requirements).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    """An extension whose sources are built by CMake from `source_dir`."""

    def __init__(self, name: str, source_dir: Path) -> None:
        super().__init__(name, sources=[])
        self.source_dir = str(source_dir)


class CMakeBuild(build_ext):
    """Configure + build each CMakeExtension into the right package folder."""

    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeExtension):
            return super().build_extension(ext)
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp) / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        import pybind11  # build requirement, imported late so pure-Python installs work

        cfg = "Debug" if self.debug else "Release"
        configure = [
            "cmake", ext.source_dir,
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={cfg}",
            "-DEDITX_BUILD_PYTHON=ON",
            "-DEDITX_BUILD_TESTS=OFF",  # .ci/run builds and runs the C++ tests separately
        ]
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
        subprocess.run(configure, cwd=build_dir, check=True)
        subprocess.run(["cmake", "--build", ".", "--config", cfg, "-j", jobs], cwd=build_dir, check=True)


def _extensions() -> list[Extension]:
    return [CMakeExtension("editx._scheduler", ROOT)]


setup(
    name="editx-rt",
    version="0.1.0",
    description="Fast runtime for Step-Audio-EditX: voice cloning and instruction-based speech editing",
    python_requires=">=3.10",
    package_dir={"editx": "runtime", "editx.kernels": "kernels", "editx.export": "export"},
    packages=[
        "editx", "editx.loading", "editx.frontend", "editx.models", "editx.models.flow",
        "editx.layers", "editx.engine", "editx.server", "editx.kernels", "editx.export",
    ],
    package_data={"editx": ["assets/*.model"]},
    install_requires=[
        "torch>=2.4",
        "numpy>=1.24",
        "safetensors>=0.4",
        "soundfile>=0.12",
        "soxr>=0.3",
        "pyyaml>=6",
        "onnx>=1.15",
        "onnxruntime>=1.17",
    ],
    extras_require={
        "gpu": ["onnxruntime-gpu>=1.17", "tensorrt>=10", "cuda-python>=12"],
        # `editx export` simplifies graphs with onnxsim when present (the exporter itself needs nothing extra).
        "export": ["onnxsim>=0.4"],
        # `editx serve` (editx.server): HTTP streaming over one shared Runtime.
        "server": ["fastapi>=0.110", "uvicorn>=0.29"],
        "dev": ["pytest>=8", "hypothesis>=6", 'triton>=3.0; platform_system == "Linux"',
                "fastapi>=0.110", "uvicorn>=0.29", "httpx>=0.27",
                "openai>=1.40"],  # the speech endpoint's compatibility test calls it with OpenAI's own client
    },
    entry_points={"console_scripts": ["editx=editx.cli:main"]},
    ext_modules=_extensions(),
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
