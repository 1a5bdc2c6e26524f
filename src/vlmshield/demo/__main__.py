"""``python -m vlmshield.demo``: build the demo VLM checkpoint now (once; later calls return at once)
and print its folder. ``make setup`` runs it, so that the first ``vlmshield eval`` does not wait for
the build (about a minute on 2 cores: de-quantizing the GGUF file dominates).

Example:
    $ python -m vlmshield.demo
    /home/me/.cache/vlmshield/demo/v2-3f1c0a9e4b21
"""

from __future__ import annotations

import sys

from vlmshield.errors import VlmshieldError


def main() -> int:
    from vlmshield.demo import demo_checkpoint

    try:
        print(demo_checkpoint())
    except VlmshieldError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
