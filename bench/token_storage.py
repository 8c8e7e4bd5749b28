"""Storage per recorded sample (issue 14): the token records of a real run on the CPU bench shape
(gpt2-tiny, bench/tiny_assets.py: 16-token prompts, up to 48-token responses), written through the store
(store.write_samples, as the worker's sink writes them) into SQLite and PostgreSQL.

    python bench/token_storage.py [--copies 50] [--pg-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

Reports, per sample: the packed columns (token ids, quantities as float32, token texts and names as JSON),
the JSONL bytes of a standalone run (sample_tokens.jsonl), and the database's growth: SQLite file size
(after a WAL checkpoint) and PostgreSQL's pg_total_relation_size of samples + sample_tokens, each over
`--copies` copies of the run's records (different steps), divided by the number of samples written.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import machine  # noqa: E402
from metrics_store import PostgresDatabase, _pg_reachable  # noqa: E402


def records(run_dir: Path) -> list[dict]:
    """The run's samples with their token records, as store.write_samples takes them."""
    tokens = {
        (r["kind"], r["step"], r["prompt_id"], r["sample_index"]): r
        for r in map(json.loads, (run_dir / "sample_tokens.jsonl").read_text().splitlines())
    }
    out = []
    for s in map(json.loads, (run_dir / "samples.jsonl").read_text().splitlines()):
        t = tokens[(s["kind"], s["step"], s["prompt_id"], s["sample_index"])]
        out.append({**s, "tokens": {k: t[k] for k in ("token_ids", "tokens", "quantities")}})
    return out


def fill(url: str, samples: list[dict], copies: int) -> int:
    """Write `copies` copies of `samples` (steps shifted) to a fresh database at `url`; returns the count."""
    from backend import store
    from backend.db import Database
    from backend.migrate import upgrade

    upgrade(url)
    db = Database(url)
    with db.write_session() as s:
        run_id = store.create_run(s, {"name": "token-storage"}).id
    n = 0
    for copy in range(copies):
        shifted = [{**x, "step": x["step"] + 1000 * (copy + 1)} for x in samples]
        with db.write_session() as s:
            n += store.write_samples(s, run_id, shifted)
    db.dispose()
    return n


def sqlite_bytes(path: Path) -> int:
    import sqlite3

    with sqlite3.connect(path) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path.stat().st_size


def pg_bytes(url: str) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.connect() as c:
        size = c.exec_driver_sql(
            "SELECT pg_total_relation_size('samples') + pg_total_relation_size('sample_tokens')"
        ).scalar()
    engine.dispose()
    return int(size)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--copies", type=int, default=50)
    p.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    a = p.parse_args()

    import tiny_assets

    from backend.store.samples import pack_tokens
    from klq.config import RunConfig
    from klq.trainer import train

    shape = tiny_assets.SHAPES["gpt2-tiny"]
    assets = tiny_assets.build(HERE / ".cache", "gpt2-tiny")
    with tempfile.TemporaryDirectory(prefix="klq-token-storage-") as tmp:
        tmp = Path(tmp)
        cfg = RunConfig.model_validate(
            {
                "algorithm": "ppo",
                "seed": 0,
                "eval_interval": 1,
                "checkpoint_interval": 10**6,
                "device": "cpu",
                "task": {
                    "name": "prompts",
                    "dataset": str(assets / "prompts.jsonl"),
                    "max_prompt_length": shape["prompt_len"],
                    "num_eval_prompts": 16,
                },
                "model": {
                    "policy": str(assets / "policy"),
                    "reward": str(assets / "reward"),
                    "value_init": "reward",
                },
                "rollout": {"response_length": shape["response_len"], "temperature": 0.7},
                "train": {
                    "total_episodes": 32,
                    "batch_size": 16,
                    "minibatch_size": 16,
                    "micro_batch_size": 16,
                    "num_epochs": 1,
                    "learning_rate": 3e-6,
                },
                "capture": {"train_rollouts": 8},
            }
        )
        train(cfg, tmp / "run")
        samples = records(tmp / "run")
        jsonl = (tmp / "run" / "sample_tokens.jsonl").stat().st_size
        tokens = sum(len(s["tokens"]["token_ids"]) for s in samples)
        packed = [pack_tokens(s["tokens"]) for s in samples]
        packed_bytes = sum(
            len(x["token_ids"])
            + len(x["quantities"])
            + len(json.dumps(x["tokens"]))
            + len(json.dumps(x["names"]))
            for x in packed
        )
        print(f"# token_storage  {machine()}")
        print(
            f"PPO on gpt2-tiny: {len(samples)} samples with token records (8 training rollouts per iteration "
            f"and 16 eval samples per eval, 2 iterations), {tokens / len(samples):.1f} tokens per sample, "
            f"{len(samples[0]['tokens']['quantities'])} quantities (PPO's)"
        )
        print(
            f"packed columns:            {packed_bytes / len(samples):8.0f} bytes per sample "
            f"({packed_bytes / tokens:.1f} per token)"
        )
        print(f"JSONL (sample_tokens.jsonl): {jsonl / len(samples):6.0f} bytes per sample")
        empty = tmp / "empty.db"
        fill(f"sqlite:///{empty}", [], 1)
        base = sqlite_bytes(empty)
        db = tmp / "klq.db"
        n = fill(f"sqlite:///{db}", samples, a.copies)
        print(
            f"SQLite growth:             {(sqlite_bytes(db) - base) / n:8.0f} bytes per sample (samples row "
            f"+ token record, {n} samples)"
        )
        if _pg_reachable(a.pg_url):
            with PostgresDatabase(a.pg_url) as url:
                n = fill(url, samples, a.copies)
                print(
                    f"PostgreSQL tables:         {pg_bytes(url) / n:8.0f} bytes per sample (samples + "
                    f"sample_tokens with indexes and TOAST, {n} samples)"
                )


if __name__ == "__main__":
    main()
