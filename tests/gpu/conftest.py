"""GPU tier: opt-in (`make test-gpu`, i.e. RAYFIN_GPU_TESTS=1) on a machine with CUDA.
Not collected otherwise, so `make test` shows no skipped placeholders."""
import os

if os.environ.get("RAYFIN_GPU_TESTS") != "1":
    collect_ignore_glob = ["test_*.py"]
