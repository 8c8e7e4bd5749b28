"""Where a training run reports to. The trainer knows only the `Sink` interface; the CLI uses the JSONL
sink below, the worker a sink that writes to SQL through the backend's data-access layer."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass
class TokenRecord:
    """A sample's response token by token (T = its response length, up to and including the stop token)."""

    token_ids: list[int]  # (T,)
    tokens: list[str]  # (T,) each token's text piece, decoded alone
    quantities: dict[
        str, list[float]
    ]  # name -> (T,): logp, logp_ref, k1, k3, entropy, value, the algorithm's


@dataclass
class SampleRecord:
    step: int
    prompt_id: str
    prompt: str
    response: str
    score: float
    kl: float
    gold_score: float | None = None
    stopped_by: str | None = None  # "eos", the stop sequence (removed from `response`), or "length"
    kind: str = "eval"  # "eval": a held-out sample; "train": a training rollout of iteration `step`
    sample_index: int = 0  # "train": the rollout's row in its iteration's batch; "eval": 0
    response_length: int | None = None  # response tokens, the stop token included
    token_record: TokenRecord | None = None  # per-token quantities (written apart: sample_tokens.jsonl)

    @property
    def key(self) -> tuple[str, int, str, int]:
        """What identifies a sample within a run: (kind, step, prompt_id, sample_index)."""
        return self.kind, self.step, self.prompt_id, self.sample_index


class Sink(Protocol):
    def log_metrics(self, step: int, metrics: dict[str, float]) -> None: ...

    def log_samples(self, step: int, samples: list[SampleRecord]) -> None: ...

    def log_checkpoint(self, step: int, path: str, final: bool) -> None: ...

    def log_provenance(self, provenance: dict[str, Any]) -> None:
        """Record klq.provenance.collect() of the process that (re)starts the run: the latest start's wins."""
        ...

    def should_stop(self) -> bool:
        """Polled at every iteration boundary: True stops the run cleanly (a user's cancel)."""
        ...

    def check_owner(self) -> None:
        """Raise if this process may no longer write the run's files (a worker whose lease was taken over);
        called just before a checkpoint replaces anything on disk."""
        ...

    def close(self) -> None: ...


class JSONLSink:
    """metrics.jsonl, samples.jsonl, sample_tokens.jsonl and checkpoints.jsonl in a run's output directory,
    and provenance.json (klq.provenance: the code, library versions, device and host of the latest start).
    A sample's token record goes to sample_tokens.jsonl, one line per sample, keyed like the sample by
    kind, step, prompt_id and sample_index (samples.jsonl stays light for the tools that read it).

    On resume from step S, records past S (written after the checkpoint, before the interruption) are
    dropped first, so every step appears exactly once.
    """

    FILES = ("metrics.jsonl", "samples.jsonl", "sample_tokens.jsonl", "checkpoints.jsonl")
    PROVENANCE = "provenance.json"

    def __init__(self, out_dir: str | Path, resume_step: int | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            for name in self.FILES:
                self._drop_after(self.out_dir / name, resume_step)
        self._files = {name: open(self.out_dir / name, "a", encoding="utf-8") for name in self.FILES}  # noqa: SIM115

    @staticmethod
    def _drop_after(path: Path, step: int) -> None:
        if not path.exists():
            return
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))

    def _write(self, name: str, record: dict) -> None:
        self._files[name].write(json.dumps(record) + "\n")
        self._files[name].flush()

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self._write("metrics.jsonl", {"step": step, **metrics})

    def log_samples(self, step: int, samples: list[SampleRecord]) -> None:
        for sample in samples:
            record = asdict(sample)
            tokens = record.pop("token_record")
            self._write("samples.jsonl", record)
            if tokens is not None:
                key = dict(zip(("kind", "step", "prompt_id", "sample_index"), sample.key, strict=True))
                self._write("sample_tokens.jsonl", {**key, **tokens})

    def log_checkpoint(self, step: int, path: str, final: bool) -> None:
        self._write("checkpoints.jsonl", {"step": step, "path": path, "final": final})

    def log_provenance(self, provenance: dict[str, Any]) -> None:
        (self.out_dir / self.PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")

    def should_stop(self) -> bool:
        return (self.out_dir / "STOP").exists()

    def check_owner(self) -> None:  # a standalone run has one owner: this process
        pass

    def close(self) -> None:
        for f in self._files.values():
            f.close()


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]
