"""Build script: the Python package plus the optional C++ CPU extension ``dllm_masks._C``.

Environment:
  DLLM_MASKS_SKIP_CPP=1     do not build the C++ extension (the reference serves CPU tensors)
  DLLM_MASKS_REQUIRE_CPP=1  a failed C++ build is an error (CI), not a warning
No hardware is probed here: the Triton kernels compile at run time on the GPU that runs them.
"""
import glob
import os
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
SKIP = os.environ.get("DLLM_MASKS_SKIP_CPP") == "1"
REQUIRE = os.environ.get("DLLM_MASKS_REQUIRE_CPP") == "1"
SOURCES = sorted(glob.glob(os.path.join("csrc", "*.cpp")))

ext_modules, cmdclass = [], {}
if SKIP and REQUIRE:
    sys.exit("DLLM_MASKS_SKIP_CPP=1 and DLLM_MASKS_REQUIRE_CPP=1 contradict each other")
if not SKIP:
    if REQUIRE and not SOURCES:
        sys.exit("DLLM_MASKS_REQUIRE_CPP=1 but csrc/ has no sources")
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError as e:  # torch missing at build time: pip install torch==... first
        if REQUIRE:
            raise
        print(f"warning: dllm_masks C++ extension skipped ({e}); install torch first and use "
              "--no-build-isolation", file=sys.stderr)
    else:
        class OptionalBuildExt(BuildExtension):
            """A failed C++ build warns and leaves the package importable, unless REQUIRE is set."""

            def build_extension(self, ext):
                try:
                    super().build_extension(ext)
                except Exception as e:  # noqa: BLE001
                    if REQUIRE:
                        raise
                    print(f"warning: building {ext.name} failed ({e}); CPU tensors will use the "
                          "pure-PyTorch reference", file=sys.stderr)

        if SOURCES:
            ext_modules = [
                CppExtension(
                    "dllm_masks._C",
                    SOURCES,
                    include_dirs=[os.path.join(HERE, "csrc")],
                    # headers and included fragments: an edit rebuilds the objects that use them
                    depends=sorted(glob.glob(os.path.join("csrc", "*.h")) + glob.glob(os.path.join("csrc", "*.inc"))),
                    extra_compile_args=["-O3", "-fopenmp", "-ffp-contract=off", "-std=c++17"],
                    extra_link_args=["-fopenmp"],
                    optional=not REQUIRE,  # a failed build leaves nothing to copy in place (pip install -e)
                )
            ]
            cmdclass = {"build_ext": OptionalBuildExt.with_options(use_ninja=False)}

setup(
    # every subpackage of dllm_masks (a hand-kept list once missed one), plus the Triton kernels
    packages=find_packages(include=["dllm_masks", "dllm_masks.*"]) + ["dllm_masks.triton_kernels"],
    package_dir={"dllm_masks.triton_kernels": "triton_kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
