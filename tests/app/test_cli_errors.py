"""``segvol-rt`` failure classes through the real entry point, on tiny artifacts:
an input label map as an output (also through a symlink, a hard link, ``..``),
output names over NAME_MAX, click's usage errors, ``build`` on a missing
directory, a rename failing on the n-th file, SIGINT/SIGTERM during the
start-up imports, while staging, between two renames, after the commit and at
the interpreter's exit, two concurrent writers, a closed stdout, and the
provenance every sidecar and summary line records.

Each failure: the exit code, exactly one stderr line, no traceback, no new or
changed file, the inputs' bytes unchanged. Faults are injected by a hook
script written here (it patches ``os.replace`` or ``OutputSet.stage``, then
runs the CLI's ``main``), so no test hook lives in the product code.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("torch")  # the tiny artifacts are exported from a torch model
pytest.importorskip("nibabel")

from segvol_rt.demo.phantom import make_phantom  # noqa: E402
from tests.support.tiny_artifacts import tiny_artifacts  # noqa: E402

SHAPE = (96, 96, 40)
BOX_OLD, BOX_NEW = "20,20,8,70,75,30", "30,25,10,60,70,28"
TIMEOUT = 180

HOOK = '''
import errno, os, sys, time
from pathlib import Path

mode, n, mark = os.environ["HOOK_MODE"], int(os.environ.get("HOOK_N", "1")), os.environ.get("HOOK_MARK")
sleep = float(os.environ.get("HOOK_SLEEP", "60"))
count = [0]

if mode == "import-sleep":  # pause in the start-up imports: typer is the first slow one
    import importlib.abc

    class SlowImport(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "typer":
                Path(mark).touch()
                time.sleep(sleep)
            return None

    sys.meta_path.insert(0, SlowImport())
elif mode == "commit-sleep":  # pause after the commit, the run not over yet
    import segvol_rt.io.outputs as O
    commit = O.OutputSet.commit

    def slow_commit(self):
        files = commit(self)
        Path(mark).touch()
        time.sleep(sleep)
        return files

    O.OutputSet.commit = slow_commit
elif mode == "exit-sleep":  # pause at the interpreter's exit, the run over
    import atexit

    atexit.register(lambda: (Path(mark).touch(), time.sleep(sleep)))
elif mode == "stage-sleep":  # pause after staging the n-th file
    import segvol_rt.io.outputs as O
    stage = O.OutputSet.stage

    def slow_stage(self, target, data):
        digest = stage(self, target, data)
        count[0] += 1
        if count[0] == n:
            Path(mark).touch()
            time.sleep(sleep)
        return digest

    O.OutputSet.stage = slow_stage
else:  # the renames of staged files into place
    replace = os.replace

    def hooked(src, dst, *args, **kwargs):
        staged = os.path.basename(os.fspath(src)).startswith(".segvol-rt-") and ".tmp" in os.fspath(src)
        if staged:
            count[0] += 1
            if mode == "replace-fail" and count[0] == n:
                raise OSError(errno.ENOSPC, "No space left on device")
        result = replace(src, dst, *args, **kwargs)
        if staged and mode == "replace-sleep" and count[0] == n:
            Path(mark).touch()
            time.sleep(sleep)
        return result

    os.replace = hooked

from segvol_rt.app.entry import main  # the console script's entry point

main()
'''


def cli() -> list[str]:
    exe = shutil.which("segvol-rt")
    return [exe] if exe else [sys.executable, "-m", "segvol_rt"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_artifacts(tmp_path_factory.getbasetemp() / "tiny_artifacts")[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny) -> SimpleNamespace:
    """A phantom, its labels, the hook script and a previous output set (split, probabilities)."""
    root = tmp_path_factory.mktemp("cli_errors")
    ph = make_phantom(1, SHAPE, orientation="LPS")
    scan, labels = ph.save(root / "ct.nii.gz", root / "ct_labels.nii.gz")
    hook = root / "hook.py"
    hook.write_text(HOOK)
    previous = root / "previous"
    previous.mkdir()
    proc = run(*set_args(scan, previous, tiny, BOX_OLD))
    assert proc.returncode == 0, proc.stderr
    return SimpleNamespace(root=root, scan=scan, labels=labels, hook=hook, previous=previous, tiny=tiny)


def set_args(scan: Path, out_dir: Path, tiny: Path, box: str, texts=("liver", "spleen")) -> list[str]:
    args = ["infer", str(scan)]
    for t in texts:
        args += ["--text", t]
    return [*args, "--box", box, "--split", "--probabilities", "--no-zoom-in", "--out", str(out_dir / "res.nii.gz"),
            "--artifacts", str(tiny), "-q"]


def run(*args: str, hook: Path | None = None, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(hook)] if hook else cli()
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=TIMEOUT,
                          env={**os.environ, **(env or {})}, **kwargs)


def start(*args: str, hook: Path, env: dict) -> subprocess.Popen:
    """The CLI under ``hook``, with SIGINT's default action whatever pytest inherited: a
    child of a background job (``pytest &``) would inherit an ignored SIGINT, and the CLI
    keeps an ignored signal ignored."""
    return subprocess.Popen([sys.executable, str(hook), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **env}, preexec_fn=default_sigint)


def default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def snapshot(directory: Path) -> dict[str, str]:
    """Every entry, hidden ones too, -> sha256 of its bytes (or what it is)."""
    out = {}
    for p in sorted(directory.iterdir()):
        out[p.name] = "link" if p.is_symlink() else "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def one_error_line(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def consistent(directory: Path) -> dict:
    """The set's sidecar, after checking that every file it describes has its sha256."""
    side = json.loads((directory / "res.json").read_text())
    assert set(side["files"]) == {t["file"] for t in side["targets"]} | {t["probabilities"] for t in side["targets"]}
    for name, entry in side["files"].items():
        assert hashlib.sha256((directory / name).read_bytes()).hexdigest() == entry["sha256"], name
    return side


