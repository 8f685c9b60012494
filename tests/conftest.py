"""Shared pytest setup: make tests/ importable (fixture_sets) and pin CPU determinism."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Parity tolerances assume fp32 math without TF32 (fixtures README §2).
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
