"""Rank sampled completions by hand in the terminal; answers are appended as comparisons records.

    python experiments/label.py --samples=runs/demo/samples.jsonl --output=runs/demo/human.jsonl

Samples are JSONL records {"prompt", "completions"}. Rerunning the same command continues where
the last session stopped.
"""

from absl import app, flags

from instructjax.labelers import label_session

_SAMPLES = flags.DEFINE_string("samples", None, "JSONL file of samples {\"prompt\", \"completions\"} to rank")
_OUTPUT = flags.DEFINE_string("output", None, "comparisons JSONL file the answers are appended to")
flags.mark_flags_as_required(["samples", "output"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    label_session(_SAMPLES.value, _OUTPUT.value)


if __name__ == "__main__":
    app.run(main)
