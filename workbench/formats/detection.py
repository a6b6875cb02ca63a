"""Which format a path holds, from its bytes, never its name; which files a load opens.

The boundary: this module reads the first bytes of a path (and, for raw binary, the manifest
beside it) and names the format; it parses no format and loads nothing. Recognised by their
first bytes: GGUF (``GGUF``), our checkpoint (``MWBCKPT\\0``), SafeTensors (u64 header length,
then ``{``), pickles (refused). Raw binary data has no magic: it is recognised by the JSON
manifest beside it (``<file>.json``). Each reader lists the files it opens beside the weights
(:func:`companion_files` asks them).
"""

from __future__ import annotations

from pathlib import Path

from workbench.formats import binary, checkpoint, hf, opener
from workbench.formats import safetensors_io as st
from workbench.formats._common import WEIGHT_FORMATS, WeightFormat, WeightLoadError
from workbench.formats.gguf_reader import is_gguf

__all__ = ["companion_files", "detect_format", "is_weights_file", "resolve_format"]

_CONVERT_PICKLE = (
    "it is a pickle (PyTorch .pt/.bin), which can run arbitrary code when loaded, so it is "
    "refused. Convert it once, in an environment you trust:\n"
    '  python -c "import torch; from safetensors.torch import save_file; '
    "save_file(torch.load('x.pt', weights_only=True), 'x.safetensors')\""
)


def _head(path: Path, n: int = 4096, beneath: Path | None = None) -> bytes:
    try:
        with opener.open_file(path, beneath=beneath) as f:
            return f.read(n)
    except OSError as e:
        raise WeightLoadError(f"cannot read {path}: {e}") from None


def _sniff(path: Path) -> WeightFormat | None:
    """The format the bytes of ``path`` announce; None when they announce nothing."""
    if opener.is_dir(path):
        index, single = path / st.INDEX_FILE, path / st.SINGLE_FILE
        if opener.is_file(index, beneath=path) or opener.is_file(single, beneath=path):
            return "safetensors"
        raise WeightLoadError(f"{path} is a folder without {st.SINGLE_FILE} or {st.INDEX_FILE}")
    head = _head(path)
    if is_gguf(head):
        return "gguf"
    if checkpoint.is_checkpoint(head):
        return "custom"
    if head[:4] == b"PK\x03\x04" or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
        raise WeightLoadError(f"{path}: {_CONVERT_PICKLE}")
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"  # the header length is judged by the reader, with a clear message
    if binary.is_manifest(head):
        return "binary"
    if head.lstrip()[:1] == b"{" and b'"weight_map"' in head:
        return "safetensors"  # a shard index
    return None


def detect_format(path: str | Path) -> WeightFormat:
    """Which format ``path`` holds, judged by its bytes (and a raw file by its manifest).

    Examples
    --------
    >>> import tempfile, torch
    >>> from workbench.formats.safetensors_io import write_safetensors
    >>> p = tempfile.mkdtemp() + "/weights.gguf"  # the name lies; the bytes decide
    >>> write_safetensors(p, {"w": torch.ones(1)})
    >>> detect_format(p)
    'safetensors'
    """
    path = Path(path)
    try:
        if not opener.exists(path):
            raise WeightLoadError(f"{path} does not exist")
        found = _sniff(path)
        if found is not None:
            return found
        mpath = binary.manifest_path(path)
        has_manifest = opener.is_file(mpath, beneath=path.parent)
    except OSError as e:  # e.g. a link out of the folder where a manifest would be
        raise WeightLoadError(f"cannot read {path}: {e}") from None
    if has_manifest:
        if binary.is_manifest(_head(mpath, beneath=path.parent)):
            return "binary"
        raise WeightLoadError(
            f"{path}: its bytes carry no known magic and {mpath.name} beside it is not a "
            f'raw-binary manifest (it lacks "format": "{binary.FORMAT_TAG}")'
        )
    head = _head(path, 16)
    raise WeightLoadError(
        f"{path}: unrecognised format (first bytes {head!r}); expected SafeTensors, GGUF, a "
        "workbench checkpoint, or raw binary with its manifest <file>.json beside it"
    )


