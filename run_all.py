#!/usr/bin/env python
"""Run the study: execute notebooks/NN_*.ipynb in order with papermill for a named profile.

Examples:
  python run_all.py                          # the default profile (quick): SmolLM2-135M on CPU
  python run_all.py --profile smoke          # the whole pipeline in a minute, tiny random model
  python run_all.py --profile full --nproc 4 # notebook 03 trains each arm on 4 GPUs (torchrun)
  python run_all.py --only 00,01 --force     # re-run two notebooks even if nothing changed
  python run_all.py --from 03                # from notebook 03 to the end
  python run_all.py --profile smoke --seeds 0,1   # the study once per seed, pooled by notebook 07
  python run_all.py --model Qwen/Qwen2.5-0.5B --data notes.jsonl --text-field body

Each notebook gets the profile's values for the parameters its `parameters` cell declares, and is
written, executed, to runs/<run>/notebooks/. A notebook whose inputs (its source, its parameters,
the ppt_core code, and every notebook before it, and that notebook's last execution) are unchanged since
its last successful run is skipped, so an interrupted run resumes at the first unfinished notebook, and a
notebook executed again re-runs the ones after it at the next run; --force re-runs anyway. The data
file and a local model folder count by their content, not their path.
The default profile's run writes figures to figures/ (the paper profile's to figures/paper/); every
other run, and any notebook run by hand in Jupyter, to runs/<run>/figures/. With several seeds (the
profile's `seeds`, or --seeds), notebooks 00-06 run once per seed in runs/<run>/seed-<s>/, each resuming
on its own, and notebook 07 pools every seed in runs/<run>/. The run stops at the first failing notebook
and names it, the cell and the error.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent
NOTEBOOKS = REPO / "notebooks"
KERNEL = "prunepriveytune"
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the study never fetches from a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profile", default=None,
                        help="smoke, quick (default), paper or full; see ppt_core/run/profiles.py")
    parser.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2 (default: the profile's); several run "
                        "the study once per seed and pool them")
    parser.add_argument("--only", help="comma-separated notebook numbers to run, e.g. 00,01")
    parser.add_argument("--from", dest="start", help="run from this notebook number to the end, e.g. 03")
    parser.add_argument("--model", help="model spec: smollm2-135m, tiny-random-llama, a local folder or a HF id")
    parser.add_argument("--data", help="your own data instead of the synthetic corpus: .jsonl, .csv or .txt")
    parser.add_argument("--text-field", help="JSONL key or CSV column with the text (default: text)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to run (default: auto)")
    parser.add_argument("--nproc", type=int, help="train each arm in N processes with torchrun (one per GPU, or CPU "
                        "processes on gloo; default 1: in the notebook's own process)")
    parser.add_argument("--run-name", help="folder under runs/ (default: the profile, or <profile>-custom "
                        "when --model or --data is given)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="override one profile value, e.g. --set n_train=500 --set epsilons=[1,8] (JSON values; "
                        "repeatable; see ppt_core/run/profiles.py for the keys)")
    parser.add_argument("--force", action="store_true",
                        help="re-run notebooks even if their inputs are unchanged (notebook 03 still reads back an "
                        "arm trained on the very same inputs: delete runs/<run>/models/<arm> to retrain)")
    parser.add_argument("--list", action="store_true", help="list the notebooks and the profile's values, run nothing")
    return parser.parse_args(argv)


def study_params(args) -> dict:
    """The profile's values with the command line's overrides, checked before anything runs."""
    from ppt_core.run import artifacts, profiles

    overrides = dict(parse_setting(text) for text in args.settings)
    if args.model:
        overrides["model"] = args.model
    if args.data:
        overrides["data_path"] = str(Path(args.data).resolve())
    if args.text_field:
        overrides["text_field"] = args.text_field
    if args.device:
        overrides["device"] = args.device
    if args.seeds is not None:
        overrides["seeds"] = parse_seeds(args.seeds)
        if len(overrides["seeds"]) == 1:
            overrides["seed"] = overrides["seeds"][0]
    if args.nproc is not None:
        overrides["nproc"] = args.nproc
    profile = args.profile or profiles.DEFAULT_PROFILE
    custom = bool(args.model or args.data)
    overrides["run_name"] = args.run_name or (f"{profile}-custom" if custom else profile)
    committed = artifacts.committed_figures_dir(overrides["run_name"])
    if committed is not None:  # regenerating a committed run: its figures are the repository's
        overrides["figures_dir"] = str(committed)
    params = profiles.get_profile(profile, **overrides)
    from ppt_core.study import checks  # imports every stage (torch among them): after the cheap checks

    checks.check_params(params)
    return params


def parse_setting(text: str) -> tuple[str, object]:
    """--set "n_train=500" -> ("n_train", 500); a value that is not JSON is taken as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set {text!r} is not KEY=VALUE: use e.g. --set n_train=500")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def parse_seeds(text: str) -> list[int]:
    """--seeds "0,1,2" -> [0, 1, 2]; anything else stops with the value and the expected form."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--seeds {text!r} is not a comma-separated list of integers: "
                         "use e.g. --seeds 0,1,2") from None


def select_notebooks(args) -> list[Path]:
    notebooks = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    numbers = [nb.name[:2] for nb in notebooks]
    for flag, value in (("--from", args.start), ("--only", args.only)):
        for number in (value.split(",") if value else []):
            if number.strip() not in numbers:
                raise ValueError(f"{flag} {number!r} names no notebook: choose from {', '.join(numbers)}")
    if args.start:
        notebooks = [nb for nb in notebooks if nb.name[:2] >= args.start]
    if args.only:
        wanted = {n.strip() for n in args.only.split(",")}
        notebooks = [nb for nb in notebooks if nb.name[:2] in wanted]
    return notebooks


def inputs_fingerprint(params: dict) -> str:
    """A hash of the code and of what the run reads by content, not by name: the data file's bytes and every
    file of a local model folder. Replacing either at the same path re-runs the notebooks."""
    from ppt_core.run.artifacts import code_fingerprint, content_digest

    digest = hashlib.sha256(code_fingerprint().encode())
    for key in ("data_path", "model"):
        path = local_files(params.get(key))
        if path is not None:
            digest.update(key.encode() + content_digest(path).encode())
    return digest.hexdigest()


def local_files(spec: str | None) -> Path | None:
    """The file or folder a data path or model spec reads here: itself when it exists, a Hugging Face id's
    snapshot in the local cache, or None (the embedded and tiny models are part of the installed code)."""
    if not spec:
        return None
    if Path(spec).exists():
        return Path(spec)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec, local_files_only=True))
    except Exception:  # not an id in the local cache: nothing on disk to fingerprint
        return None


def notebook_parameters(notebook: Path, params: dict) -> dict:
    """The profile's values for the parameters this notebook's `parameters` cell declares."""
    import papermill

    declared = papermill.inspect_notebook(str(notebook))
    return {name: params[name] for name in declared if name in params}


POOLING_NOTEBOOKS = ("07_summary.ipynb",)  # with several seeds: run once, after every seed, reading them all


def execute(params: dict, chain_notebooks: list[Path], selected: list[Path], chain: str, force: bool, bar,
            kernel: dict):
    """Run the `selected` of `chain_notebooks` for one run folder, in order, skipping a notebook whose inputs
    (the chain: code, every earlier notebook and its parameters, and the last execution of the one before it)
    match its last successful run. A notebook executed again (`--only NN --force`, a failed run resumed) so
    re-runs every notebook after it at the next run, instead of leaving them on outputs it has replaced.
    Returns (exit status, the chain after the last notebook)."""
    import papermill
    from tqdm.auto import tqdm

    from ppt_core.run import artifacts

    paths = artifacts.run_paths(params)
    stamps_file = paths.notebooks / ".stamps.json"
    stamps = artifacts.read_json(stamps_file) if stamps_file.exists() else {}
    upstream = ""  # the id of the last execution of the notebook before this one ("" before the first)
    for notebook in chain_notebooks:
        notebook_params = notebook_parameters(notebook, params)
        chain = hashlib.sha256(
            (chain + upstream + notebook.read_text() + json.dumps(notebook_params, sort_keys=True)).encode()
        ).hexdigest()
        upstream = stamps.get(notebook.name, {}).get("execution", "")
        if notebook not in selected:
            continue
        output = paths.notebooks / notebook.name
        label = notebook.name if paths.root.parent.parent == REPO else f"{paths.root.name}/{notebook.name}"
        bar.set_postfix_str(label)
        if not force and stamps.get(notebook.name, {}).get("inputs") == chain and output.exists():
            tqdm.write(f"  {label}: inputs unchanged, skipped (--force re-runs it)")
            bar.update()
            continue
        stamps.pop(notebook.name, None)
        artifacts.write_json(stamps_file, stamps)
        started = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(notebook), str(output), parameters=notebook_params, cwd=str(NOTEBOOKS), progress_bar=False,
                log_output=False, **kernel,
            )
        except KeyboardInterrupt:
            bar.close()
            print(f"interrupted in {label}: the notebooks before it are done; run the same command again to resume "
                  "from it", file=sys.stderr)
            return 130, chain
        except papermill.PapermillExecutionError as err:
            bar.close()
            print(f"error: {label} failed in cell {err.exec_count or err.cell_index}: "
                  f"{err.ename}: {err.evalue}\n  executed copy with the traceback: {output}", file=sys.stderr)
            return 1, chain
        seconds = round(time.perf_counter() - started, 1)
        drop_progress_widgets(output)
        upstream = uuid.uuid4().hex
        stamps[notebook.name] = {"inputs": chain, "seconds": seconds, "execution": upstream}
        artifacts.write_json(stamps_file, stamps)
        timings = artifacts.read_timings(paths).get("notebooks", {})
        artifacts.update_timings(paths, "notebooks", dict(timings, **{notebook.stem: seconds}))
        tqdm.write(f"  {label}: {seconds:.0f} s")
        bar.update()
    return 0, hashlib.sha256((chain + upstream).encode()).hexdigest()


def drop_progress_widgets(notebook: Path) -> None:
    """Remove the progress-bar widgets from an executed notebook: their state is not saved, so a reader would
    see every bar stuck at its first frame ("0%"). The results the bars waited for stay."""
    import nbformat

    from ppt_core.run import artifacts

    executed = nbformat.read(notebook, as_version=4)
    for cell in executed.cells:
        if cell.cell_type == "code":
            cell.outputs = [out for out in cell.outputs
                            if "application/vnd.jupyter.widget-view+json" not in out.get("data", {})]
    executed.metadata.pop("widgets", None)
    artifacts.write_text(notebook, nbformat.writes(executed))


def local_socket_kernels(socket_dir: str):
    """A kernel manager whose kernels talk to papermill over local sockets in `socket_dir` (IPC), not TCP: no
    port opens to the machine's other users, and no "running over TCP without encryption" warning per notebook."""
    from jupyter_client.manager import KernelManager
    from traitlets import default

    class LocalSocketKernelManager(KernelManager):
        @default("transport")
        def _default_transport(self):
            return "ipc"

        @default("ip")
        def _default_ip(self):
            return os.path.join(socket_dir, "kernel")

    return LocalSocketKernelManager


