"""``vlmshield eval``: compare defenses on benchmarks (resumable), then print the summary and report path.

Data parallel: start the same command on every rank with ``torchrun`` or ``accelerate launch``; a
remote engine: ``--model openai:MODEL --base-url URL``. See docs/evaluation.md and docs/scale.md.

Example:
    $ vlmshield eval --model ckpt/tiny-llava --benchmark mini --limit 16
    $ vlmshield eval -m llava-hf/llava-1.5-7b-hf --tasks mini,figstep@data/figstep \\
        --defense coca:alpha=1.5 --defense ecso --judge keyword --output-dir runs/llava
    $ torchrun --nproc-per-node 8 $(which vlmshield) eval -m llava-hf/llava-1.5-7b-hf -o runs/llava
    $ vlmshield eval -m openai:llava --base-url http://10.0.0.5:8000/v1 -d none -d ecso --concurrency 64
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import typer

from vlmshield.cli.common import DEFAULT_MODEL, DeviceOpt, DtypeOpt, print_json


def _command(**opts: Any) -> str:
    """The canonical command line of this invocation (recorded in the manifest)."""
    argv = ["vlmshield", "eval"]
    for key, value in opts.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False or value == []:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, list):
            for v in value:
                argv += [flag, str(v)]
        else:
            argv += [flag, str(value)]
    return shlex.join(argv)


def eval_cmd(
    model: str = typer.Option(
        DEFAULT_MODEL,
        "--model",
        "-m",
        help="Checkpoint directory, hub id, or 'demo' (the built-in demo VLM).",
    ),
    benchmark: list[str] = typer.Option(
        ["mini"],
        "--benchmark",
        "--tasks",
        "-b",
        help="NAME[:VARIANT][@PATH], comma-separated or repeated (e.g. mini, mini:text, jsonl@my.jsonl).",
    ),
    defense: list[str] = typer.Option(
        [],
        "--defense",
        "-d",
        help="name:key=value,... ; repeat to compare several. Default: none, coca, ecso, cmrm:level=sample. "
        "The undefended baseline 'none' is always included.",
    ),
    judge: list[str] = typer.Option(
        [], "--judge", "-j", help="Judge spec (default keyword); repeat for several (the first is primary)."
    ),
    limit: int | None = typer.Option(
        None, "--limit", "-l", min=1, help="At most N samples per benchmark (seeded, stratified by label)."
    ),
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        "--batch_size",
        min=1,
        help="Rows per batch (default 16; 32 for the demo model).",
    ),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", "--max_new_tokens", min=1),
    output_dir: Path | None = typer.Option(
        None,
        "--output-dir",
        "--output_path",
        "-o",
        help="Run folder (default runs/<model>__<benchmarks>__<settings hash>); re-running resumes it.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the --limit subset and the bootstrap."),
    variant: str | None = typer.Option(
        None, "--variant", help="Benchmark variant when not given as NAME:VARIANT."
    ),
    revision: str | None = typer.Option(None, "--revision", help="Hub revision of the model."),
    retry_errors: bool = typer.Option(False, "--retry-errors", help="Run failed samples and verdicts again."),
    skip_bad: bool = typer.Option(
        False,
        "--skip-bad",
        help="Go on without benchmark files that cannot be read (truncated, corrupt); their samples are "
        "counted as lost in the note, the manifest and the report. Bad rows are always skipped and counted.",
    ),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON instead of a table."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    order: str | None = typer.Option(
        None,
        "--order",
        help="Batch order: length (prompts of similar length together: less padding; the default of a "
        "new run) or dataset. A resumed run keeps its recorded order.",
    ),
    base_url: str | None = typer.Option(
        None, "--base-url", help="Endpoint of --model openai:MODEL (default env VLMSHIELD_OPENAI_BASE_URL)."
    ),
    concurrency: int = typer.Option(
        16, "--concurrency", min=1, help="Requests in flight to a remote model (total over the ranks)."
    ),
    rate_limit: float | None = typer.Option(
        None, "--rate-limit", min=0.001, help="Requests per second to a remote model (total over the ranks)."
    ),
    judge_concurrency: int | None = typer.Option(
        None,
        "--judge-concurrency",
        min=1,
        help="Requests in flight per API judge (default 8; total over the ranks).",
    ),
    judge_rate_limit: float | None = typer.Option(
        None,
        "--judge-rate-limit",
        min=0.001,
        help="Requests per second per API judge (total over the ranks).",
    ),
    device_map: str | None = typer.Option(
        None,
        "--device-map",
        help="Shard the model over GPUs: auto, balanced, balanced_low_0, sequential or a JSON file.",
    ),
    max_memory: str | None = typer.Option(
        None,
        "--max-memory",
        help="With --device-map: SIZE per GPU, or N=SIZE,...,cpu=SIZE (e.g. 0=20GiB,cpu=64GiB).",
    ),
    gpus_per_rank: int | None = typer.Option(
        None,
        "--gpus-per-rank",
        min=1,
        help="GPUs of each data-parallel rank (local rank r uses GPUs r*K..r*K+K-1 through --device-map auto).",
    ),
    offload_folder: Path | None = typer.Option(
        None, "--offload-folder", help="With --device-map: where weights placed on 'disk' go."
    ),
    dist_timeout: float = typer.Option(
        10800.0, "--dist-timeout", min=1.0, help="Seconds a rank waits for the others before failing."
    ),
) -> None:
    """Run every defense on the same samples in the same order, judge the answers, write a report.

    Results go to an SQLite file in the run folder as they are produced; re-running the same command
    resumes where it stopped. See docs/evaluation.md.
    """
    from vlmshield.errors import VlmshieldError
    from vlmshield.eval.distributed import RankFailed, launched_rank
    from vlmshield.eval.plan import EvalConfig, default_batch_size
    from vlmshield.eval.runner import run_eval
    from vlmshield.eval.scale import scale_options

    if order is not None and order not in ("length", "dataset"):
        raise typer.BadParameter(f"{order!r} is not one of length, dataset", param_hint="--order")
    scale = scale_options(
        order=order,
        base_url=base_url,
        concurrency=concurrency,
        rate_limit=rate_limit,
        judge_concurrency=judge_concurrency,
        judge_rate_limit=judge_rate_limit,
        device_map=device_map,
        max_memory=max_memory,
        gpus_per_rank=gpus_per_rank,
        offload_folder=str(offload_folder) if offload_folder else None,
        dist_timeout_s=dist_timeout,
    )
    config = EvalConfig(
        model=model,
        benchmarks=list(benchmark),
        defenses=list(defense),
        judges=list(judge),
        limit=limit,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        output_dir=output_dir,
        seed=seed,
        variant=variant,
        device=device,
        dtype=dtype,
        revision=revision,
        retry_errors=retry_errors,
        skip_bad=skip_bad,
        scale=scale,
        command=_command(
            model=model,
            benchmark=list(benchmark),
            defense=list(defense),
            judge=list(judge),
            limit=limit,
            batch_size=batch_size if batch_size is not None else default_batch_size(model),
            max_new_tokens=max_new_tokens,
            output_dir=str(output_dir) if output_dir else None,
            seed=seed,
            variant=variant,
            revision=revision,
            skip_bad=skip_bad,
            device=device,
            dtype=dtype,
            order=order,
            base_url=base_url,
            device_map=device_map,
            max_memory=max_memory,
            gpus_per_rank=gpus_per_rank,
        ),
    )
    rank = launched_rank()
    try:
        result = run_eval(config, progress=not no_progress and not as_json)
    except VlmshieldError as e:
        if rank != 0 and not isinstance(e, RankFailed):
            raise SystemExit(2) from None  # the same error: rank 0 prints it once for the run
        raise
    if rank != 0:
        return  # rank 0 prints the summary of the whole run
    if as_json:
        print_json({**result.summary, "report": str(result.report_path) if result.report_path else None})
        return
    print_summary(result.summary)
    typer.echo(f"results: {result.output_dir}")
    if result.report_path is not None:
        typer.echo(f"report: {result.report_path}")


def print_summary(summary: dict[str, Any]) -> None:
    """The summary table (rich) on stdout."""
    from rich.console import Console
    from rich.table import Table

    from vlmshield.eval.report import summary_rows

    head, *rows = summary_rows(summary)
    table = Table(title=f"judge: {summary.get('judge')}; {summary['samples']} samples", title_justify="left")
    for i, h in enumerate(head):
        table.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*r)
    Console(width=160).print(table)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
