"""Command line: thin typer wrappers over the library; every command's work lives in its own module."""
from __future__ import annotations

import sys

import typer

from .cli_options import (
    DATA_HELP,
    DEVICE_HELP,
    DTYPE_HELP,
    FUSE_LORA_HELP,
    PREFIX_REUSE_HELP,
    check_device,
    check_dtype,
    check_model_spec,
    load_model_for_cli,
)
from .errors import ErrorBoundary, UserError

app = typer.Typer(cls=ErrorBoundary, add_completion=False, no_args_is_help=True,
                  help="Decoder LLMs as text-embedding models: design, train, evaluate, compare.")


def _version(value: bool) -> None:
    if value:
        from .allocator import in_use
        from .version import __version__

        typer.echo(f"poolattn {__version__} (memory allocator: {in_use()})")
        raise typer.Exit()


@app.callback()
def _main(ctx: typer.Context,
          debug: bool = typer.Option(False, "--debug", help="show the traceback of an error (or POOLATTN_DEBUG=1)"),
          version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print poolattn's version and exit")):
    """Decoder LLMs as text-embedding models: design, train, evaluate, compare."""
    ctx.meta["poolattn_debug"] = debug


# --- encode/info commands (core) ---

@app.command()
def encode(
    input: str = typer.Option(..., "--input", "-i", help="text file, one text per line"),
    output: str = typer.Option(..., "--output", "-o", help=".npy file to write (float32 [N, D])"),
    model: str = typer.Option("smollm2-135m", callback=check_model_spec,
                              help="saved poolattn folder, backbone alias, local HF folder, GGUF or hub id"),
    attention: str = typer.Option(None, help="causal | bidirectional (default: as saved, else causal)"),
    pooling: str = typer.Option(None, help="eos | mean | weighted_mean | latent | multilayer (default: as saved, else eos)"),
    instruction: str = typer.Option(None, help="task instruction prefixed to every text"),
    batch_size: int = typer.Option(32, min=1),
    max_length: int = typer.Option(None, min=1, help="truncate texts to this many tokens (default: as saved)"),
    dtype: str = typer.Option(None, callback=check_dtype, help=DTYPE_HELP),
    device: str = typer.Option("auto", callback=check_device, help=DEVICE_HELP),
    prefix_reuse: bool = typer.Option(True, "--prefix-reuse/--no-prefix-reuse", help=PREFIX_REUSE_HELP),
    fuse_lora: bool = typer.Option(True, "--fuse-lora/--no-fuse-lora", help=FUSE_LORA_HELP),
):
    """Embed the lines of a text file into a .npy file, written atomically at exactly --output."""
    import numpy as np
    from rich import print as rprint

    from .fileio import atomic_write, check_input_file, check_not_input, check_output_file

    check_not_input(output, {"--input": input})  # before anything is read: the input is never overwritten
    check_output_file(output)  # before any work: a folder, a missing or unwritable folder is a usage error
    try:
        texts = check_input_file(input).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise UserError(f"--input {input}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset "
                        f"{err.start}); save it as UTF-8", 2) from None
    m = load_model_for_cli(model, attention, pooling, dtype, max_length, device, fuse_lora)
    m.prefix_reuse = prefix_reuse
    emb = m.encode(texts, instruction=instruction, batch_size=batch_size, show_progress_bar=True)
    with atomic_write(output) as f:  # np.save to a file object: no ".npy" appended to the name given
        np.save(f, emb)
    rprint(f"[green]{emb.shape[0]} x {emb.shape[1]}[/green] embeddings ({m.config.name}) -> {output}")


@app.command()
def info(folder: str = typer.Argument(..., help="saved poolattn model folder")):
    """Show a saved model's design, adapter and pooler."""
    import json
    from pathlib import Path

    from rich import print as rprint

    from .modelconfig import CONFIG_NAME

    path = Path(folder) / CONFIG_NAME
    if not path.exists():
        raise typer.BadParameter(f"{folder} is not a poolattn model folder (no {CONFIG_NAME})")
    meta = json.loads(path.read_text())
    cfg = meta["config"]
    rprint(f"[bold]{folder}[/bold]  poolattn {meta.get('poolattn_version')}")
    rprint(f"  backbone   {cfg['backbone']}  ({cfg['dtype']}, max_length {cfg['max_length']})")
    rprint(f"  design     pooling={cfg['pooling']}  attention={cfg['attention']}  normalize={cfg['normalize']}"
           + ("  echo=True (the text twice, the second copy pooled)" if cfg.get("echo") else ""))
    rprint(f"  pooler     {meta['pooler']}")
    rprint(f"  lora       {cfg['lora'] or 'none'}{'  (full fine-tune)' if cfg.get('full_finetune') else ''}")
    widths = cfg.get("matryoshka_dims")
    rprint(f"  dim        {meta['embedding_dim']}" + (f"  (Matryoshka-trained widths {widths})" if widths else ""))
    rprint(f"  files      {', '.join(sorted(p.name for p in Path(folder).iterdir()))}")


# --- train command (trainer) ---
@app.command("train")
def train_command(
    config: str = typer.Argument(..., help="training config YAML (see configs/train_cpu.yaml)"),
    set_: list[str] = typer.Option(None, "--set", help="override a config field: key=value, dotted, repeatable "
                                                      "(e.g. --set lr=2e-4 --set model.pooling=latent)"),
    device: str = typer.Option(None, callback=check_device, help=f"{DEVICE_HELP} (default: the config's, auto)"),
):
    """Train a design contrastively (LoRA + pooler); rerun with the same output_dir to resume."""
    import yaml
    from pydantic import ValidationError
    from rich import print as rprint

    from .datadir import resolve_data_dir
    from .distributed import is_main
    from .fileio import removed_if_failed
    from .training import TrainConfig, train

    set_ = list(set_ or []) + ([f"device={device}"] if device else [])
    try:
        cfg = TrainConfig.load(config, set_)
    except (ValidationError, ValueError, OSError, yaml.YAMLError) as err:
        raise typer.BadParameter(str(err), param_hint="CONFIG / --set") from err
    resolve_data_dir(cfg.data_dir, "data_dir")  # before any work: a data folder that is not there is one line
    with removed_if_failed(cfg.output_dir):
        final = train(cfg)
    if is_main():  # one line under torchrun / accelerate launch
        rprint(f"[green]final model[/green] -> {final}")


# --- eval command (evaluation) ---
@app.command("eval")
def eval_(
    model: str = typer.Option(..., "--model", "-m", callback=check_model_spec,
                              help="saved poolattn folder, sentence-transformers folder, "
                              "backbone alias, local HF folder, GGUF or hub id (all-MiniLM-L6-v2: the peer)"),
    tasks: str = typer.Option("lite", "--tasks", "-t", help="comma-separated task names, suites (lite, full) and "
                              "categories (sts, retrieval, classification, clustering, pairclassification, reranking)"),
    output: str = typer.Option(..., "--output", "-o", help="folder for <task>.json, <task>.items.json, summary.*"),
    data: str = typer.Option(None, "--data", help=DATA_HELP),
    instructions: str = typer.Option(None, help="YAML/JSON file {task: instruction} overriding the built-in table"),
    batch_size: int = typer.Option(32, min=1),
    no_cache: bool = typer.Option(False, "--no-cache", help="do not read or write the embedding cache"),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="reuse the tasks an earlier run into --output "
                                "finished with the same model and settings (its progress.json); --no-resume scores "
                                "every task anew"),
    pooling: str = typer.Option(None, help="poolattn models: eos | mean | weighted_mean | latent | multilayer"),
    attention: str = typer.Option(None, help="poolattn models: causal | bidirectional"),
    device: str = typer.Option("auto", callback=check_device, help=DEVICE_HELP),
    languages: str = typer.Option("eng", help="subsets of multilingual hub tasks to score, comma-separated ISO 639-3 "
                                  "codes (default eng, as the English leaderboard), or `all`"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="let a sentence-transformers folder or "
                                           "hub model run code of its own (only for models you trust; poolattn's own "
                                           "exports load without it)"),
    prefix_reuse: bool = typer.Option(True, "--prefix-reuse/--no-prefix-reuse", help=PREFIX_REUSE_HELP),
    fuse_lora: bool = typer.Option(True, "--fuse-lora/--no-fuse-lora", help=FUSE_LORA_HELP),
    all_splits: bool = typer.Option(False, "--all-splits", help="score every split of each task (default: only the "
                                    "main split, the leaderboard's: e.g. test, not validation and test)"),
    no_dedup: bool = typer.Option(False, "--no-dedup", help="encode every text as mteb passes it (default: each "
                                  "distinct text once per task and side; exact)"),
    dimensions: int = typer.Option(None, min=1, help="score the vectors cut to their first N components and "
                                   "renormalised (a Matryoshka width; the summary says whether the model was trained "
                                   "at it); the embedding cache keeps full vectors; default: the full width"),
):
    """Score a model on MTEB tasks (mteb's evaluators) from the data pack or the hub; per-item scores included."""
    from pathlib import Path

    from rich import print as rprint

    from .datadir import resolve_data_dir
    from .device import resolve_device
    from .distributed import ensure_group, is_main
    from .evaluation import TaskUnavailable, evaluate, load_model, resolve_tasks
    from .fileio import check_input_file, check_not_input, check_output_dir, removed_if_failed
    from .model import EmbeddingModel

    data_dir = resolve_data_dir(data, "--data")  # every input checked before the output folder is made
    check_not_input(output, {"--instructions": instructions})
    check_output_dir(output)
    ensure_group(resolve_device(device).type)  # under torchrun every rank encodes its share; rank 0 scores
    if instructions is not None:
        check_input_file(instructions, "--instructions")
    try:
        names = resolve_tasks(tasks, data_dir)
    except (ValueError, OSError) as e:
        raise typer.BadParameter(str(e), param_hint="--tasks") from e
    try:
        with removed_if_failed(output):
            loaded = load_model(model, device=device, trust_remote_code=trust_remote_code, fuse_lora=fuse_lora,
                                pooling=pooling, attention=attention)
            if isinstance(loaded, EmbeddingModel):  # not a sentence-transformers model
                loaded.prefix_reuse = prefix_reuse
            scores = evaluate(loaded, names, data_dir=data_dir, output_dir=output, instructions=instructions,
                              batch_size=batch_size, cache=not no_cache, resume=resume, all_splits=all_splits,
                              dedup=not no_dedup, dimensions=dimensions, languages=None if languages.strip() == "all"
                              else [x.strip() for x in languages.split(",")])
    except TaskUnavailable as e:
        rprint(f"[red]{e}[/red]")
        raise typer.Exit(1) from e
    if is_main():
        rprint(f"[green]{len(scores)} task(s)[/green] -> {output}")
        rprint((Path(output) / "summary.md").read_text())


