"""Every command line README.md shows is run by a test: this module parses the README's fenced blocks and runs them.

```bash blocks are split into commands (`\\` continuations joined, `# comments` dropped, `&&` chains split, `VAR=value`
prefixes kept as the command's environment); ```python blocks are exec'd; ```yaml blocks must be a valid experiment
or training config fragment. Nothing is hard-coded about today's examples: every command goes through one table of
substitutions (`plan` and `_poolattn` below) that shrinks it to a tiny random model and the pack's smallest task, and
a command no rule maps fails `test_every_readme_command_is_covered` with "README command not covered: ...; add a
substitution".

The commands run in the README's order in one temporary project folder (configs/ copied in, the data pack at
../shared/data as the README says), so what one example writes (runs/train-cpu/final, my-model) is what the next
one reads. `poolattn serve` runs in the background on a free port until the last step; the README's curl and openai
examples are pointed at it. `run_markdown(path, ...)` does the same for any other markdown file (docs/).

The README and docs/*.md are also checked for what they name: every repository path (`poolattn/...`, `tests/...`,
`benchmarks/...`, `configs/...`, `scripts/...`, a test as `file::name`), every dotted `poolattn.` name and every
relative link with its #anchor must exist, so a module moved or renamed without its docs fails here.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import torch

from helpers import free_port, wait_for_health

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]

# Backbones the README names -> the tiny random architecture standing in for each (poolattn.testing).
TINY_ARCH = {"smollm2-135m": "llama", "gemma3-270m": "gemma"}
TINY_TASK = "BIOSSES"  # the pack's smallest task (100 STS pairs): stands in for every suite, category and task
# Appended to every config-driven command (after the README's own --set, so they win): 1-2 steps of batch 2.
TRAIN_SHRINK = ["max_steps=2", "batch_size=2", "max_length=16", "warmup_steps=0", "save_every=2",
                "max_time_minutes=null"]
EXPERIMENT_SHRINK = ([f"train.{s}" for s in TRAIN_SHRINK] + ["base.max_length=32", f"eval.tasks=[{TINY_TASK}]",
                                                             "peers=[]", "report.n_resamples=50"])
STUDY_SHRINK = ["study.lrs=[1.0e-3]", "study.budgets=[1,2]", "study.sweep_budgets=[2]", "study.seeds=[42,43]",
                "study.warmup_steps=0"]
# Commands deliberately not run here, with the reason; anything else unmapped fails the coverage test.
NOT_RUN = {
    "torchrun": "multi-process launch: tests/test_experiment_distributed.py runs a 2-rank torchrun experiment",
    "accelerate": "multi-process launch: tests/test_experiment_distributed.py runs a 2-rank torchrun experiment",
}
# README commands that fail today, each with the one-line error it must give (so a change in how it fails is seen)
# and the reason; an entry whose command is no longer in the README, or which now succeeds, fails the run test.
KNOWN_BROKEN: dict[str, tuple[str, str]] = {}
SHELL_LANGS = {"bash", "sh", "shell", "console"}


class NotCovered(Exception):
    """A README command no substitution rule maps."""


# --- parsing -----------------------------------------------------------------------------------------------------
@dataclass
class Block:
    """A fenced block: its language tag, text and the line of its opening fence."""
    lang: str
    text: str
    line: int


@dataclass
class Step:
    """One thing to run: a shell command (argv + env prefix) or a python block, with where the README shows it."""
    kind: str  # "shell" | "python" | "yaml"
    where: str  # file:line
    text: str
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


def fenced_blocks(path: Path) -> list[Block]:
    """Every ``` fenced block of a markdown file, in order."""
    blocks, lang, start, body = [], None, 0, []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fence = re.match(r"^\s*```\s*([\w+-]*)", line)
        if fence and lang is None:
            lang, start, body = fence.group(1).lower(), i, []
        elif fence:
            blocks.append(Block(lang, "\n".join(body), start))
            lang = None
        elif lang is not None:
            body.append(line)
    return blocks


