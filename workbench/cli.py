"""The ``workbench`` command: start JupyterLab, run the demo, check the install, run benchmarks,
convert weights between formats.

A thin skin: every subcommand calls the public API and prints; no logic lives here.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workbench.formats import WeightFormat

REPO_ROOT = Path(__file__).resolve().parents[1]


KERNEL_NAME = "markovian-workbench"  # installed into .venv by scripts/setup.sh
# Jupyter config that `workbench lab` adds to JUPYTER_CONFIG_PATH: labconfig/ holds default
# settings overrides (no "get notified about official Jupyter news?" prompt, no update check).
# Defaults only: a person's own JupyterLab settings still win.
JUPYTER_CONFIG = Path(__file__).resolve().parent / "_jupyter"


def _kernel_installed(name: str) -> bool:
    from jupyter_client.kernelspec import KernelSpecManager

    return name in KernelSpecManager().find_kernel_specs()


def lab_command(
    folder: Path,
    extra: Sequence[str] = (),
    *,
    port: int | None = None,
    no_browser: bool = False,
    kernel: str | None = KERNEL_NAME,
    environ: Mapping[str, str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The JupyterLab command line and environment that ``workbench lab`` runs.

    ``kernel`` becomes the default for new notebooks (``None``: Jupyter's own default).
    ``extra`` goes last, so a JupyterLab option given there overrides ours.

    >>> cmd, env = lab_command(Path("nb"), ["--ServerApp.token=abc"], environ={})
    >>> cmd[1:]  # doctest: +NORMALIZE_WHITESPACE
    ['-m', 'jupyterlab', '--ServerApp.root_dir=nb',
     '--MappingKernelManager.default_kernel_name=markovian-workbench', '--ServerApp.token=abc']
    >>> env["JUPYTER_CONFIG_PATH"] == str(JUPYTER_CONFIG)
    True
    """
    cmd = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={folder}"]
    if kernel:
        cmd.append(f"--MappingKernelManager.default_kernel_name={kernel}")
    if no_browser:
        cmd.append("--no-browser")
    if port:
        cmd.append(f"--port={port}")
    cmd.extend(extra)
    env = dict(os.environ if environ is None else environ)
    # Ahead of the venv's and the system's config, behind the person's own JUPYTER_CONFIG_DIR.
    env["JUPYTER_CONFIG_PATH"] = os.pathsep.join(
        p for p in (str(JUPYTER_CONFIG), env.get("JUPYTER_CONFIG_PATH", "")) if p
    )
    return cmd, env


def _cmd_lab(args: argparse.Namespace) -> int:
    folder = Path(
        args.dir or (REPO_ROOT / "notebooks" if (REPO_ROOT / "notebooks").is_dir() else ".")
    )
    kernel: str | None = KERNEL_NAME
    if not _kernel_installed(KERNEL_NAME):
        kernel = None
        print(
            f"workbench: no {KERNEL_NAME!r} Jupyter kernel, so new notebooks get Jupyter's "
            f"default one; install it with: {sys.executable} -m ipykernel install "
            f"--sys-prefix --name {KERNEL_NAME}",
            file=sys.stderr,
        )
    cmd, env = lab_command(
        folder, args.extra, port=args.port, no_browser=args.no_browser, kernel=kernel
    )
    print(f"workbench: starting JupyterLab in {folder}", file=sys.stderr)
    return subprocess.call(cmd, env=env)


def _cmd_demo(args: argparse.Namespace) -> int:
    from workbench.demo import run_demo

    result = run_demo(
        examples=args.examples,
        n_facts=args.facts,
        seed=args.seed,
        preset=args.preset,
        session_dir=args.session_dir,
    )
    return 0 if result.learned else 1


