"""mergekit 0.1.5 as an independent reference: run in its own venv (``tools/setup_mergekit.sh``), never
imported, so its pins never touch ours.

Comparisons use ``dtype: float32`` with ``out_dtype: bfloat16``: mergekit computes in the config's
dtype, we compute in float32 and round once, so with float32 arithmetic on both sides the bf16 outputs
agree to rounding (at most one bf16 step where the float32 results straddle a rounding boundary).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
MERGEKIT_YAML = ROOT / ".venv-mergekit" / "bin" / "mergekit-yaml"


# mergekit orders magnitudes (and SCE's variances) with torch.sort/argsort/topk, which break ties
# between equal values arbitrarily. Run under this shim, the ties follow our documented order
# (descending: lower flat index first), so every remaining difference is arithmetic.
STABLE_TIES_SHIM = """
import collections, sys, torch
_sort = torch.sort
_argsort = torch.argsort
Sorted = collections.namedtuple("Sorted", "values indices")
def _order(w, descending):
    if descending:
        return _sort(w, descending=True, stable=True).indices
    return w.numel() - 1 - _sort(w.flip(0), stable=True).indices  # the exact reverse
def argsort(input, dim=-1, descending=False, stable=False):
    if input.dim() == 1:
        return _order(input, descending)
    return _argsort(input, dim=dim, descending=descending, stable=True)
def sort(input, dim=-1, descending=False, stable=False):
    if input.dim() == 1:
        indices = _order(input, descending)
        return Sorted(input[indices], indices)
    return _sort(input, dim=dim, descending=descending, stable=True)
def topk(input, k, dim=-1, largest=True, sorted=True):
    assert input.dim() == 1 and largest
    indices = _order(input, True)[:k]
    return Sorted(input[indices], indices)
torch.sort, torch.argsort, torch.topk = sort, argsort, topk
from mergekit.scripts.run_yaml import main
sys.argv[0] = "mergekit-yaml"
sys.exit(main())
"""


def run_mergekit(config: dict, out: Path, *, pin_ties: bool = False, copy_tokenizer: bool = False) -> Path:
    """Merge ``config`` with ``mergekit-yaml`` into ``out``; fails the test with mergekit's own message.

    ``pin_ties`` runs mergekit under STABLE_TIES_SHIM: among equal magnitudes (common with bf16 inputs)
    mergekit's sorts pick arbitrarily; pinned, they pick as we do, so every remaining difference is
    arithmetic. Nothing else about mergekit changes.
    """
    if not MERGEKIT_YAML.exists():
        pytest.fail(f"{MERGEKIT_YAML} is missing: run `bash tools/setup_mergekit.sh` (tools/test.sh does)")
    cfg = out.parent / f"{out.name}.mergekit.yaml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = (
        [str(MERGEKIT_YAML.parent / "python"), "-c", STABLE_TIES_SHIM] if pin_ties else [str(MERGEKIT_YAML)]
    )
    done = subprocess.run(
        [
            *command,
            str(cfg),
            str(out),
            *([] if copy_tokenizer else ["--no-copy-tokenizer"]),  # tokenizer tests want it, as users get it
            "--lazy-unpickle",
            "--allow-crimes",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if done.returncode != 0:
        pytest.fail(f"mergekit failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return out


def load_tensors(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


BF16_STEP = 2.0**-7  # bf16 keeps 8 significant bits: neighbouring values differ by at most this, relatively


CANCELLATION = 2.0**-20  # float32 arithmetic noise, relative to the tensor's largest value


def mismatches(a: torch.Tensor, b: torch.Tensor) -> int:
    """Entries of two tensors that differ by more than one rounding step of their dtype (exact for
    non-float tensors). Results that cancel to nearly zero carry float32 noise relative to the tensor's
    scale (one side 1e-10, the other 0), so that much absolute difference is allowed too."""
    if not a.dtype.is_floating_point:
        return int((a != b).sum())
    step = BF16_STEP if a.dtype == torch.bfloat16 else 2.0**-23
    x, y = a.double(), b.double()
    tolerance = step * torch.maximum(x.abs(), y.abs()) + CANCELLATION * float(y.abs().max())
    return int(((x - y).abs() > tolerance).sum())


def assert_matches_mergekit(ours: Path, theirs: Path, allowed: float = 0.0, allowed_entries: int = 0) -> None:
    """Same tensor names, shapes and dtypes; every value within one rounding step of mergekit's, except
    at most a fraction ``allowed`` (or a count ``allowed_entries``) of each tensor's entries, for known,
    documented differences."""
    mine, ref = load_tensors(ours), load_tensors(theirs)
    assert sorted(mine) == sorted(ref), sorted(set(mine) ^ set(ref))
    bad = {}
    for name, tensor in mine.items():
        other = ref[name]
        assert tensor.shape == other.shape and tensor.dtype == other.dtype, (name, tensor.dtype, other.dtype)
        count = mismatches(tensor, other)
        if count > max(allowed * tensor.numel(), allowed_entries):
            bad[name] = f"{count}/{tensor.numel()}"
    assert not bad, f"entries differing from mergekit by more than one rounding step: {bad}"


@pytest.fixture(scope="module")
def bf16_family(tmp_path_factory):
    """A multi-shard bf16 tiny Llama base and three finetunes of it (import this fixture to use it)."""
    import transformers

    from tests.conftest import Family, finetune_of, save_model, tiny_llama_config

    root = tmp_path_factory.mktemp("bf16_family")
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(tiny_llama_config()).to(torch.bfloat16)
    paths = [save_model(base, root / "base")]
    for i in range(1, 4):
        paths.append(save_model(finetune_of(base, seed=i), root / f"ft{i}"))
    return Family(*paths)
