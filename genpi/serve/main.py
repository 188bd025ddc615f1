"""The serving process: engine, router and poller in one process tree (what `genpi serve up` starts).

    python -m genpi.serve.main --config CONFIG --runs-dir RUNS --home HOME [--set serve.port=8700 ...]

The API key is read from the env var ``serve.api_key_env`` names. SIGTERM (``genpi serve down``) stops the
router, then the engine and its whole process group; the engine also dies with this process if it is killed.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM while the engine starts: stop it, leave nothing behind


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="genpi config YAML (its serve: and model: sections)")
    parser.add_argument("--set", action="append", default=[], help="override, e.g. serve.port=8701")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--home", default=".genpi/serve", help="logs and merged weights")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)

    import uvicorn

    from genpi.serve.engines import pick_engine
    from genpi.serve.router import Router
    from schemas.config import load_config

    cfg = load_config(args.config, args.set)
    key = os.environ.get(cfg.serve.api_key_env, "")
    home = Path(args.home)
    engine = pick_engine(cfg.serve)(cfg.serve, cfg.model.name_or_path, home)
    router = Router(cfg.serve, Path(args.runs_dir), engine, cfg.model.name_or_path, key)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        router.start()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # from here uvicorn handles it (graceful shutdown)
        server = uvicorn.Server(
            uvicorn.Config(router.app(), host=cfg.serve.host, port=cfg.serve.port, log_level="info", access_log=False)
        )
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        router.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