def _cmd_doctor(args: argparse.Namespace) -> int:
    import torch

    print(f"python      {platform.python_version()} ({sys.executable})")
    print(f"torch       {torch.__version__} (threads: {torch.get_num_threads()})")
    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if cuda else "none"
    print(f"cuda        {'available: ' + name if cuda else 'not available'}")
    try:
        from workbench.optim import backend_info

        info = backend_info(build=True)
        print(f"optimizers  cpu={info.get('cpu')} cuda={info.get('cuda')} ({info.get('reason')})")
    except ImportError as e:
        print(f"optimizers  unavailable: {e}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    script = REPO_ROOT / "bench" / f"{args.name}.py"
    if not script.is_file():
        names = sorted(
            p.stem for p in (REPO_ROOT / "bench").glob("*.py") if not p.stem.startswith("_")
        )
        print(
            f"workbench: no benchmark {args.name!r}; choose one of {', '.join(names)}",
            file=sys.stderr,
        )
        return 2
    return subprocess.call([sys.executable, str(script), *args.extra])


# Output formats `convert` infers from OUT's suffix when --to is not given.
_CONVERT_SUFFIXES: dict[str, WeightFormat] = {".gguf": "gguf", ".safetensors": "safetensors"}


def _cmd_convert(args: argparse.Namespace) -> int:
    import time

    from workbench.formats import (
        WeightLoadError,
        WeightSaveError,
        build_model,
        load_model_state,
        save_weights,
    )

    out = Path(args.output)
    to: WeightFormat | None = args.to or _CONVERT_SUFFIXES.get(out.suffix.lower())
    if to is None:
        print(
            f"workbench: cannot tell the format to write from {out.name!r}; pass --to "
            f"({' or '.join(('gguf', 'safetensors', 'binary', 'custom'))})",
            file=sys.stderr,
        )
        return 2
    if args.dtype == "q8_0" and to != "gguf":
        print("workbench: --dtype q8_0 is for --to gguf only", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        state = load_model_state(args.input)
        model = build_model(state, dtype="float32" if args.dtype == "q8_0" else args.dtype)
        # A GGUF source's own metadata (general.name, special ids, ...) goes on to a GGUF.
        carried = state.metadata if state.format == "gguf" and to == "gguf" else None
        save_weights(
            model,
            out,
            to,
            args.dtype,
            tokenizer=state.tokenizer,
            metadata=carried,
            hf_names=args.hf_names,
        )
    except (WeightLoadError, WeightSaveError) as e:
        print(f"workbench: {e}", file=sys.stderr)
        return 1
    dtype = args.dtype or str(model.dtype).removeprefix("torch.")
    print(
        f"workbench: wrote {out} ({to}, {dtype}, {model.num_parameters() / 1e6:.1f}M parameters, "
        f"{time.perf_counter() - start:.1f} s)"
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from workbench.train.launch import cli_main

    return cli_main(args.extra)


def _cmd_mcp(args: argparse.Namespace) -> int:
    from workbench.mcp.server import main as mcp_main

    return mcp_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    lab = sub.add_parser(
        "lab",
        help="start JupyterLab on the notebooks",
        description="Start JupyterLab with the markovian-workbench kernel as the default. "
        "Any other option goes to JupyterLab as given (e.g. --ServerApp.token=abc --allow-root).",
        allow_abbrev=False,  # "--no" or "--po" are JupyterLab's to interpret, not ours
    )
    lab.add_argument("--dir", help="folder to serve (default: the repository's notebooks/)")
    lab.add_argument("--port", type=int, default=None)
    lab.add_argument("--no-browser", action="store_true")
    lab.set_defaults(func=_cmd_lab, extra=[])

    demo = sub.add_parser("demo", help="teach the tiny model arithmetic facts in the terminal")
    demo.add_argument("--examples", type=int, default=1000)
    demo.add_argument("--facts", type=int, default=8, help="distinct addition facts to teach")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--preset", default="tiny-llama", choices=["tiny-gpt2", "tiny-llama"])
    demo.add_argument(
        "--session-dir", default=None, help="keep the session here (default: a temp dir)"
    )
    demo.set_defaults(func=_cmd_demo)

    doctor = sub.add_parser("doctor", help="report versions, devices and the optimizer path")
    doctor.set_defaults(func=_cmd_doctor)

    bench = sub.add_parser("bench", help="run a benchmark script from bench/")
    bench.add_argument("name")
    bench.add_argument("extra", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_cmd_bench)

    convert = sub.add_parser(
        "convert",
        help="convert weights between formats (GGUF, SafeTensors, raw binary, checkpoint)",
        description="Load INPUT (any format, detected from its bytes) with its config, tokenizer "
        "and chat template, and write it to OUTPUT. A GGUF source's metadata (general.name, "
        "special token ids) is kept in a GGUF output.",
    )
    convert.add_argument("input", help="weights to read")
    convert.add_argument("output", help="file to write")
    convert.add_argument(
        "--to",
        choices=["gguf", "safetensors", "binary", "custom"],
        help="format to write (default: from OUTPUT's suffix, .gguf or .safetensors)",
    )
    convert.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16", "q8_0"],
        default=None,
        help="dtype of the written weights (default: the loaded model's; q8_0: GGUF only)",
    )
    convert.add_argument(
        "--hf-names",
        action="store_true",
        help="SafeTensors in the Hugging Face layout, with config.json and tokenizer files",
    )
    convert.set_defaults(func=_cmd_convert)

    mcp = sub.add_parser("mcp", help="serve the learner to AI agents over MCP")
    mcp.add_argument("--root", required=True, help="folder that file paths must stay inside")
    mcp.add_argument("--weights", default=None, help="weights to load at start")
    mcp.add_argument(
        "--session", default=None, help="session folder (default: <root>/.workbench-session)"
    )
    mcp.add_argument(
        "--http", default=None, metavar="HOST:PORT", help="streamable HTTP instead of stdio"
    )
    mcp.set_defaults(func=_cmd_mcp)

    # Its options are workbench.train's (`workbench train --help` lists them), parsed there.
    train = sub.add_parser(
        "train", help="fine-tune offline on torch.distributed (torchrun)", add_help=False
    )
    train.set_defaults(func=_cmd_train, extra=[])
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse a command line; ``lab`` and ``train`` keep the options they pass on in ``args.extra``."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        if args.command not in ("lab", "train"):
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.extra = [*args.extra, *unknown]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