def shell_commands(text: str) -> list[tuple[int, list[str], dict[str, str]]]:
    """(line offset, argv, env prefix) of every command in a shell block: continuations joined, comments dropped,
    `&&` chains split, a trailing `&` (run in the background) dropped: `poolattn serve` always runs in the
    background here."""
    out, joined, first = [], "", None
    for i, line in enumerate(text.splitlines()):
        first = i if first is None else first
        if line.rstrip().endswith("\\"):
            joined += line.rstrip()[:-1] + " "
            continue
        tokens, joined, at = shlex.split(joined + line, comments=True), "", first
        first = None
        while tokens:
            cut = tokens.index("&&") if "&&" in tokens else len(tokens)
            argv, tokens = tokens[:cut], tokens[cut + 1:]
            argv = argv[:-1] if argv[-1:] == ["&"] else argv
            env = {}
            while argv and re.fullmatch(r"[A-Za-z_]\w*=.*", argv[0]):
                key, value = argv.pop(0).split("=", 1)
                env[key] = value
            if argv:
                out.append((at, argv, env))
    return out


def markdown_steps(path: Path) -> list[Step]:
    """The runnable steps of a markdown file in order (untagged and other-language blocks are not commands)."""
    steps = []
    for block in fenced_blocks(path):
        where = f"{path.name}:{block.line}"
        if block.lang in SHELL_LANGS:
            steps += [Step("shell", f"{path.name}:{block.line + 1 + at}", shlex.join(argv), argv, env)
                      for at, argv, env in shell_commands(block.text)]
        elif block.lang in ("python", "py"):
            steps.append(Step("python", where, block.text))
        elif block.lang in ("yaml", "yml"):
            steps.append(Step("yaml", where, block.text))
    return steps


# --- substitutions -------------------------------------------------------------------------------------------------
@dataclass
class Planned:
    """What the test does for a step: `action` is poolattn | serve | http | write | python | yaml | skip."""
    action: str
    args: list = field(default_factory=list)
    note: str = ""


def _alias(text: str, tiny: dict[str, str]) -> str:
    for alias, folder in tiny.items():
        text = re.sub(rf"(?<![\w./-]){re.escape(alias)}(?![\w-])", folder, text)
    return text


def _poolattn(args: list[str], tiny: dict[str, str], data_dir: Path) -> Planned:
    """A poolattn command shrunk: backbone aliases -> tiny models, task lists -> TINY_TASK (after checking that the
    README's names resolve), config commands -> the README's config with SHRINK overrides appended."""
    from poolattn.evaluation import resolve_tasks

    if not args:
        raise NotCovered("bare poolattn")
    command, args = args[0], [_alias(a, tiny) for a in args[1:]]
    for i, a in enumerate(args[:-1]):
        if a in ("--tasks", "-t"):
            resolve_tasks(args[i + 1], data_dir)  # a README task name that does not exist fails here
            args[i + 1] = TINY_TASK
    sets = [a for i, a in enumerate(args) if i and args[i - 1] == "--set"]
    key = "model.backbone" if command == "train" else "base.backbone"  # a backbone the README sets is kept (tiny)
    extra = [] if any(s.startswith(f"{key}=") for s in sets) else [f"{key}={tiny['smollm2-135m']}"]
    if command == "train":
        extra += TRAIN_SHRINK
    elif command in ("experiment", "study"):
        extra += EXPERIMENT_SHRINK + (STUDY_SHRINK if command == "study" else [])
    elif command in ("encode", "info", "eval", "report", "layers", "export"):
        extra = []  # their models are named on the command line (aliases replaced above)
    elif command == "serve":
        return Planned("serve", args)
    else:
        raise NotCovered(f"poolattn {command}")
    return Planned("poolattn", [command, *args] + [x for s in extra for x in ("--set", s)])


def plan(step: Step, tiny: dict[str, str], data_dir: Path) -> Planned:
    """The table of substitutions: how each README step runs here, or NotCovered."""
    if step.kind == "python":
        return Planned("python", [_alias(step.text, tiny)])
    if step.kind == "yaml":
        return Planned("yaml", [step.text])
    argv = step.argv
    if argv[:2] == ["bash", "scripts/setup.sh"]:
        return Planned("skip", note="setup: what CI itself runs before the tests")
    if argv[0] in ("python", ".venv/bin/python", "python3") and argv[1:3] == ["-m", "pytest"]:
        return Planned("skip", note="the test suite: this run")
    if argv[0] in ("poolattn", ".venv/bin/poolattn"):
        return _poolattn(argv[1:], tiny, data_dir)
    if argv[0] in ("python", ".venv/bin/python") and argv[1:3] == ["-m", "poolattn.cli"]:
        return _poolattn(argv[3:], tiny, data_dir)
    if argv[0] in ("printf", "echo") and argv[-2:-1] == [">"]:
        return Planned("write", argv)
    if argv[0] == "curl":
        return Planned("http", argv[1:])
    if argv[0] in NOT_RUN:
        return Planned("skip", note=NOT_RUN[argv[0]])
    raise NotCovered(step.text)


