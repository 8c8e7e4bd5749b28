"""Where a training run reports to. The trainer knows only the `Sink` interface; the CLI uses the JSONL
sink below, the worker a sink that writes to SQL through the backend's data-access layer."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol


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
    """metrics.jsonl, samples.jsonl and checkpoints.jsonl in a run's output directory, and provenance.json
    (klq.provenance: the code, library versions, device and host of the latest start).

    On resume from step S, records past S (written after the checkpoint, before the interruption) are
    dropped first, so every step appears exactly once.
    """

    FILES = ("metrics.jsonl", "samples.jsonl", "checkpoints.jsonl")
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
            self._write("samples.jsonl", asdict(sample))

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
