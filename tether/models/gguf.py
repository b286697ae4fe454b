"""Import a GGUF file (llama.cpp's format; people keep models as one, often 4-bit quantized) as an ordinary Hugging
Face folder that every ``tether train`` command takes.

transformers reads GGUF itself (``from_pretrained(folder, gguf_file=NAME)``) and dequantizes on load, but the model
it returns is flagged as quantized and refuses ``save_pretrained``; so its weights are copied into a plain model of
the same config (the quantization entry dropped) and that is saved, with the tokenizer (and its chat template) the
file carries. SmolLM2-135M's 4-bit file imports in about 35 s on 2 CPU cores (most of it transformers reading the
header and mapping tensor names; dequantizing itself ~7 s): import once, then train from the folder.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from tether.errors import TetherError

GGUF_MAGIC = b"GGUF"
# GGUF metadata value types (the file format's spec): fixed widths, and 8 (string) and 9 (array) of any length.
_FIXED = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def gguf_architecture(path: str | Path) -> str:
    """The ``general.architecture`` of a GGUF file (``llama``, ``qwen2``, ...), read from its header alone.

    Raises TetherError when the file is missing, is not GGUF, or names no architecture."""
    path = Path(path)
    if not path.is_file():
        raise TetherError(f"GGUF file not found: {path}", fix="give the path of a .gguf file")
    with path.open("rb") as fh:
        if fh.read(4) != GGUF_MAGIC:
            raise TetherError(f"{path} is not a GGUF file (it does not start with the bytes 'GGUF')", fix="give a .gguf file (llama.cpp's format)")
        try:
            version, _tensors, n_keys = struct.unpack("<IQQ", fh.read(20))
            if version < 2:
                raise TetherError(f"{path} is GGUF version {version}; only versions 2 and 3 are read", fix="convert it again with a recent llama.cpp")
            for _ in range(n_keys):
                key = _read_string(fh)
                (kind,) = struct.unpack("<I", fh.read(4))
                if key == "general.architecture" and kind == _STRING:
                    return _read_string(fh)
                _skip_value(fh, kind)
        except (struct.error, UnicodeDecodeError, ValueError) as exc:
            raise TetherError(f"{path} has a damaged GGUF header ({exc})", fix="download or convert the file again") from None
    raise TetherError(f"{path} names no architecture (general.architecture)", fix="convert it again with a recent llama.cpp")


def _read_string(fh: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", fh.read(8))
    if length > 1 << 24:
        raise ValueError(f"a metadata string of {length} bytes")
    return fh.read(length).decode("utf-8")


def _skip_value(fh: BinaryIO, kind: int) -> None:
    if kind in _FIXED:
        fh.seek(struct.calcsize(_FIXED[kind]), 1)
    elif kind == _STRING:
        (length,) = struct.unpack("<Q", fh.read(8))
        fh.seek(length, 1)
    elif kind == _ARRAY:
        item, count = struct.unpack("<IQ", fh.read(12))
        if item in _FIXED:
            fh.seek(struct.calcsize(_FIXED[item]) * count, 1)
        else:
            for _ in range(count):
                _skip_value(fh, item)
    else:
        raise ValueError(f"unknown metadata value type {kind}")


def supported_architectures() -> list[str]:
    """The GGUF architectures this transformers can load."""
    names: set[str] = set()
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

        names.update(GGUF_SUPPORTED_ARCHITECTURES)
    except ImportError:  # pragma: no cover (transformers without GGUF support)
        pass
    try:
        from transformers.integrations.gguf import GGUF_ARCHS

        names.update(GGUF_ARCHS)
    except ImportError:  # older transformers: the legacy loader alone
        pass
    return sorted(names)


def load_gguf(path: str | Path, *, say: Callable[[str], None] | None = None) -> tuple[Any, Any]:
    """(tokenizer, model) as transformers loads them from the GGUF file at ``path``, the weights dequantized to fp32
    (the model is flagged quantized: ``plain_copy`` makes a saveable one). Refused, with the list of what is
    supported, when this transformers cannot read the file's architecture."""
    path = Path(path)
    architecture = gguf_architecture(path)
    supported = supported_architectures()
    if architecture not in supported:
        raise TetherError(
            f"{path} holds a {architecture!r} model, which this transformers cannot load from GGUF",
            fix=f"supported architectures: {', '.join(supported)}",
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if say is not None:
        say(f"reading {path.name} ({architecture}, {path.stat().st_size / 2**20:.0f} MB); dequantizing to fp32 (about half a minute for 135M parameters on 2 CPU cores)")
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32, **_dequantize_kwargs(path))
    return tokenizer, model.eval()


def import_gguf(path: str | Path, output_dir: str | Path, *, overwrite: bool = False, say: Callable[[str], None] = print) -> Path:
    """Dequantize the GGUF file at ``path`` into a plain fp32 Hugging Face folder ``output_dir`` (weights, config,
    tokenizer with its chat template); returns the folder. The saved model gives the logits of the model
    transformers loads from the file."""
    import time

    path, out = Path(path), Path(output_dir)
    gguf_architecture(path)  # a missing or foreign file is refused before the output folder is looked at
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise TetherError(f"-o {out} is not empty", fix="choose a new folder, or pass --overwrite")
    started = time.perf_counter()
    tokenizer, loaded = load_gguf(path, say=say)
    plain = plain_copy(loaded)
    out.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    params = sum(p.numel() for p in plain.parameters())
    say(f"imported: {out} ({type(plain).__name__}, {params / 1e6:.1f}M parameters, {time.perf_counter() - started:.0f}s)")
    return out


def _dequantize_kwargs(path: Path) -> dict[str, Any]:
    """Ask for dense weights where transformers can keep GGUF blocks packed (it would otherwise try a kernel)."""
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(gguf_file=path.name, dequantize=True)}


def plain_copy(model: Any) -> Any:
    """The weights of a model loaded from GGUF (flagged quantized: no ``save_pretrained``) in a plain model of its
    class and config, without the quantization entry; every parameter and buffer copied (refused otherwise)."""
    config = model.config
    config_dict = config.to_dict()
    config_dict.pop("quantization_config", None)
    clean = type(config).from_dict(config_dict)
    if hasattr(clean, "quantization_config"):
        del clean.quantization_config
    state = model.state_dict()
    packed = [name for name, tensor in state.items() if name.endswith("weight") and not tensor.is_floating_point()]
    if packed:
        raise TetherError(f"the GGUF model kept packed weights ({', '.join(packed[:3])}), which cannot be saved as plain tensors", fix="upgrade transformers")
    plain = type(model)(clean)
    missing, unexpected = plain.load_state_dict(state, strict=False)
    tied = set(getattr(plain, "_tied_weights_keys", None) or []) if getattr(clean, "tie_word_embeddings", False) else set()
    missing = [name for name in missing if name not in tied]
    if missing or unexpected:
        raise TetherError(
            f"the GGUF weights do not fit a plain {type(model).__name__}: missing {missing[:3]}, unexpected {unexpected[:3]}",
            fix="report the model's architecture",
        )
    if tied:
        plain.tie_weights()
    return plain.eval()