def coverage(path: Path, tiny: dict[str, str], data_dir: Path) -> tuple[list[tuple[Step, Planned]], list[str]]:
    """Every step of a markdown file with its plan, and the messages for those no rule maps."""
    planned, missing = [], []
    for step in markdown_steps(path):
        try:
            planned.append((step, plan(step, tiny, data_dir)))
        except (NotCovered, ValueError) as err:
            missing.append(f"README command not covered: {step.where}: {step.text!r} ({err}); add a substitution "
                           f"in tests/test_readme.py")
    return planned, missing


# --- running -------------------------------------------------------------------------------------------------------
class _Server:
    """`poolattn serve` in the background on a free port; `port_map` turns the README's port into it."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path):
        readme_port = args[args.index("--port") + 1] if "--port" in args else "8000"
        self.port = free_port()
        self.port_map = (readme_port, str(self.port))
        args = [str(self.port) if i and args[i - 1] == "--port" else a for i, a in enumerate(args)]
        if "--port" not in args:
            args += ["--port", str(self.port)]
        self.log = cwd / "serve.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "poolattn.cli", "serve", *args], cwd=cwd,
                                     env={**os.environ, **env}, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)
        try:
            wait_for_health(self.proc, self.port, self.tail)
        except AssertionError:
            self.stop()
            raise

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def ports(self, text: str) -> str:
        return re.sub(rf"\b(localhost|127\.0\.0\.1):{self.port_map[0]}\b", rf"\1:{self.port_map[1]}", text)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _curl(args: list[str]) -> httpx.Response:
    """The curl options README examples use (-s, -H, -d, -X), sent with httpx."""
    headers, data, method, url = {}, None, None, None
    it = iter(args)
    for a in it:
        if a in ("-s", "--silent", "-S", "-f", "--fail", "--retry-connrefused"):
            continue
        if a in ("--retry", "--retry-delay"):  # the server here is up before the request (its /health answered)
            next(it)
            continue
        if a in ("-H", "--header"):
            key, value = next(it).split(":", 1)
            headers[key.strip()] = value.strip()
        elif a in ("-d", "--data", "--data-raw"):
            data = next(it)
        elif a in ("-X", "--request"):
            method = next(it)
        elif not a.startswith("-") and url is None:
            url = a if "://" in a else f"http://{a}"
        else:
            raise NotCovered(f"curl option {a}")
    return httpx.request(method or ("POST" if data is not None else "GET"), url, headers=headers, content=data,
                         timeout=120)


def run_markdown(path: Path, workdir: Path, tiny: dict[str, str], data_dir: Path) -> list[str]:
    """Run every step of a markdown file in order in `workdir`; returns a log line per step. Raises on the first
    step that fails, naming it."""
    from typer.testing import CliRunner

    from poolattn.cli import app

    planned, missing = coverage(path, tiny, data_dir)
    assert not missing, "\n".join(missing)
    log, broken, server, cwd = [], [], None, os.getcwd()
    os.chdir(workdir)
    try:
        for step, p in planned:
            where = f"{step.where}: {step.text[:200]}"
            started = time.monotonic()
            if p.action == "poolattn":
                res = CliRunner().invoke(app, p.args, env=step.env)
                if step.text in KNOWN_BROKEN:
                    expected, reason = KNOWN_BROKEN[step.text]
                    assert res.exit_code != 0 and expected in res.output, \
                        f"{where}: KNOWN_BROKEN ({reason}) now gives exit {res.exit_code}: remove it from " \
                        f"KNOWN_BROKEN\n{res.output[-2000:]}"
                    broken.append(step.text)
                    continue
                assert res.exit_code == 0, f"{where}\nran: poolattn {shlex.join(p.args)}\nexit {res.exit_code}:\n" \
                                           f"{res.output[-3000:]}\n{res.exception!r}"
            elif p.action == "serve":
                if server:
                    server.stop()
                server = _Server(p.args, step.env, workdir)
            elif p.action == "write":  # printf/echo ... > file: the same shell command, in this folder
                subprocess.run(shlex.join(p.args[:-2]) + " > " + shlex.quote(p.args[-1]), shell=True, check=True)
            elif p.action == "http":
                assert server, f"{where}: an HTTP example before any `poolattn serve` example"
                reply = _curl([server.ports(a) for a in p.args])
                assert reply.status_code == 200, f"{where}: HTTP {reply.status_code}: {reply.text[:1000]}"
            elif p.action == "python":
                code = server.ports(p.args[0]) if server else p.args[0]
                exec(compile(code, step.where, "exec"), {"__name__": "__readme__"})
            elif p.action == "yaml":
                _check_yaml(p.args[0], where)
            log.append(f"{step.where} {p.action:8s} {time.monotonic() - started:5.1f}s {p.note or step.text[:80]}")
            print(log[-1], flush=True)
    finally:
        os.chdir(cwd)
        if server:
            server.stop()
    stale = [c for c in KNOWN_BROKEN if c not in broken and path == README]
    assert not stale, f"KNOWN_BROKEN entries no longer in {path.name}: {stale}; remove them"
    return log


def _check_yaml(text: str, where: str) -> None:
    """A YAML example is a fragment of an experiment or training config: it must validate as one."""
    import yaml

    from poolattn.experiment import ExperimentConfig
    from poolattn.training import TrainConfig

    raw = yaml.safe_load(text)
    errors = []
    for cls in (ExperimentConfig, TrainConfig):
        try:
            cls.model_validate(raw)
            return
        except ValueError as err:
            errors.append(f"{cls.__name__}: {err}")
    raise AssertionError(f"{where}: the YAML example is neither an experiment nor a training config:\n" +
                         "\n".join(errors))


def project_folder(root: Path, data_dir: Path) -> Path:
    """A user's checkout as the README assumes it: configs/, a texts.txt to encode, the data pack at
    ../shared/data."""
    project = root / "project"
    shutil.copytree(ROOT / "configs", project / "configs")
    (project / "texts.txt").write_text("the cat sat on the mat\nhow do I reset my password?\n", encoding="utf-8")
    (root / "shared").mkdir()
    (root / "shared" / "data").symlink_to(data_dir.resolve(), target_is_directory=True)
    return project


# --- paths and links the docs name --------------------------------------------------------------------------------
# Modules the docs name ahead of their landing (parallel work): allowed to be missing until they land; remove each
# once it does, so that from then on a move or rename of it fails like any other path. Empty: everything named exists.
PENDING_PATHS: set[str] = set()
_PATH = re.compile(r"(?<![\w./~$-])((?:poolattn|tests|benchmarks|configs|scripts)/[\w./*-]*)(?:::(\w+))?")
_DOTTED = re.compile(r"(?<![\w./~$-])poolattn(?:\.[A-Za-z_]\w*)+")
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def named_paths(path: Path) -> list[tuple[str, str, str | None]]:
    """(file:line, repository path, test name after `::` or None) for every repository path a markdown page names:
    `poolattn/...`, `tests/...`, `benchmarks/...`, `configs/...`, `scripts/...`; in a table row whose first cell starts
    with such a path, the cell's other backticked names (`backbone.py`, `serve/`) are its siblings."""
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        where = f"{path.name}:{i}"
        out += [(where, m.group(1).rstrip(".,"), m.group(2)) for m in _PATH.finditer(line)]
        if line.startswith("|"):
            cell = re.findall(r"`([^`]+)`", line.split("|")[1])
            if cell and _PATH.fullmatch(cell[0]):
                base = Path(cell[0].rstrip("/")).parent
                out += [(where, f"{base / name}", None) for name in cell[1:] if re.fullmatch(r"[\w-]+(\.py|/)", name)]
    return out