@pytest.fixture
def work(tmp_path, data) -> Path:
    """A copy of the previous set to be replaced."""
    out = tmp_path / "out"
    shutil.copytree(data.previous, out)
    return out


# -- inputs as outputs, names, usage ------------------------------------------------------------


@pytest.mark.parametrize("how", ["reference", "prompt-from", "symlink", "hardlink", "dotdot"])
def test_a_label_map_is_never_an_output(tmp_path, data, how):
    labels = tmp_path / "labels.nii.gz"
    shutil.copy(data.labels, labels)
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.nii.gz").symlink_to(labels.name)
    os.link(labels, tmp_path / "hard.nii.gz")
    out = {"reference": labels, "prompt-from": labels, "symlink": tmp_path / "link.nii.gz",
           "hardlink": tmp_path / "hard.nii.gz", "dotdot": tmp_path / "sub" / ".." / "labels.nii.gz"}[how]
    option = "--reference" if how == "reference" else "--prompt-from"
    before, label_bytes = snapshot(tmp_path), labels.read_bytes()
    proc = run("infer", str(data.scan), "--text", "liver", option, f"{labels}:1", "--out", str(out),
               "--artifacts", str(data.tiny))
    line = one_error_line(proc)
    assert "refusing to overwrite the input label map" in line, line
    assert snapshot(tmp_path) == before and labels.read_bytes() == label_bytes


@pytest.mark.parametrize("extra", [["--split"], ["--probabilities"]])
def test_an_output_name_over_name_max_fails_before_any_work(work, data, extra):
    limit = os.pathconf(work, "PC_NAME_MAX")
    before, scan_bytes = snapshot(work), data.scan.read_bytes()
    started = time.monotonic()
    proc = run("infer", str(data.scan), "--text", "liver", "--text", "k" * limit, *extra, "--out",
               str(work / "res.nii.gz"), "--artifacts", str(data.tiny))
    line = one_error_line(proc)
    assert f"limit of {limit}" in line and "shorten" in line, line
    assert time.monotonic() - started < 30  # no model was loaded
    assert snapshot(work) == before and data.scan.read_bytes() == scan_bytes