def is_weights_file(path: str | Path) -> bool:
    """True when ``path`` holds weights a load recognises by their bytes (see :func:`detect_format`).

    A raw-binary manifest counts (it names its data file), a Hugging Face folder too; a
    ``config.json``, a pickle or a missing path do not.

    Examples
    --------
    >>> import tempfile, torch
    >>> from workbench.formats.safetensors_io import write_safetensors
    >>> folder = Path(tempfile.mkdtemp())
    >>> write_safetensors(folder / "w.safetensors", {"w": torch.ones(1)})
    >>> _ = (folder / "notes.txt").write_text("hello")
    >>> is_weights_file(folder / "w.safetensors"), is_weights_file(folder / "notes.txt")
    (True, False)
    """
    try:
        detect_format(path)
    except (WeightLoadError, OSError):
        return False
    return True


def companion_files(path: str | Path, format: WeightFormat | None = None) -> list[Path]:
    """The files besides ``path`` that ``load_model(path, format)`` may open, as they are now.

    Each reader lists its own: a raw-binary file's manifest (or a manifest's data file), a
    Hugging Face folder's index and shards, the ``config.json`` / ``tokenizer.json`` /
    ``tokenizer_config.json`` beside SafeTensors weights. GGUF files and checkpoints have none.
    When the bytes decide no format (a missing or unrecognised file) every reader's files are
    listed. Only paths that exist (a dangling link included) come back, without ``path``.

    Reading this list opens at most what detection opens (the head of ``path``, a manifest)
    and a shard index, and never raises for a malformed file: the load will say what is wrong.

    Examples
    --------
    >>> import tempfile, torch
    >>> from workbench.models import ModelConfig, Transformer
    >>> from workbench.formats.saving import save_weights
    >>> folder = Path(tempfile.mkdtemp())
    >>> model = Transformer(ModelConfig.preset("tiny-gpt2"))
    >>> _ = save_weights(model, folder / "model.bin", "binary")
    >>> [p.name for p in companion_files(folder / "model.bin")]
    ['model.bin.json']
    >>> [p.name for p in companion_files(folder / "model.bin.json")]
    ['model.bin']
    >>> _ = save_weights(model, folder / "model.safetensors", "safetensors", hf_names=True)
    >>> [p.name for p in companion_files(folder / "model.safetensors")]
    ['config.json']
    """
    path = Path(path)
    try:
        fmt: WeightFormat | None = resolve_format(path, format)
    except WeightLoadError:
        fmt = None  # the load stops early; list what any reader might open here
    found: list[Path] = []
    folder = path if opener.is_dir(path) else path.parent
    if fmt in (None, "safetensors"):
        found += st.companion_files(path)
        found += hf.companion_files(folder)
    if fmt in (None, "binary"):
        found += binary.companion_files(path)
    unique = dict.fromkeys(p for p in found if p != path and opener.lexists(p, beneath=folder))
    return list(unique)


def resolve_format(path: Path, format: WeightFormat | None) -> WeightFormat:
    """The format to load ``path`` as: ``format`` checked against the bytes, or detected."""
    if format is not None and format not in WEIGHT_FORMATS:
        raise WeightLoadError(
            f"unknown format {format!r}; choose one of {', '.join(WEIGHT_FORMATS)}"
        )
    if format == "binary":
        # Raw data has no magic: any bytes may be raw floats, unless they carry another magic.
        if not opener.exists(path):
            raise WeightLoadError(f"{path} does not exist")
        sniffed = _sniff(path) if not opener.is_dir(path) else "safetensors"
        if sniffed not in (None, "binary", "safetensors"):
            raise WeightLoadError(
                f"{path} is {sniffed} by its bytes, but format='binary' was given"
            )
        return "binary"
    found = detect_format(path)
    if format is not None and found != format:
        raise WeightLoadError(f"{path} is {found} by its bytes, but format={format!r} was given")
    return found