def missing_path(name: str, test: str | None) -> str | None:
    """Why a named repository path does not resolve (None: it does); a glob must match something."""
    if name.rstrip("/") in PENDING_PATHS:
        return None
    if "*" in name:
        return None if any(ROOT.glob(name)) else "matches no file"
    target = ROOT / name
    if not target.exists():
        return "no such file or folder"
    if test and not re.search(rf"^def {re.escape(test)}\(", target.read_text(encoding="utf-8"), re.M):
        return f"no test function {test}"
    return None


def missing_dotted(name: str) -> str | None:
    """Why a dotted name (`poolattn.training.train`) does not resolve: its modules are files or packages of the
    repository and the first name after them is defined or imported in the last one (None: it resolves)."""
    folder = ROOT / "poolattn"
    for part in name.split(".")[1:]:
        module = folder / "__init__.py" if folder.is_dir() else folder
        if folder.is_dir() and (folder / part).is_dir():
            folder = folder / part
        elif folder.is_dir() and (folder / f"{part}.py").is_file():
            folder = folder / f"{part}.py"
        elif folder.is_dir() and f"{folder.relative_to(ROOT).as_posix()}/{part}.py" in PENDING_PATHS:
            return None
        else:
            found = re.search(rf"\b{re.escape(part)}\b", module.read_text(encoding="utf-8"))
            return None if found else f"{part} is not in {module.relative_to(ROOT)}"
    return None


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors of a markdown page's headings: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for block_free in _outside_fences(path):
        if heading := re.match(r"^#{1,6}\s+(.*?)\s*$", block_free):
            anchors.add(re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-"))
    return anchors


def _outside_fences(path: Path) -> list[str]:
    lines, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if re.match(r"^\s*```", line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def broken_links(path: Path) -> list[str]:
    """Relative links of a markdown page whose file or #anchor does not exist (web links are not checked)."""
    out = []
    for target in (m.group(1) for line in _outside_fences(path) for m in _LINK.finditer(line)):
        if re.match(r"^[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            out.append(f"{path.name}: {target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in heading_anchors(dest):
            out.append(f"{path.name}: {target}: no heading #{anchor} in {dest.name}")
    return out


# --- tests ---------------------------------------------------------------------------------------------------------
TINY_PATHS = {alias: f"/tiny/{arch}" for alias, arch in TINY_ARCH.items()}


def test_markdown_parsing_handles_continuations_comments_env_and_chains(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("text\n```bash\nA=1 B='x y' poolattn eval --model m \\\n   --tasks lite   # note # more\n"
                  "bash scripts/setup.sh && poolattn info 'my model'\n```\n```\nnot a command\n```\n"
                  "```python\nprint(1)\n```\n", encoding="utf-8")
    steps = markdown_steps(md)
    assert [(s.kind, s.argv, s.env) for s in steps] == [
        ("shell", ["poolattn", "eval", "--model", "m", "--tasks", "lite"], {"A": "1", "B": "x y"}),
        ("shell", ["bash", "scripts/setup.sh"], {}), ("shell", ["poolattn", "info", "my model"], {}),
        ("python", [], {})]
    assert steps[0].where == "x.md:3" and steps[1].where == "x.md:5"


def test_unknown_commands_fail_coverage(tmp_path, data_dir):
    md = tmp_path / "x.md"
    md.write_text("```bash\nmake all\npoolattn frobnicate x\npoolattn eval --model m --tasks NoSuchTask -o o\n```\n")
    _, missing = coverage(md, TINY_PATHS, data_dir)
    assert len(missing) == 3 and all("README command not covered" in m and "add a substitution" in m
                                     for m in missing), missing


def test_substitutions_shrink_the_run_and_keep_the_readmes_choices(data_dir):
    step = Step("shell", "x.md:1", "", ["poolattn", "experiment", "configs/default.yaml", "--set",
                                         "base.backbone=gemma3-270m", "--set", "train.max_steps=20"])
    args = plan(step, TINY_PATHS, data_dir).args
    sets = [a for i, a in enumerate(args) if args[i - 1] == "--set"]
    assert "base.backbone=/tiny/gemma" in sets and not any("/tiny/llama" in a for a in sets)
    assert [a for a in sets if a.startswith("train.max_steps=")][-1] == "train.max_steps=2"
    assert plan(Step("shell", "x.md:1", "", ["poolattn", "eval", "--model", "smollm2-135m", "--tasks", "lite"]),
                TINY_PATHS, data_dir).args == ["eval", "--model", "/tiny/llama", "--tasks", TINY_TASK]


def test_a_failing_example_fails_the_run_naming_its_line(tmp_path, data_dir):
    md = tmp_path / "x.md"
    md.write_text("```bash\npoolattn info my-model\n```\n", encoding="utf-8")
    with pytest.raises(AssertionError, match=r"x\.md:2: poolattn info my-model(.|\n)*exit 2"):
        run_markdown(md, tmp_path, TINY_PATHS, data_dir)


def test_every_readme_command_is_covered(data_dir):
    """Fast: every command the README shows maps to a run here, and the README still shows the test command."""
    planned, missing = coverage(README, TINY_PATHS, data_dir)
    assert not missing, "\n".join(missing)
    assert any(s.argv[1:3] == ["-m", "pytest"] for s, _ in planned if s.kind == "shell"), \
        "the README no longer shows how to run the tests"
    assert sum(p.action == "poolattn" for _, p in planned) >= 5, planned


def test_every_readme_command_runs(tiny_backbones, data_dir, tmp_path, monkeypatch):
    """Every README example, in order, on tiny random models and BIOSSES (the substitutions of `plan`)."""
    tiny = {alias: tiny_backbones[arch] for alias, arch in TINY_ARCH.items()}
    monkeypatch.setenv("POOLATTN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("POOLATTN_DATA", raising=False)  # the README's default: ../shared/data
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny models: on a shared CPU two OpenMP threads cost ~5x
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        log = run_markdown(README, project_folder(tmp_path, data_dir), tiny, data_dir)
    finally:
        torch.set_num_threads(threads)
    assert len(log) + sum(s.text in KNOWN_BROKEN for s in markdown_steps(README)) == len(markdown_steps(README))


def test_every_path_the_docs_name_exists():
    """Every module, test, benchmark, config and script path README.md and docs/*.md name exists (a test named with
    `::` too), and so does every dotted poolattn name's module and first attribute: a move or rename that leaves
    the docs behind fails here."""
    bad = [f"{where}: {name}{'::' + test if test else ''}: {why}" for page in DOCS
           for where, name, test in named_paths(page) if (why := missing_path(name, test))]
    bad += [f"{page.name}: {name}: {why}" for page in DOCS for line in _outside_fences(page) + [
        line for b in fenced_blocks(page) for line in b.text.splitlines()]
            for name in _DOTTED.findall(line) if (why := missing_dotted(name))]
    assert not bad, "\n".join(bad)
    assert sum(len(named_paths(page)) for page in DOCS) > 50  # the pages do name paths: the pattern still finds them


def test_the_path_check_sees_moves_and_siblings(tmp_path):
    page = tmp_path / "x.md"
    page.write_text("`poolattn/stats.py` and `tests/test_cli.py::no_such_test` and poolattn.stats.nothing_here\n"
                    "| `poolattn/model.py`, `pooling.py`, `gone.py` | x |\n", encoding="utf-8")
    named = named_paths(page)
    assert ("x.md:2", "poolattn/gone.py", None) in named and ("x.md:2", "poolattn/pooling.py", None) in named
    assert [missing_path(n, t) is not None for _, n, t in named] == [True, True, False, False, True]
    assert missing_dotted("poolattn.stats.nothing_here") and not missing_dotted("poolattn.training.train")
    assert missing_path("poolattn/experiment/layout.py", None) is None  # pending: allowed until it lands


def test_the_link_check_sees_missing_files_and_headings(tmp_path):
    page = tmp_path / "x.md"
    page.write_text("# Evaluation cost (issue 28)\n[a](#evaluation-cost-issue-28) [b](#gone) [c](y.md) "
                    "[d](https://example.com/z.md)\n```\n# not a heading\n```\n[e](#not-a-heading)\n",
                    encoding="utf-8")
    assert broken_links(page) == ["x.md: #gone: no heading #gone in x.md", "x.md: y.md: no such file",
                                  "x.md: #not-a-heading: no heading #not-a-heading in x.md"]


def test_every_link_between_the_docs_resolves():
    """Every relative link of README.md and docs/*.md names a file that exists and, with #anchor, a heading there."""
    bad = [b for page in DOCS for b in broken_links(page)]
    assert not bad, "\n".join(bad)