@pytest.mark.parametrize("args, words", [
    (["infer", "ct.nii.gz", "--text", "liver", "--backend"], "requires an argument"),
    (["infer", "ct.nii.gz", "--text", "liver", "--nonsense"], "No such option"),
    (["infer", "ct.nii.gz", "--seed", "x"], "--seed"),
    (["infer", "ct.nii.gz", "--text", "liver", "--threads", "0"], "--threads"),
    (["infer", "ct.nii.gz", "--text", "liver", "--backend", "nonsense"], "unknown backend"),
    (["demo", "--out", "demo", "--device", "tpu"], "unknown device"),
    (["nocommand"], "No such command"),
    (["build", "--artifacts", "nowhere"], "does not exist"),
])
def test_usage_errors_are_one_line(tmp_path, data, args, words):
    shutil.copy(data.scan, tmp_path / "ct.nii.gz")
    before = snapshot(tmp_path)
    proc = run(*args, cwd=tmp_path)
    line = one_error_line(proc)
    assert line.startswith("error: ") and words in line, line
    if args[0] == "build":  # the missing directory is named, not the missing engine builder
        assert "tensorrt" not in line and "nowhere" in line, line
    assert snapshot(tmp_path) == before


# -- all or nothing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3])
def test_a_rename_failing_on_the_nth_file_keeps_the_previous_set(work, data, n):
    before, scan_bytes = snapshot(work), data.scan.read_bytes()
    proc = run(*set_args(data.scan, work, data.tiny, BOX_NEW), hook=data.hook,
               env={"HOOK_MODE": "replace-fail", "HOOK_N": str(n)})
    line = one_error_line(proc)
    assert "No space left on device" in line and "previous files were restored" in line, line
    assert snapshot(work) == before and data.scan.read_bytes() == scan_bytes
    consistent(work)


@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_signal_while_staging_writes_nothing(work, data, tmp_path, signum, code, word):
    before = snapshot(work)
    mark = tmp_path / "staged"
    proc = start(*set_args(data.scan, work, data.tiny, BOX_NEW), hook=data.hook,
                 env={"HOOK_MODE": "stage-sleep", "HOOK_N": "2", "HOOK_MARK": str(mark)})
    _wait_for(mark, proc)
    assert any(p.name.startswith(".segvol-rt-") for p in work.iterdir())  # staged files exist now
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=TIMEOUT)
    line = one_error_line(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), code)
    assert line == f"{word}; nothing was written"
    assert snapshot(work) == before  # no temporary file left, the previous set untouched
    consistent(work)


def test_sigterm_between_two_renames_completes_the_set(work, data, tmp_path):
    old = consistent(work)
    mark = tmp_path / "renamed"
    proc = start(*set_args(data.scan, work, data.tiny, BOX_NEW), hook=data.hook,
                 env={"HOOK_MODE": "replace-sleep", "HOOK_N": "1", "HOOK_SLEEP": "1", "HOOK_MARK": str(mark)})
    _wait_for(mark, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=TIMEOUT)
    line = one_error_line(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), 143)
    assert line == "terminated; the outputs had been written"
    new = consistent(work)  # the whole new set, none of the old one
    assert new["files"] != old["files"]
    assert sorted(p.name for p in work.iterdir()) == sorted(["res.json", *new["files"]])


@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_signal_during_the_start_up_imports_is_one_line(tmp_path, data, signum, code, word):
    mark = tmp_path / "importing"
    proc = start("version", hook=data.hook, env={"HOOK_MODE": "import-sleep", "HOOK_MARK": str(mark)})
    _wait_for(mark, proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert one_error_line(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), code) == f"{word}; nothing was written"


@pytest.mark.parametrize("mode, signum, code, word", [("commit-sleep", signal.SIGINT, 130, "interrupted"),
                                                      ("commit-sleep", signal.SIGTERM, 143, "terminated"),
                                                      ("exit-sleep", signal.SIGINT, 130, "interrupted"),
                                                      ("exit-sleep", signal.SIGTERM, 143, "terminated")])