# --- report command (report) ---
@app.command("report")
def report_command(
    folder: str = typer.Argument(..., help="experiment folder (layout: see poolattn.report)"),
    reference: str = typer.Option(None, help="design the per-task differences are drawn against "
                                             "(default: experiment.yaml report.reference, else the first design)"),
    n_resamples: int = typer.Option(None, help="permutations and bootstrap resamples per per-dataset test "
                                               "(default 1000)"),
    alpha: float = typer.Option(None, help="significance level (default 0.05)"),
    seed: int = typer.Option(None, help="resampling seed (default 0)"),
    baseline_in_tests: bool = typer.Option(None, "--baseline-in-tests/--no-baseline-in-tests",
                                           help="also test every design against the untrained baseline"),
    output: str = typer.Option(None, help="where to write the report (default: the experiment folder)"),
):
    """Tables, significance tests and plots of an experiment: report.md, report.html, report.json, PNGs."""
    from pydantic import ValidationError
    from rich import print as rprint

    from .report import write_report

    try:
        paths = write_report(folder, output, reference=reference, n_resamples=n_resamples, alpha=alpha, seed=seed,
                             baseline_in_tests=baseline_in_tests)
    except (FileNotFoundError, ValueError, ValidationError) as err:
        raise typer.BadParameter(str(err), param_hint="FOLDER / options") from err
    for kind, path in paths.items():
        rprint(f"[green]{kind:>11}[/green] {path}")


