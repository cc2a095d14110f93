"""Robustness check: `ragtune ingest` on a hostile folder must warn once per bad path, ingest the rest, and exit 0.

The folder holds every case that once crashed or fooled ingest: an unreadable file and folder (chmod 000; only
unreadable when not run as root, so as root the CLI is run as `nobody` through setpriv where possible), a FIFO (opening
it would block forever), a broken symlink (a file removed between listing and reading), symlink loops (to a folder
above and to itself), binary files without NUL bytes (random bytes, PNG / zip / ELF headers), file names holding rich
markup (`[/x]` crashed, `[red]` silently changed the printed name), newlines and ANSI escapes (could forge a log line),
a name that is not valid UTF-8, and JSON nested too deeply for the parser.

    python benchmarks/hostile_ingest.py [WORKDIR]                 # the hostile folder; prints the result as JSON
    python benchmarks/hostile_ingest.py --large 50 --parts 2 [WORKDIR]   # a 50 MB one-line file, see measure_large

`run(workdir)` is what the robustness benchmark calls.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

GOOD = {
    "narwhal.txt": "Narwhals are toothed whales; the males carry a long spiral tusk.",
    "[bold]kakapo.md": "# Kakapo\n\nThe kakapo is a flightless nocturnal parrot of New Zealand.",
    "new\nline axolotl.txt": "Axolotls regenerate limbs, hearts and parts of their brains.",
}


@dataclass
class HostileFolder:
    """What was built: the folder, the good files' names, and one expected warning fragment per bad path."""

    root: Path
    good: list[str]
    bad: dict[str, str] = field(default_factory=dict)  # printable name fragment -> why it is bad
    entries: int = 0


def _noise(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.randrange(1, 256) for _ in range(n))  # random bytes, never NUL


