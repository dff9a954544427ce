"""Load a petitions file into the service's store and index through the same code path as POST /v1/petitions.

    python -m xinfang.serving.bulk datasets/demo/petitions.jsonl [--data-dir DIR]

Ids already stored are skipped (idempotent: running it twice stores nothing new). Used by scripts/serve-demo.sh.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError

from xinfang.errors import XinfangError

log = logging.getLogger("xinfang.serving.bulk")


def _when(value) -> datetime | None:
    from xinfang.records import parse_time

    return parse_time(value) if value not in (None, "") else None


async def _load(svc, records: list[dict], concurrency: int = 16) -> dict[str, int]:
    from xinfang.serving import operations as ops
    from xinfang.serving.errors import ApiError
    from xinfang.serving.schemas import PetitionCreate

    counts = {"created": 0, "skipped": 0, "invalid": 0}
    sem = asyncio.Semaphore(concurrency)

    async def one(r: dict) -> None:
        try:
            req = PetitionCreate(id=str(r["id"]), title=r.get("title"), text=r.get("text") or r.get("title") or "",
                                 petitioner=(str(r["petitioner"]) if r.get("petitioner") not in (None, "") else None),
                                 received_at=_when(r.get("time") or r.get("received_at")),
                                 channel=r.get("channel"))
        except ValidationError as exc:
            counts["invalid"] += 1
            log.warning("row %s skipped: %s", r.get("_row"), exc.errors()[0].get("loc"))
            return
        async with sem:
            try:
                status, _ = await ops.create_petition(svc, req)
            except ApiError as exc:
                counts["skipped" if exc.status == 409 else "invalid"] += 1
                return
        counts["created" if status == 201 else "skipped"] += 1

    await asyncio.gather(*(one(r) for r in records))
    return counts


def main(argv: list[str] | None = None) -> int:
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see xinfang/commands/serve.py
    from xinfang.records import load_records
    from xinfang.serving.config import ServiceConfig
    from xinfang.serving.service import Service

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", type=Path)
    ap.add_argument("--data-dir", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        records = load_records(args.file)
        svc = Service(ServiceConfig.from_env(args.data_dir))
        t0 = time.perf_counter()
        svc.start()
        try:
            if svc.models is None:
                raise XinfangError(f"models not loaded: {svc.model_error}")
            counts = asyncio.run(_load(svc, records))
        finally:
            svc.stop()
    except XinfangError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.file}: {counts['created']} stored, {counts['skipped']} already there, {counts['invalid']} invalid "
          f"({time.perf_counter() - t0:.1f}s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
