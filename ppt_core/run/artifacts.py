"""The runs/<profile>/ layout, atomic writes, and results.json.

A run of one seed is runs/<run>/ itself. A run of several seeds runs the study once per seed in
runs/<run>/seed-<s>/ (each a complete one-seed run) and keeps in runs/<run>/ only what pools them
(notebook 07: results.json, timings.json, notebooks/).

Every file a stage writes goes through a temporary name in the same folder and is renamed into
place, so an interrupted run never leaves a half-written artifact where a later stage would read it.
Files and folders get the modes the user's umask gives any new file (0644 and 0755 under umask 022),
so colleagues on a shared server can read a run.

results.json holds the study's numbers, one key per stage, and is the same for the same seed.
timings.json holds wall-clock measurements (speed, seconds per step, memory), which vary run to run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class RunPaths:
    """Folders of one run: runs/<profile>/{data, similarity, models, notebooks, figures}."""

    root: Path

    @classmethod
    def for_profile(cls, profile: str, runs_dir: str | Path | None = None) -> RunPaths:
        return cls(Path(runs_dir or REPO_ROOT / "runs") / profile)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def similarity(self) -> Path:
        return self.root / "similarity"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def timings(self) -> Path:
        return self.root / "timings.json"

    @property
    def settings(self) -> Path:
        """The settings each notebook ran with, and which notebook set each (ppt_core.run.run_settings)."""
        return self.root / "settings.json"

    def model(self, arm: str) -> Path:
        """Folder of one arm's model: base, pruned-noft, full-nodp, pruned-dp8, ..."""
        return self.models / arm


SUMMARY_NOTEBOOK = "07_summary"  # writes results.md while it runs: its own seconds are not measured there yet


def cache_dir() -> Path:
    """Where what is kept across runs on this machine lives (converted embedded models, the conformance check's
    verdicts, the precision measurement); move it with the PPT_CACHE_DIR environment variable."""
    return Path(os.environ.get("PPT_CACHE_DIR", Path.home() / ".cache" / "prunepriveytune"))


def run_paths(params: dict) -> RunPaths:
    """The run folder of a profile's parameters: runs/<run_name or profile>/."""
    return RunPaths.for_profile(params.get("run_name") or params["profile"])


# The runs whose figures and results.md are committed: run_all.py, regenerating one of these runs, writes its
# figures into the repository (committed_figures_dir); nothing else does.
COMMITTED_FIGURES = {"quick": "figures", "paper": "figures/paper"}


def figures_dir(params: dict) -> Path:
    """Where a run's figures go: `figures_dir` when set, else runs/<run_name>/figures/. A notebook run by
    hand (its parameters cell leaves figures_dir None) so never rewrites the committed figures; run_all.py
    sets figures_dir to figures/ (figures/paper/) when it regenerates the default (paper) profile's run."""
    if params.get("figures_dir"):
        return Path(params["figures_dir"])
    return run_paths(params).root / "figures"


def committed_figures_dir(run_name: str) -> Path | None:
    """The repository folder of a committed run's figures (figures/ for quick), or None for any other run."""
    return REPO_ROOT / COMMITTED_FIGURES[run_name] if run_name in COMMITTED_FIGURES else None


def seed_params(params: dict, seed: int) -> dict:
    """The parameters of one seed's run inside a run of several seeds: runs/<run>/seed-<s>/, the study's
    seed set to `seed` (its data split, canaries, audit inclusions, Poisson batches, noise and LoRA
    initialisation all follow it), figures under that folder."""
    run_name = params.get("run_name") or params["profile"]
    return dict(params, seed=int(seed), seeds=[int(seed)], run_name=f"{run_name}/seed-{int(seed)}",
                figures_dir=None)


def seed_runs(params: dict) -> dict[int, RunPaths]:
    """{seed: its run folder}: the run itself for one seed, runs/<run>/seed-<s>/ for each of several."""
    seeds = [int(s) for s in params.get("seeds") or [params["seed"]]]
    if len(seeds) == 1:
        return {seeds[0]: run_paths(params)}
    return {seed: run_paths(seed_params(params, seed)) for seed in seeds}


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's 0600 would hide the file from the user's group
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def current_umask() -> int:
    """The process's umask (reading it means setting it: put straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj) -> None:
    """Sorted keys and a trailing newline, so equal content gives equal bytes."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def read_json(path: str | Path):
    return json.loads(Path(path).read_text())


def write_jsonl(path: str | Path, records) -> None:
    write_text(path, "".join(json.dumps(r, sort_keys=True, default=_jsonable) + "\n" for r in records))


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write_csv(path: str | Path, frame) -> None:
    """Write a pandas DataFrame."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def write_npz(path: str | Path, **arrays) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object keeps numpy from appending ".npz" to the name
            np.savez(f, **arrays)


def save_model(model, tokenizer, folder: str | Path, *, extra_json: dict | None = None) -> Path:
    """save_pretrained into a temporary folder, then rename it into place (replacing any old one)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's 0700 would make a shared checkpoint unreadable to others
    try:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, obj in (extra_json or {}).items():
            (tmp / name).write_text(json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def update_results(paths: RunPaths, stage: str, values: dict) -> dict:
    """Set results.json[stage] = values, floats rounded (other stages untouched); return the whole file."""
    return _update(paths.results, stage, rounded(values))


def update_timings(paths: RunPaths, stage: str, values: dict) -> dict:
    """Like update_results, for wall-clock measurements kept out of results.json."""
    return _update(paths.timings, stage, values)


def read_results(paths: RunPaths) -> dict:
    return read_json(paths.results) if paths.results.exists() else {}


def read_timings(paths: RunPaths) -> dict:
    return read_json(paths.timings) if paths.timings.exists() else {}


def _update(path: Path, key: str, values: dict) -> dict:
    everything = read_json(path) if path.exists() else {}
    everything[key] = values
    write_json(path, everything)
    return everything


def code_fingerprint() -> str:
    """A hash of the library code: a change to ppt_core re-runs the notebooks."""
    digest = hashlib.sha256()
    package = REPO_ROOT / "ppt_core"
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def record_digest(described: dict) -> str:
    """sha256 of a JSON-able record (keys sorted, anything else by its str): equal records, equal digests."""
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def content_digest(path: Path) -> str:
    """sha256 of a file's bytes, or of a folder's files (relative names and bytes, in sorted order)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path)).encode() if path.is_dir() else b"")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def rounded(value, digits: int = 6):
    """`value` with every float rounded to `digits` significant digits (dicts and lists walked), so
    float noise far below what a result means cannot change the bytes of results.json."""
    if isinstance(value, dict):
        return {key: rounded(item, digits) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(item, digits) for item in value]
    if isinstance(value, (float, np.floating)):
        return float(f"{float(value):.{digits}g}") if np.isfinite(value) else None  # JSON has no NaN
    if isinstance(value, np.integer):
        return int(value)
    return value


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
