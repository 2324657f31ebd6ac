"""The one table of dtype names: config/CLI spellings, safetensors codes, and torch's own names.

torch is imported only when a torch dtype is actually needed, so the command line can list the choices
(``--dtype``) without paying torch's start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Every spelling a config or a flag may use → torch's attribute name.
NAMES: dict[str, str] = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float64": "float64",
}
# What a written model or adapter may be stored as (the ``--dtype`` choices of the lora commands).
STORAGE_CHOICES = ("float32", "float16", "bfloat16")

# safetensors' dtype codes (the format's own) → torch's attribute name.
SAFETENSORS_CODES: dict[str, str] = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}
_CODE_OF_NAME = {name: code for code, name in SAFETENSORS_CODES.items()}


def torch_dtype(name: str) -> torch.dtype:
    """A config/CLI spelling or a torch name (``bf16``, ``bfloat16``, ``int8``) → the torch dtype."""
    import torch

    return getattr(torch, NAMES.get(name, name))


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 → 'bfloat16': the name config.json and model cards use."""
    return str(dtype).removeprefix("torch.")


def from_safetensors_code(code: str) -> torch.dtype | None:
    """The torch dtype of a safetensors header's code, None when the format code is unsupported."""
    name = SAFETENSORS_CODES.get(code)
    return torch_dtype(name) if name is not None else None


def safetensors_code(dtype: torch.dtype) -> str:
    return _CODE_OF_NAME[dtype_name(dtype)]