# --- experiment/layers commands (experiment) ---
@app.command()
def experiment(
    config: str = typer.Argument(..., help="experiment YAML (see configs/default.yaml)"),
    set_: list[str] = typer.Option([], "--set", help="override a config value, e.g. --set train.max_steps=50"),
    device: str = typer.Option(None, callback=check_device, help=f"{DEVICE_HELP} (default: the config's, auto)"),
    no_cache: bool = typer.Option(False, "--no-cache", help="do not read or write the embedding cache"),
    design: list[str] = typer.Option([], "--design", help="run only this design (repeatable; `baseline` for the "
                                     "untrained row, `peers` for the peer models): separate scheduler jobs on one "
                                     "folder, each design claimed by the job that runs it; the report is written "
                                     "once every design is done"),
):
    """Train every design, evaluate each, the untrained backbone and any `peers:`, test the differences, write the
    report. Run it again to resume: finished designs are skipped, an interrupted one resumes from its checkpoint.
    Under torchrun / accelerate launch every process trains each design and encodes its share of the evaluation."""
    from rich import print as rprint

    from .experiment import ExperimentConfig, pending, run_experiment
    from .fileio import check_input_file, check_output_dir, removed_if_failed

    set_ = list(set_) + ([f"device={device}"] if device else [])
    cfg = ExperimentConfig.load(check_input_file(config, "CONFIG"), set_)
    check_output_dir(cfg.output_dir, "output_dir")
    cfg.check_data()
    with removed_if_failed(cfg.output_dir):
        folder = run_experiment(cfg, cache=not no_cache, only=list(design) or None)
    from .distributed import is_main
    from .report import write_report

    left = pending(folder)
    if is_main() and left:
        rprint(f"[yellow]not done yet[/yellow]: {', '.join(left)}; the report is written when every design is done "
               f"(or run `poolattn report {folder}`)")
    elif is_main():
        paths = write_report(folder)
        rprint(f"[green]report[/green]: {paths['md']}  {paths['html']}")


