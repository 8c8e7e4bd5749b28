"""`klq inspect`: a standalone run's token records rendered in the terminal (coloured by a quantity, with a
legend) or as plain text (not a TTY, --no-color), control characters escaped; errors name what exists."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from klq.inspect_tokens import colour_of, colour_scale, inspect_run
from klq.sinks import JSONLSink, SampleRecord, TokenRecord

ROOT = Path(__file__).resolve().parents[1]
PIECES = ["<script>", "\n", "\x1b[2J", " [a](http://x)", " fine"]
K1 = [0.0, 2.0, -1.0, 0.5, -2.0]
ENTROPY = [1.0, 3.0, 2.0, None, 0.5]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    sink = JSONLSink(tmp_path)
    record = TokenRecord([5, 6, 7, 8, 9], PIECES, {"logp": [-1.0] * 5, "k1": K1, "entropy": ENTROPY})
    other = TokenRecord(
        [1, 2], ["a", "b"], {"logp": [-0.5, -0.5], "k1": [0.25, -0.25], "entropy": [1.5, 1.5]}
    )
    sink.log_samples(
        3,
        [
            SampleRecord(
                3,
                "p1",
                "the prompt",
                "resp",
                0.5,
                0.0,
                gold_score=0.1,
                response_length=5,
                token_record=record,
            ),
            SampleRecord(3, "p2", "other", "ab", -0.5, 0.0, response_length=2, token_record=other),
            SampleRecord(
                3,
                "p0",
                "x",
                "y",
                0.0,
                0.0,
                kind="train",
                sample_index=4,
                response_length=2,
                token_record=other,
            ),
            SampleRecord(3, "p9", "no record", "z", 0.0, 0.0),
        ],
    )
    sink.close()
    return tmp_path


def test_plain_text_one_token_per_line_escaped(run_dir: Path) -> None:
    out = io.StringIO()
    inspect_run(run_dir, 3, "k1", colour=False, out=out)
    text = out.getvalue()
    assert "\x1b" not in text  # no escape reaches the terminal, not even the token's own
    assert "[0] step 3 eval  prompt p1  score +0.500  gold +0.100  KL 0.000  5 tokens" in text
    rows = [line.split() for line in text.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [r[0] for r in rows[:5]] == ["0", "1", "2", "3", "4"]
    assert [r[-1] for r in rows[:5]] == ["+0", "+2", "-1", "+0.5", "-2"]
    assert "<script>" in text and "\\n" in text and "\\x1b[2J" in text and "[a](http://x)" in text
    assert (
        "[1] step 3 eval  prompt p2" in text and "p9" not in text
    )  # a sample without a record is not listed


def test_colours_diverge_around_zero_for_k1_and_are_sequential_for_entropy(run_dir: Path) -> None:
    assert colour_scale("k1", K1) == (-2.0, 2.0)
    assert colour_of("k1", 0.0, (-2.0, 2.0)) == (247, 247, 247)  # white at 0
    assert colour_of("k1", 2.0, (-2.0, 2.0)) == (178, 24, 43)  # red at the top
    assert colour_of("k1", -2.0, (-2.0, 2.0)) == (33, 102, 172)  # blue at the bottom
    assert colour_scale("entropy", ENTROPY) == (0.5, 3.0)
    assert colour_of("entropy", 0.5, (0.5, 3.0)) == (247, 247, 247)
    assert colour_of("entropy", 3.0, (0.5, 3.0)) == (84, 39, 143)
    assert colour_of("entropy", None, (0.5, 3.0)) == (160, 160, 160)

    out = io.StringIO()
    inspect_run(run_dir, 3, "k1", sample=0, colour=True, out=out)
    text = out.getvalue()
    legend = text.splitlines()[0]
    assert legend.startswith("k1 (diverging, centred on 0): -2 ") and legend.endswith(" +2")
    response = next(line for line in text.splitlines() if line.startswith("response: "))
    assert "\x1b[48;2;247;247;247m\x1b[38;2;0;0;0m<script>\x1b[0m" in response
    assert "\x1b[48;2;178;24;43m\x1b[38;2;255;255;255m\\n\x1b[0m" in response
    assert "\x1b[48;2;33;102;172m" in response and "\\x1b[2J" in response and "\x1b[2J" not in response
    assert "[1]" not in text  # --sample 0: the one sample

    out = io.StringIO()
    inspect_run(run_dir, 3, "entropy", colour=True, out=out)
    assert out.getvalue().startswith("entropy (sequential): +0.5 ") and "missing: " in out.getvalue()


def test_errors_name_what_the_run_has(run_dir: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "klq.cli", "inspect", str(run_dir), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    ok = cli("--step", "3", "--kind", "train", "--quantity", "entropy")  # stdout is a pipe: plain text
    assert ok.returncode == 0, ok.stderr
    assert "[0] step 3 rollout 4  prompt p0" in ok.stdout and "\x1b" not in ok.stdout
    missing = cli("--step", "4")
    assert missing.returncode == 2 and "steps that have them: 3" in missing.stderr
    unknown = cli("--step", "3", "--quantity", "q")
    assert unknown.returncode == 2 and "they have: logp, k1, entropy" in unknown.stderr
    beyond = cli("--step", "3", "--sample", "2")
    assert beyond.returncode == 2 and "step 3 has 2 eval samples (0..1)" in beyond.stderr
