"""Loading: tensors from any format, then our names, config and tokenizer, then a model.

The boundary: this module calls the reader of the format :mod:`workbench.formats.detection`
names, turns the tensors into our parameter names with the config and tokenizer the file
describes, and builds a ``Transformer`` strictly (every missing, unexpected or misshapen key
named). It parses no format itself.

Files are opened through :mod:`workbench.formats.opener`: the path given as named, the files
beside it beneath its folder, a descriptor path (``/proc/self/fd/N/...``, a
:class:`~workbench.formats.folder.Folder`'s files) beneath its descriptor. Readers that only
take a path (GGUF, the Hugging Face tokenizer) get one naming exactly the file opened here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path

import torch
from torch import Tensor

from workbench.formats import binary, checkpoint, hf, opener
from workbench.formats import safetensors_io as st
from workbench.formats._common import (
    LoadedWeights,
    ModelState,
    WeightFormat,
    WeightLoadError,
    convert_dtype,
    resolve_dtype,
)
from workbench.formats.checkpoint import Checkpoint
from workbench.formats.detection import detect_format, resolve_format
from workbench.formats.hf_names import from_hf
from workbench.models import ModelConfig, Transformer
from workbench.tokenizers import (
    ByteTokenizer,
    Tokenizer,
    TokenizerError,
    gpt2_tokenizer,
    tokenizer_from_json,
)

__all__ = [
    "build_model",
    "load_checkpoint",
    "load_model",
    "load_model_state",
    "load_weights",
    "model_dtype",
]

_log = logging.getLogger(__name__)


def load_weights(
    path: str | Path,
    format: WeightFormat | None = None,
    *,
    allow_nonfinite: bool = False,
    progress: bool | None = None,
) -> LoadedWeights:
    """Tensors as the file names them, plus its metadata.

    ``format`` is detected from the bytes when None; one that contradicts them is an error.
    NaN/Inf weights raise unless ``allow_nonfinite``. ``progress``: None shows a bar for big
    loads that last over a second, True always, False never.
    """
    path = Path(path)
    fmt = resolve_format(path, format)
    if fmt == "safetensors":
        return st.read_safetensors(path, allow_nonfinite=allow_nonfinite, progress=progress)
    if fmt == "binary":
        return binary.read_binary(path, allow_nonfinite=allow_nonfinite, progress=progress)
    if fmt == "custom":
        return checkpoint.read_checkpoint_weights(
            path, allow_nonfinite=allow_nonfinite, progress=progress
        )
    from workbench.formats.gguf import read_gguf  # lazily: the GGUF reader is optional here

    # The reader opens by path: hand it one naming exactly the file opened here.
    with _entered(opener.pinned_file(path), path) as exact:
        loaded = read_gguf(exact, allow_nonfinite=allow_nonfinite, progress=progress)
    loaded.path = path
    return loaded


@contextmanager
def _entered(cm: AbstractContextManager[Path], where: Path) -> Iterator[Path]:
    """``cm`` entered, an ``OSError`` on the way in (a link out, a missing file) as a load error."""
    with ExitStack() as stack:
        try:
            entered = stack.enter_context(cm)
        except OSError as e:
            raise WeightLoadError(f"cannot read {where}: {e}") from None
        yield entered


def _safetensors_state(loaded: LoadedWeights) -> ModelState:
    meta = loaded.metadata
    try:
        if st.META_CONFIG in meta:
            cfg = ModelConfig.from_dict(json.loads(meta[st.META_CONFIG]))
            raw_tok = meta.get(st.META_TOKENIZER)
            tok: Tokenizer | None = tokenizer_from_json(raw_tok) if raw_tok else None
            hf_layout = meta.get(st.META_NAMES) == "hf"
        elif (described := _hf_description(loaded.path.parent)) is not None:
            cfg, tok = described
            hf_layout = True
        else:
            raise WeightLoadError(
                f"{loaded.path} has neither workbench metadata nor a Hugging Face "
                f"{hf.CONFIG_FILE} beside it, so the model it holds is unknown; use load_weights "
                "for the tensors"
            )
    except (TypeError, ValueError, TokenizerError) as e:
        if isinstance(e, WeightLoadError):
            raise
        raise WeightLoadError(f"{loaded.path}: model description is invalid: {e}") from None
    unexpected: list[str] = []
    tensors = loaded.tensors
    if hf_layout:
        tensors, unexpected = from_hf(loaded.tensors, cfg)
    return ModelState(cfg, tensors, tok, "safetensors", {**meta, "unexpected": unexpected})


def _hf_description(folder: Path) -> tuple[ModelConfig, Tokenizer | None] | None:
    """``hf.read_description(folder)``, its files opened beneath ``folder`` by the opener.

    The tokenizer library opens ``tokenizer.json`` by name, so it is handed a private folder
    whose names lead to exactly the files opened here (a link out of ``folder`` is refused).
    """
    names = [p.name for p in hf.companion_files(folder)]
    with _entered(opener.pinned_folder(folder, names), folder) as view:
        try:
            return hf.read_description(view)
        except WeightLoadError as e:  # name the folder, not the private one
            raise type(e)(str(e).replace(str(view), str(folder))) from None


def load_model_state(
    path: str | Path,
    format: WeightFormat | None = None,
    *,
    dtype: str | torch.dtype | None = None,
    allow_nonfinite: bool = False,
    progress: bool | None = None,
) -> ModelState:
    """Weights in our parameter names, with the config and tokenizer the file describes.

    ``metadata`` keeps what the file says beyond them (for GGUF its whole metadata:
    ``general.name``, special token ids, ...): pass it to :func:`save_weights` to carry it over.
    """
    path = Path(path)
    if resolve_format(path, format) == "gguf":
        # One pass from the header to our layout (see read_gguf_model_state).
        from workbench.formats.gguf import read_gguf_model_state

        with _entered(opener.pinned_file(path), path) as exact:
            state = read_gguf_model_state(
                exact,
                allow_nonfinite=allow_nonfinite,
                progress=progress,
                label=path,
                dtype=resolve_dtype(dtype),
            )
        return _cast_state(state, dtype, path)
    loaded = load_weights(path, format, allow_nonfinite=allow_nonfinite, progress=progress)
    if loaded.format == "safetensors":
        state = _safetensors_state(loaded)
    elif loaded.format == "binary":
        state = binary.binary_model_state(loaded)
    elif loaded.format == "custom":
        meta = loaded.metadata
        tok = tokenizer_from_json(meta["tokenizer"]) if "tokenizer" in meta else None
        state = ModelState(
            ModelConfig.from_dict(meta["config"]), loaded.tensors, tok, "custom", meta
        )
    else:
        from workbench.formats.gguf import gguf_model_state

        state = gguf_model_state(loaded)
    return _cast_state(state, dtype, path)


def _cast_state(state: ModelState, dtype: str | torch.dtype | None, path: Path) -> ModelState:
    target = resolve_dtype(dtype)
    if target is not None:
        try:
            state.state_dict = {
                k: convert_dtype(v, target if v.is_floating_point() else None, k)
                for k, v in state.state_dict.items()
            }
        except ValueError as e:
            raise WeightLoadError(f"{path}: {e}") from None
    return state


def _half_is_native(dtype: torch.dtype, device: torch.device) -> bool:
    if device.type == "cuda":
        return dtype == torch.float16 or torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return True  # no measurement elsewhere: the file's type, as asked
    try:  # oneDNN's own test for native half kernels (AVX512-FP16/AMX, AVX512-BF16/AMX)
        if dtype == torch.float16:
            return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def model_dtype(
    state_dict: Mapping[str, Tensor], device: str | torch.device = "cpu"
) -> tuple[torch.dtype, str]:
    """The one dtype a model built without ``dtype=`` gets for all its floats, and why.

    The file's main float type (the one most weights are in; quantized GGUF tensors decode to
    float32), unless the device lacks native kernels for it: on a CPU, float16 and bfloat16
    stay only where oneDNN reports native support. Measured (one thread, a 576×1536 linear layer
    on 64 rows): with oneDNN limited to AVX2, float16 took 26 ms and bfloat16 25 ms against
    3.7 ms in float32; on a CPU with AVX512-FP16 and AMX, 2.1 ms and 0.45 ms against 2.4 ms.

    Examples
    --------
    >>> model_dtype({"w": torch.zeros(4, 4), "b": torch.zeros(4, dtype=torch.float16)})[0]
    torch.float32
    """
    sizes: dict[torch.dtype, int] = {}
    for t in state_dict.values():
        if t.is_floating_point():
            sizes[t.dtype] = sizes.get(t.dtype, 0) + t.numel()
    main = max(sizes, key=lambda d: sizes[d]) if sizes else torch.float32
    name = str(main).removeprefix("torch.")
    dev = torch.device(device)
    if main not in (torch.float16, torch.bfloat16):
        return main, f"{name}: the weights' main type"
    if _half_is_native(main, dev):
        return main, f"{name}: the weights' main type, which this {dev.type} computes natively"
    return torch.float32, (
        f"float32: the weights are {name}, which this {dev.type} has no native kernels for "
        "(matmuls several times slower); pass dtype= to choose"
    )


def build_model(
    state: ModelState, *, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu"
) -> Transformer:
    """A ``Transformer`` holding ``state``'s tensors (no copy when dtype and device match).

    Every float gets one dtype: ``dtype``, or when None the one :func:`model_dtype` picks (the
    weights' main type where the device computes it natively, float32 otherwise), logged at
    INFO level on ``workbench.formats.loading``. Strict: every missing, unexpected or misshapen key
    is listed in the ``WeightLoadError``.
    """
    with torch.device("meta"):
        model = Transformer(state.config, init=False)
    expected = model.state_dict()
    got = state.state_dict
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected)) + list(state.metadata.get("unexpected", []))
    shapes = [
        f"{k}: file {tuple(got[k].shape)}, model {tuple(expected[k].shape)}"
        for k in sorted(set(got) & set(expected))
        if got[k].shape != expected[k].shape
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{label} ({len(keys)}): {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}"
            for label, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", shapes),
            )
            if keys
        ]
        raise WeightLoadError(
            f"weights do not fit the {state.config.family} model: " + "; ".join(parts)
        )
    target = resolve_dtype(dtype)
    if target is None:
        target, why = model_dtype(got, device)
        _log.info("building the %s model in %s", state.config.family, why)
    sd: dict[str, Tensor] = {}
    for k, v in got.items():
        try:
            v = convert_dtype(v, target if v.is_floating_point() else None, k)
        except ValueError as e:
            raise WeightLoadError(str(e)) from None
        sd[k] = v if v.is_contiguous() else v.contiguous()
    model.load_state_dict(sd, strict=True, assign=True)
    model.pretrained = True
    return model.to(device)


def _default_tokenizer(cfg: ModelConfig) -> Tokenizer:
    if cfg.vocab_size == 257:
        return ByteTokenizer()
    if cfg.vocab_size == 50257 and cfg.family == "gpt2":
        return gpt2_tokenizer()
    raise WeightLoadError(
        f"the file carries no tokenizer and a vocabulary of {cfg.vocab_size} matches no built-in "
        "one (257: bytes, 50257: GPT-2); put a tokenizer.json beside it"
    )


def load_model(
    path: str | Path,
    format: WeightFormat | None = None,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    allow_nonfinite: bool = False,
    progress: bool | None = None,
) -> tuple[Transformer, Tokenizer]:
    """``(model, tokenizer)`` built from what the file says, loaded strictly.

    A file without a tokenizer gets the byte tokenizer (vocabulary 257) or GPT-2's (50257).
    ``dtype`` (float32, float16, bfloat16) sets the dtype of every float; without it the model
    gets one, chosen by :func:`model_dtype`. The file's other metadata is in
    ``load_model_state(path).metadata``.
    """
    # The dtype goes to the reader too: a GGUF file's quantized tensors then decode straight
    # into bfloat16, without a float32 copy to page in and cast.
    state = load_model_state(
        path, format, dtype=dtype, allow_nonfinite=allow_nonfinite, progress=progress
    )
    tok = state.tokenizer if state.tokenizer is not None else _default_tokenizer(state.config)
    return build_model(state, dtype=dtype, device=device), tok


def load_checkpoint(
    path: str | Path,
    *,
    verify: bool = True,
    allow_nonfinite: bool = False,
    progress: bool | None = None,
) -> Checkpoint:
    """Read a checkpoint, checking every part's sha256 unless ``verify=False``.

    ``ck.rng.restore()`` puts the random generators back; ``ck.optimizer_state`` goes to
    ``optimizer.load_state_dict``. ``progress`` as for :func:`load_weights`.
    """
    path = Path(path)
    found = detect_format(path)
    if found != "custom":
        raise WeightLoadError(f"{path} is {found}, not a workbench checkpoint")
    return checkpoint.read_checkpoint(
        path, verify=verify, allow_nonfinite=allow_nonfinite, progress=progress
    )
