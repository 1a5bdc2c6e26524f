"""``vlmshield calibrate cmrm``: dataset-level CMRM steering vectors from an anchor set."""

from __future__ import annotations

from pathlib import Path

import typer

from vlmshield.cli.common import DeviceOpt, DtypeOpt, ModelOpt, print_json

calibrate_app = typer.Typer(
    help="Calibrate defenses that need it (CMRM steering vectors).", no_args_is_help=True
)


@calibrate_app.command("cmrm")
def cmrm(
    anchor: str = typer.Option(
        ...,
        "--anchor",
        "-a",
        help='A JSONL file ({"image": PATH, "query": TEXT} per line) or a benchmark name.',
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the .safetensors artifact."),
    model: str = ModelOpt,
    corruption: str = typer.Option("blank", "--corruption", help="blank or noise."),
    aggregator: str = typer.Option("mean", "--aggregator", help="mean or pca."),
    mode: str = typer.Option(
        "sequential", "--mode", help="sequential (default), increments or compounding (see docs/defenses.md)."
    ),
    positions: str = typer.Option(
        "all", "--positions", help="Positions the defense will steer: all, last_and_generated or generated."
    ),
    layers: str = typer.Option("all", "--layers", help="Decoder layers: all, a:b or i;j;k."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Use only the first N anchors."),
    seed: int = typer.Option(0, "--seed"),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
) -> None:
    """Estimate v_l = h_l(text only) - h_l(corrupted image) over ANCHOR and save it to OUT."""
    from vlmshield.defenses.cmrm import calibrate_cmrm, load_anchor_conversations, parse_layers
    from vlmshield.defenses.cmrm_vectors import MODES
    from vlmshield.defenses.steering import POSITIONS
    from vlmshield.errors import UserInputError
    from vlmshield.models import load_vlm

    if corruption not in ("blank", "noise"):
        raise UserInputError(f"unknown corruption {corruption!r}; use blank or noise")
    if aggregator not in ("mean", "pca"):
        raise UserInputError(f"unknown aggregator {aggregator!r}; use mean or pca")
    if mode not in MODES:
        raise UserInputError(f"unknown mode {mode!r}; use {', '.join(MODES)}")
    if positions not in POSITIONS:
        raise UserInputError(f"unknown positions {positions!r}; use {', '.join(POSITIONS)}")
    if out.suffix != ".safetensors":
        raise UserInputError(f"--out must end in .safetensors (got {out.name})")
    anchors = load_anchor_conversations(anchor, limit=limit)
    vlm = load_vlm(model, device=device, dtype=dtype)
    vectors = calibrate_cmrm(
        vlm,
        anchors,
        corruption=corruption,  # type: ignore[arg-type]
        aggregator=aggregator,  # type: ignore[arg-type]
        mode=mode,  # type: ignore[arg-type]
        positions=positions,  # type: ignore[arg-type]
        layers=parse_layers(layers, vlm.num_layers),
        batch_size=batch_size,
        seed=seed,
        progress=True,
    )
    path = vectors.save(out)
    print_json({"out": str(path), "layers": len(vectors.layers), **vectors.metadata})


def register(app: typer.Typer) -> None:
    app.add_typer(calibrate_app, name="calibrate")
