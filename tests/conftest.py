import os

# Triton kernels run on the CPU under the interpreter; it must be set before any kernel module
# is imported (docs/design.md §7).
os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import settings  # noqa: E402

settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("ci")
