"""``vlmshield serve``: a defended OpenAI-compatible endpoint over a local model.

Example:
    $ vlmshield serve --model demo --defense coca:alpha=1 --defense ecso --api-key-file keys.txt
    # model ids: demo:coca, demo:ecso (and demo itself with --allow-undefended)
"""

from __future__ import annotations

from pathlib import Path

import typer

from vlmshield.cli.common import DeviceOpt, DtypeOpt, ModelOpt


def serve_cmd(
    model: str = ModelOpt,
    defense: list[str] = typer.Option(
        [],
        "--defense",
        "-d",
        help="[NAME=]SPEC, repeatable: serve model id MODEL:NAME through this defense "
        "(e.g. coca:alpha=1, strict=coca:alpha=4, ecso, cmrm:vectors=v.safetensors).",
    ),
    allow_undefended: bool = typer.Option(
        False, "--allow-undefended", help="Also serve the undefended model under MODEL itself."
    ),
    allow_param: list[str] = typer.Option(
        [],
        "--allow-param",
        help="NAME.KEY, repeatable: a defense argument clients may set per request "
        '(extra_body={"vlmshield": {"defense_params": {KEY: ...}}}).',
    ),
    expose_details: bool = typer.Option(
        False,
        "--expose-details",
        help="Let clients ask for the defense's intermediates (ECSO flag, caption...).",
    ),
    served_model_name: str | None = typer.Option(
        None, "--served-model-name", help="The model id clients use (default: --model as given)."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (beyond loopback needs keys)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    api_key_file: Path | None = typer.Option(
        None, "--api-key-file", help="File with one API key per line (also: $VLMSHIELD_API_KEY)."
    ),
    insecure: bool = typer.Option(False, "--insecure", help="Allow a non-loopback --host without API keys."),
    max_batch_size: int = typer.Option(8, "--max-batch-size", help="Requests per batched generate."),
    batch_wait_ms: float = typer.Option(5.0, "--batch-wait-ms", help="How long a batch waits for company."),
    max_queue: int = typer.Option(64, "--max-queue", help="Waiting requests; beyond: 429 with Retry-After."),
    request_timeout: float = typer.Option(
        300.0, "--request-timeout", help="Seconds per request (wait + run)."
    ),
    max_images: int = typer.Option(4, "--max-images", help="Images per request."),
    max_prompt_tokens: int = typer.Option(
        4096, "--max-prompt-tokens", help="Prompt tokens, images included."
    ),
    max_new_tokens: int = typer.Option(
        1024, "--max-new-tokens", help="Highest max_tokens a request may ask."
    ),
    default_max_tokens: int = typer.Option(256, "--default-max-tokens", help="max_tokens when none is sent."),
    max_body_mb: float = typer.Option(20.0, "--max-body-mb", help="Request body size limit (MiB)."),
    warmup: bool = typer.Option(True, "--warmup/--no-warmup", help="One tiny request per model id at start."),
    no_access_log: bool = typer.Option(False, "--no-access-log", help="No JSON access-log lines on stderr."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn's log level."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
) -> None:
    """Serve MODEL at http://HOST:PORT/v1 (OpenAI chat completions, one model id per defense)."""
    from vlmshield.errors import UserInputError
    from vlmshield.serve.settings import (
        DeploymentSpec,
        ServeSettings,
        check_bind,
        load_api_keys,
        parse_allow_params,
        parse_deployment,
        validated,
    )

    keys = load_api_keys(api_key_file)
    settings = validated(
        ServeSettings,
        "server settings",
        max_batch_size=max_batch_size,
        batch_wait_s=batch_wait_ms / 1000.0,
        max_queue=max_queue,
        request_timeout_s=request_timeout,
        max_images=max_images,
        max_prompt_tokens=max_prompt_tokens,
        max_new_tokens=max_new_tokens,
        default_max_tokens=default_max_tokens,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        expose_details=expose_details,
        api_keys=keys,
        access_log=not no_access_log,
    )
    check_bind(host, has_keys=bool(keys), insecure=insecure)
    params = parse_allow_params(allow_param)
    parsed = [parse_deployment(d) for d in defense]
    for name, keys_ in params.items():
        if name not in {p.name for p in parsed}:
            raise UserInputError(f"--allow-param {name}.{keys_[0]}: no --defense is named {name!r}")
    specs = [
        validated(
            DeploymentSpec,
            f"--allow-param for {p.name!r}",
            name=p.name,
            defense=p.defense,
            allow_params=tuple(params.get(p.name, ())),
        )
        for p in parsed
    ]
    model_id = served_model_name or model
    from vlmshield.serve.deployments import build_deployments

    build_deployments(model_id, specs, allow_undefended=allow_undefended)  # fail before loading the model

    from vlmshield.models import load_vlm
    from vlmshield.serve.server import serve

    vlm = load_vlm(model, device=device, dtype=dtype)
    if warmup:
        from vlmshield.serve.deployments import warm_up

        warm_up(vlm, build_deployments(model_id, specs, allow_undefended=allow_undefended))
    serve(
        vlm,
        host=host,
        port=port,
        model_name=model_id,
        settings=settings,
        defenses=specs,
        allow_undefended=allow_undefended,
        insecure=insecure,
        log_level=log_level,
    )


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)