@app.command()
def study(
    config: str = typer.Argument(..., help="study YAML: an experiment config plus a `study:` section "
                                 "(see configs/study_budget.yaml)"),
    set_: list[str] = typer.Option([], "--set", help="override a config value, e.g. --set study.seeds=[42,43]"),
    device: str = typer.Option(None, callback=check_device, help=f"{DEVICE_HELP} (default: the config's, auto)"),
):
    """Measure what budget tells designs apart: an lr sweep, then every seed at the picked lr, evaluated at several
    step budgets from one constant-lr run each; writes <name>.md / .json and a report per (lr, budget).
    Run it again to resume."""
    from rich import print as rprint

    from .experiment.study import load_study, run_study
    from .fileio import check_input_file, check_output_dir, removed_if_failed

    set_ = list(set_) + ([f"device={device}"] if device else [])
    cfg, settings = load_study(check_input_file(config, "CONFIG"), set_)
    check_output_dir(cfg.output_dir, "output_dir")
    cfg.check_data()
    with removed_if_failed(cfg.output_dir):
        out = run_study(cfg, settings)
    rprint(f"[green]study[/green]: {out / (cfg.name + '.md')}")


@app.command()
def layers(
    model: str = typer.Option("smollm2-135m", callback=check_model_spec,
                              help="saved poolattn folder, backbone alias, local folder or hub id"),
    tasks: str = typer.Option("STSBenchmark", help="comma-separated task names to score every layer on"),
    output: str = typer.Option("runs/layers", help="folder for layers.json and the PNGs"),
    data: str = typer.Option(None, "--data", help=DATA_HELP),
    attention: str = typer.Option(None, help="causal | bidirectional (default: as saved, else causal)"),
    n_texts: int = typer.Option(1000, min=2, help="texts for the layer-similarity (CKA) heatmap"),
    dtype: str = typer.Option(None, callback=check_dtype, help=DTYPE_HELP),
    device: str = typer.Option("auto", callback=check_device, help=DEVICE_HELP),
):
    """Per-layer EOS and mean embeddings: layer x layer CKA heatmap (paper Fig. 1) and per-layer task scores (Fig. 2)."""
    from rich import print as rprint

    from .datadir import resolve_data_dir
    from .evaluation import resolve_tasks
    from .fileio import check_output_dir, removed_if_failed
    from .layers import analyze_layers

    data_dir = resolve_data_dir(data, "--data", required=True)  # its probe sentences come from the pack
    try:  # before the layer pass, as eval does
        names = resolve_tasks(tasks, data_dir)
    except (ValueError, OSError) as e:
        raise typer.BadParameter(str(e), param_hint="--tasks") from e
    check_output_dir(output)
    m = load_model_for_cli(model, attention, None, dtype, None, device)
    with removed_if_failed(output):
        result = analyze_layers(m, names, output, data_dir=data_dir, n_texts=n_texts)
    rprint(f"[green]layer analysis[/green] -> {result['files']}")


# --- serve command (poolattn/serve) ---
from .serve.cli import serve_command  # light: the server's libraries load when it runs

app.command("serve")(serve_command)

# --- export command (poolattn/export) ---
from .export.cli import export_command

app.command("export")(export_command)


def main() -> None:
    """The `poolattn` entry point: typer's app, except that a process which opened a process group (torchrun,
    accelerate launch) leaves through distributed.exit_process, so gloo cannot abort it after its work is done."""
    from . import distributed

    try:
        app()
    except SystemExit as e:
        if not distributed.opened_group():
            raise
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
        distributed.exit_process(code)


if __name__ == "__main__":
    main()