def build_hostile_folder(root: Path, unreadable: bool = True, reader_is_root: bool | None = None) -> HostileFolder:
    """Write the hostile folder under `root` (created). `unreadable` adds the chmod 000 file and folder, which are
    bad paths only for a reader that is not root (`reader_is_root`, by default: whether this process is root)."""
    reader_is_root = os.geteuid() == 0 if reader_is_root is None else reader_is_root
    root.mkdir(parents=True, exist_ok=True)
    folder = HostileFolder(root=root, good=list(GOOD))
    for name, text in GOOD.items():
        (root / name).write_text(text, encoding="utf-8")
    os.mkfifo(root / "pipe.txt")
    folder.bad["pipe.txt"] = "a FIFO"
    (root / "gone.txt").symlink_to(root / "removed-before-reading.txt")
    folder.bad["gone.txt"] = "broken symlink"
    (root / "loop").symlink_to(".")
    folder.bad["loop"] = "symlink loop"
    (root / "self.txt").symlink_to("self.txt")
    folder.bad["self.txt"] = "symlink loop"
    (root / "random.txt").write_bytes(_noise(4096, 1))
    folder.bad["random.txt"] = "binary"
    (root / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n" + _noise(512, 2))
    folder.bad["image.txt"] = "PNG"
    (root / "archive.md").write_bytes(b"PK\x03\x04" + b"readme.txt" * 20)
    folder.bad["archive.md"] = "zip"
    (root / "program").write_bytes(b"\x7fELF" + b"\x02\x01\x01" + _noise(256, 3))
    folder.bad["program"] = "ELF"
    (root / "[").mkdir()  # a path holding "[/x]": the folder "[" and the file "x].txt" in it
    (root / "[" / "x].txt").write_bytes(_noise(2048, 4))
    folder.bad["[/x].txt"] = "binary"
    (root / "[red]empty.txt").write_text("   \n", encoding="utf-8")
    folder.bad["[red]empty.txt"] = "empty"
    (root / "evil\nwarning: forged.txt").write_bytes(_noise(1024, 5))
    folder.bad["evil\\nwarning: forged.txt"] = "binary"
    (root / "\x1b[31mansi.txt").write_bytes(_noise(1024, 6))
    folder.bad["\\x1b[31mansi.txt"] = "binary"
    with open(os.path.join(os.fsencode(root), b"latin1-\xe9.txt"), "wb") as f:
        f.write(b"A file whose name is not UTF-8.")
    folder.bad["latin1-\\udce9.txt"] = "not valid UTF-8"
    (root / "deep.json").write_text("[" * 200_000 + "]" * 200_000, encoding="utf-8")
    folder.bad["deep.json"] = "nested too deeply"
    if unreadable:
        (root / "locked.txt").write_text("Only readable by its owner: chmod 000.", encoding="utf-8")
        (root / "locked.txt").chmod(0)
        (root / "locked-folder").mkdir()
        (root / "locked-folder" / "inside.txt").write_text("Behind a chmod 000 folder.", encoding="utf-8")
        (root / "locked-folder").chmod(0)
        if reader_is_root:
            folder.good.append("locked.txt")
            folder.good.append("locked-folder/inside.txt")
        else:
            folder.bad["locked.txt"] = "Permission denied"
            folder.bad["locked-folder"] = "Permission denied"
    folder.entries = len(folder.good) + len(folder.bad)
    return folder


def _as_nobody() -> list[str]:
    """A command prefix that drops root (root ignores mode bits, so chmod 000 would test nothing), or []."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return []
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", "0"],
                           capture_output=True)
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if probe.returncode == 0 else []


def run_cli(folder: Path, workspace: Path, extra: list[str] | None = None, drop_root: bool = True,
            timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """`ragtune ingest FOLDER` as a user would run it (as `nobody` when we are root and can drop it)."""
    prefix = _as_nobody() if drop_root else []
    env = {**os.environ, "COLUMNS": "300", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if prefix:
        env["HOME"] = str(workspace.parent)
        env.setdefault("RAGTUNE_CACHE", str(workspace.parent / "cache"))
    cmd = [*prefix, sys.executable, "-m", "ragtune", "ingest", str(folder), "--workspace", str(workspace),
           *(extra or [])]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def _shared_tmp(workdir: Path) -> Path:
    """A folder `nobody` can enter (pytest's and mkdtemp's are 0700 to root)."""
    base = Path(tempfile.mkdtemp(prefix="ragtune-hostile-", dir="/tmp" if os.path.isdir("/tmp") else None))
    base.chmod(0o777)
    return base


def run(workdir: str | os.PathLike[str]) -> dict[str, int]:
    """Build the hostile folder, run the real CLI on it and count: entries in the folder, warnings printed, files
    ingested, and whether it crashed (non-zero exit or a traceback)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    dropping = bool(_as_nobody())
    base = _shared_tmp(workdir) if dropping else workdir
    folder = build_hostile_folder(base / "hostile", reader_is_root=os.geteuid() == 0 and not dropping)
    result = run_cli(folder.root, base / "ws", drop_root=dropping)
    err = result.stderr
    crashed = int(result.returncode != 0 or "Traceback" in err)
    warned = sum(1 for line in err.splitlines() if line.startswith("warning:"))
    ingested = 0
    for line in err.splitlines():
        if line.startswith("ingested "):
            ingested = int(line.split()[1])
    (workdir / "hostile_ingest.log").write_text(err, encoding="utf-8")
    for path in (folder.root / "locked.txt", folder.root / "locked-folder"):
        path.chmod(0o755)
    if dropping:
        shutil.rmtree(base, ignore_errors=True)
    return {"files": len(folder.good) + len(folder.bad), "warned": warned, "ingested": ingested, "crashed": crashed,
            "expected_warnings": len(folder.bad), "expected_ingested": len(folder.good)}


def _peak_rss_mb(pid: int) -> float:
    """VmHWM of a running process: the kernel's own peak resident set size."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _part_counts(ws: Path) -> Counter[str]:
    from ragtune.index.store import ChunkStore

    try:
        return Counter(ChunkStore(ws).scan(["doc_id"])["doc_id"].to_pylist())
    except Exception:  # noqa: BLE001 - no table yet, or read mid-commit: try again later
        return Counter()


def _until_parts(proc: subprocess.Popen, ws: Path, parts: int, started: float, log: dict) -> float:
    """Poll until `parts` parts of the huge file are committed; returns the peak RSS seen (MB)."""
    peak = 0.0
    while proc.poll() is None:
        time.sleep(1.0)
        peak = max(peak, _peak_rss_mb(proc.pid))
        counts = _part_counts(ws)
        if "small_s" not in log and any("#part" not in d for d in counts):
            log["small_s"] = round(time.perf_counter() - started, 1)
        done = sorted(d for d in counts if "#part" in d)
        for d in done:
            log.setdefault("part_s", {}).setdefault(d.rsplit("#", 1)[1], round(time.perf_counter() - started, 1))
        if len(done) >= parts:
            break
    return peak


def measure_large(workdir: Path, megabytes: int = 50, parts: int = 2) -> dict:
    """A `megabytes` MB single-line text file (no sentence punctuation) beside three small files, ingested by the
    real CLI with the default part size: peak RSS and time to the small files and to each part, kill -9 after
    `parts` parts, resume to one more part and kill again, then check every committed part holds exactly the chunks
    a deterministic re-chunking gives (no loss, no duplicate). Embedding 50 MB whole takes hours on a shared CPU."""
    from transformers import AutoTokenizer

    from ragtune.config import IngestConfig
    from ragtune.corpus.chunkers import TokenizerAdapter, make_chunker, split_parts
    from ragtune.index.ingest import PART_SEP, _chunk_part, _Part, _part_hash
    from ragtune.index.store import ChunkStore
    from ragtune.models import resolve_embedder
    from ragtune.records import Document

    folder, ws = workdir / "large", workdir / "ws-large"
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    words = ["granite", "basalt", "quartz", "feldspar", "mica", "obsidian", "pumice", "shale", "slate", "marble"]
    with open(folder / "big.txt", "w", encoding="utf-8") as f:
        written = 0
        while written < megabytes * 1_000_000:
            block = " ".join(rng.choice(words) for _ in range(10_000)) + " "
            f.write(block)
            written += len(block)
    for i in range(3):
        (folder / f"small{i}.txt").write_text(f"Small file {i}: slate splits into thin sheets.", encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "ragtune", "ingest", str(folder), "--workspace", str(ws)]
    out: dict = {"megabytes": megabytes, "runs": []}
    for target in (parts, parts + 1):
        started = time.perf_counter()
        log: dict = {"target_parts": target}
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            log["peak_rss_mb"] = round(_until_parts(proc, ws, target, started, log), 1)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        log["seconds"] = round(time.perf_counter() - started, 1)
        out["runs"].append(log)
    rows = ChunkStore(ws).scan(["chunk_id", "doc_id", "text"]).to_pylist()
    ids = [r["chunk_id"] for r in rows]
    text = (folder / "big.txt").read_text(encoding="utf-8")
    doc_id = next(r["doc_id"] for r in rows if PART_SEP in r["doc_id"]).split(PART_SEP)[0]
    doc = Document(doc_id=doc_id, text=text, source=str((folder / "big.txt").resolve()))
    tok = AutoTokenizer.from_pretrained(resolve_embedder(None).path)
    config = IngestConfig()
    chunker = make_chunker(config.chunker, TokenizerAdapter(tok, 254), config.chunk_size, config.overlap)
    committed = sorted({r["doc_id"] for r in rows if PART_SEP in r["doc_id"]})
    spans = split_parts(text, config.part_chars)
    mismatched = 0
    for part_id in committed:
        n = int(part_id.rsplit(PART_SEP, 1)[1])
        part = _Part(n, spans[n], part_id, _part_hash(text, spans[n]), "")
        expected = Counter((c.chunk_id, c.text) for c in _chunk_part(chunker, doc, part))
        got = Counter((r["chunk_id"], r["text"]) for r in rows if r["doc_id"] == part_id)
        mismatched += int(expected != got)
    out.update(parts_total=len(spans), parts_committed=len(committed), chunks=len(ids),
               duplicates=len(ids) - len(set(ids)), parts_mismatched=mismatched,
               small_files_indexed=sum(1 for r in rows if PART_SEP not in r["doc_id"]))
    first = out["runs"][0].get("part_s", {})
    if len(first) >= 2:
        times = sorted(first.values())
        per_part = (times[-1] - times[0]) / (len(times) - 1)
        chunks_per_part = len(ids) / max(1, len(committed))
        out["chunks_per_s"] = round(chunks_per_part / per_part, 1)
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "--large":
        mb, rest = int(args[1]), args[2:]
        n_parts = int(rest[1]) if rest[:1] == ["--parts"] else 2
        rest = rest[2:] if rest[:1] == ["--parts"] else rest
        where = Path(rest[0]) if rest else Path(tempfile.mkdtemp(prefix="ragtune-large-"))
        print(json.dumps(measure_large(where, mb, n_parts)))
    else:
        print(json.dumps(run(args[0] if args else tempfile.mkdtemp(prefix="ragtune-hostile-run-"))))
