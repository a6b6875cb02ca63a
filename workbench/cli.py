"""The ``workbench`` command: start JupyterLab, run the demo, check the install, run benchmarks.

A thin skin: every subcommand calls the public API and prints; no logic lives here.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _cmd_lab(args: argparse.Namespace) -> int:
    folder = Path(
        args.dir or (REPO_ROOT / "notebooks" if (REPO_ROOT / "notebooks").is_dir() else ".")
    )
    cmd = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={folder}"]
    if args.no_browser:
        cmd.append("--no-browser")
    if args.port:
        cmd.append(f"--port={args.port}")
    cmd.extend(args.extra)
    print(f"workbench: starting JupyterLab in {folder}", file=sys.stderr)
    return subprocess.call(cmd)


def _cmd_demo(args: argparse.Namespace) -> int:
    from workbench.demo import run_demo

    return run_demo(
        examples=args.examples,
        n_facts=args.facts,
        seed=args.seed,
        preset=args.preset,
        session_dir=args.session_dir,
    )


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


def _cmd_mcp(args: argparse.Namespace) -> int:
    from workbench.mcp.server import main as mcp_main

    return mcp_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    lab = sub.add_parser("lab", help="start JupyterLab on the notebooks")
    lab.add_argument("--dir", help="folder to serve (default: the repository's notebooks/)")
    lab.add_argument("--port", type=int, default=None)
    lab.add_argument("--no-browser", action="store_true")
    lab.add_argument("extra", nargs=argparse.REMAINDER, help="more JupyterLab options")
    lab.set_defaults(func=_cmd_lab)

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