def run(args) -> int:
    try:
        params = study_params(args)
        notebooks = select_notebooks(args)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from jupyter_client.kernelspec import KernelSpecManager
    from tqdm.auto import tqdm

    from ppt_core.run import artifacts

    paths = artifacts.run_paths(params)
    seeds = params["seeds"]
    if args.list:
        print(json.dumps(params, indent=2))
        print("\n".join(nb.name for nb in notebooks))
        return 0

    all_notebooks = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    print(f"run {paths.root.relative_to(REPO)}: profile {params['profile']}, model {params['model']}, "
          + (f"seeds {', '.join(map(str, seeds))}, " if len(seeds) > 1 else "")
          + f"figures -> {artifacts.figures_dir(params)}")
    if params.get("data_path"):
        from ppt_core import data

        print(data.source_sentence(params))
    # The machine and the precision "auto" settles to on it, said before any notebook runs (each notebook's kernel
    # reads the same decision from the model cache), with its matmul peaks, measured while nothing else computes.
    from ppt_core import models
    from ppt_core.machine import precision

    machine = precision.describe(models.resolve_device(params["device"]), params["bf16"])
    print(f"machine: {machine['kind']}; precision {machine['precision']}: {machine['precision_reason']}")
    for paths_of_seed in {paths, *artifacts.seed_runs(params).values()}:
        artifacts.update_timings(paths_of_seed, "machine", machine)
    with tempfile.TemporaryDirectory(prefix="ppt-kernels-") as sockets:
        kernel = dict(kernel_name=KERNEL if KERNEL in KernelSpecManager().find_kernel_specs() else "python3",
                      kernel_manager_class=local_socket_kernels(sockets))
        if len(seeds) == 1:
            bar = tqdm(notebooks, desc="notebooks", unit="nb")
            status, _ = execute(params, all_notebooks, notebooks, inputs_fingerprint(params), args.force, bar, kernel)
        else:
            per_seed = [nb for nb in all_notebooks if nb.name not in POOLING_NOTEBOOKS]
            pooling = [nb for nb in all_notebooks if nb.name in POOLING_NOTEBOOKS]
            selected_per_seed = [nb for nb in notebooks if nb in per_seed]
            bar = tqdm(total=len(selected_per_seed) * len(seeds) + len(notebooks) - len(selected_per_seed),
                       desc="notebooks", unit="nb")
            chains, fingerprint = [], inputs_fingerprint(params)
            for seed in seeds:
                status, chain = execute(artifacts.seed_params(params, seed), per_seed, selected_per_seed,
                                        fingerprint, args.force, bar, kernel)
                if status:
                    return status
                chains.append(chain)
            # the pooling notebooks' inputs are every seed's chain: a change to any seed re-runs them
            status, _ = execute(params, pooling, notebooks, hashlib.sha256("".join(chains).encode()).hexdigest(),
                                args.force, bar, kernel)
    if status:
        return status
    bar.close()
    # a committed run (the default profile's, the paper profile's) also refreshes its block of the README
    run_name = params.get("run_name") or params["profile"]
    results_md = artifacts.figures_dir(params) / "results.md"
    committed = artifacts.committed_figures_dir(run_name)
    if committed is not None and artifacts.figures_dir(params) == committed and results_md.exists():
        from ppt_core.study import report

        if report.update_readme(results_md.read_text(), run_name=run_name):
            print(f"README.md: {run_name} results section updated from {results_md.relative_to(REPO)}")
        first_seed = artifacts.seed_runs(params)[seeds[0]] if len(seeds) > 1 else paths
        pattern = "[0-9][0-9]_*.ipynb"  # with several seeds: the first seed's notebooks, and the pooling 07
        executed = sorted({*first_seed.notebooks.glob(pattern), *paths.notebooks.glob(pattern)}, key=lambda nb: nb.name)
        pages = report.render_notebooks(executed, committed / "notebooks")
        print(f"{len(pages)} executed notebooks rendered to {(committed / 'notebooks').relative_to(REPO)}/")
    return 0


if __name__ == "__main__":
    sys.exit(run(parse_args()))