def test_a_signal_after_the_commit_says_the_outputs_were_written(work, data, tmp_path, mode, signum, code, word):
    """After the commit, while the run goes on (commit-sleep) or while the interpreter exits
    (exit-sleep): one line saying the outputs were written, never silence or a traceback."""
    old = consistent(work)
    mark = tmp_path / "committed"
    proc = start(*set_args(data.scan, work, data.tiny, BOX_NEW), hook=data.hook,
                 env={"HOOK_MODE": mode, "HOOK_SLEEP": "30", "HOOK_MARK": str(mark)})
    _wait_for(mark, proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=TIMEOUT)
    line = one_error_line(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), code)
    assert line == f"{word}; the outputs had been written"
    assert consistent(work)["files"] != old["files"]


def test_the_console_script_starts_in_the_entry_module():
    """The handlers must be installed before typer is imported: the script's target imports nothing heavy."""
    import tomllib

    root = Path(__file__).resolve().parents[2]
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["segvol-rt"] == "segvol_rt.app.entry:main"
    code = "import sys; import segvol_rt.app.entry; print(sorted(m for m in ('typer', 'click', 'numpy') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout.strip() == "[]"


def test_two_writers_to_one_out_never_interleave(work, data, tmp_path):
    mark = tmp_path / "first is committing"
    first = start(*set_args(data.scan, work, data.tiny, BOX_OLD, ("liver", "spleen")), hook=data.hook,
                  env={"HOOK_MODE": "replace-sleep", "HOOK_N": "2", "HOOK_SLEEP": "3", "HOOK_MARK": str(mark)})
    _wait_for(mark, first)
    second = subprocess.Popen([*cli(), *set_args(data.scan, work, data.tiny, BOX_NEW, ("spleen", "liver"))],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for proc in (first, second):
        _, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0 and err == "", err
    side = consistent(work)  # the second writer waited for the first one's lock: its set, whole
    assert [t["name"] for t in side["targets"]] == ["spleen", "liver"]
    assert not any(p.name.startswith(".") for p in work.iterdir())


def _wait_for(mark: Path, proc: subprocess.Popen, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not mark.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)


# -- stdout, provenance -----------------------------------------------------------------------------------


def test_a_closed_stdout_neither_fails_the_run_nor_half_writes(work, data):
    args = [a for a in set_args(data.scan, work, data.tiny, BOX_NEW) if a != "-q"]
    proc = subprocess.Popen([*cli(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().startswith("backend: ")
    proc.stdout.close()  # `| head -1`
    err = proc.stderr.read() if proc.stderr else ""
    assert proc.wait(timeout=TIMEOUT) == 0 and err == "", err
    consistent(work)
    assert [p for p in work.iterdir() if p.name.startswith(".")] == []


def test_provenance_in_the_sidecar_and_the_summary_line(work, data):
    from segvol_rt import __version__
    from segvol_rt.io.artifacts import read_manifest

    args = [a for a in set_args(data.scan, work, data.tiny, BOX_NEW) if a != "-q"]
    proc = run(*args, "--threads", "1", "--window-prompts", "aligned")
    assert proc.returncode == 0, proc.stderr
    sha = read_manifest(data.tiny)["checkpoint"]["sha256"]
    prov = consistent(work)["provenance"]
    assert prov == {"segvol_rt_version": __version__, "checkpoint_sha256": sha, "backend": "onnxruntime",
                    "device": "cpu", "precision": "fp32", "threads": 1, "window_prompts": "aligned"}
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.startswith("time: read ")
    for words in (f"segvol-rt {__version__}", f"checkpoint sha256 {sha}", "onnxruntime on cpu", "fp32", "1 threads",
                  "window prompts aligned"):
        assert words in summary, summary


def test_a_failed_demo_leaves_no_folder(tmp_path):
    out = tmp_path / "demo"
    proc = run("demo", "--out", str(out), "--artifacts", str(tmp_path / "nowhere"))
    line = one_error_line(proc)
    assert "does not exist" in line, line
    assert list(tmp_path.iterdir()) == []
