"""`report.md` of a pipeline run: tables of the evaluation summary, PNG plots and sample responses."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from instructjax.tasks import TaskPrompt  # noqa: E402
from instructjax.train.metrics import read_metrics  # noqa: E402

LABELS = {"initial": "initial", "sft": "SFT", "ppo": "PPO"}


def _pct(rate: dict[str, Any]) -> str:
    return f"{100 * rate['value']:.1f}% [{100 * rate['low']:.1f}, {100 * rate['high']:.1f}]"


def _series(path: pathlib.Path, key: str) -> tuple[list[int], list[float]]:
    records = [r for r in read_metrics(path) if key in r] if path.exists() else []
    return [r["step"] for r in records], [r[key] for r in records]


def plot_ppo(root: pathlib.Path, out: pathlib.Path) -> None:
    """Mean RM score and KL to the SFT policy per PPO iteration."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, key, title in ((axes[0], "train/score", "reward-model score"), (axes[1], "train/kl", "KL to SFT (nats)")):
        ax.plot(*_series(root / "ppo" / "metrics.jsonl", key), marker=".")
        ax.set_xlabel("PPO iteration")
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_reward_model(root: pathlib.Path, out: pathlib.Path) -> None:
    """Pairwise accuracy of the reward model over training (train batches and held-out comparisons)."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for key, label in (("train/accuracy", "train batches"), ("eval/accuracy", "held-out")):
        steps, values = _series(root / "reward" / "metrics.jsonl", key)
        if steps:
            ax.plot(steps, values, marker=".", label=label)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("step")
    ax.set_ylabel("pairwise accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_pass_rates(summary: dict[str, Any], out: pathlib.Path) -> None:
    """Overall constraint pass rate of each model with its 95% interval."""
    names = list(summary["models"])
    rates = [summary["models"][n]["pass_rates"]["overall"] for n in names]
    values = [100 * r["value"] for r in rates]
    errors = [[100 * (r["value"] - r["low"]) for r in rates], [100 * (r["high"] - r["value"]) for r in rates]]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.bar([LABELS[n] for n in names], values, yerr=errors, capsize=6, color=["#999", "#4a90d9", "#d9534f"])
    ax.set_ylabel("prompts with every constraint met (%)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _cell(text: str, limit: int = 400) -> str:
    text = text if len(text) <= limit else text[:limit] + "…"
    return text.replace("|", "\\|").replace("\n", "<br>") or "(empty)"


def write_report(root: pathlib.Path, summary: dict[str, Any], prompts: Sequence[TaskPrompt],
                 responses: dict[str, list[str]], num_samples: int = 8) -> pathlib.Path:
    """Write ROOT/report.md and its plots (ROOT/report_*.png); returns the report's path."""
    plot_ppo(root, root / "report_ppo.png")
    plot_reward_model(root, root / "report_reward_model.png")
    plot_pass_rates(summary, root / "report_pass_rates.png")
    models = summary["models"]
    names = list(models)
    families = sorted({f for n in names for f in models[n]["pass_rates"]} - {"overall"})
    lines = [f"# InstructGPT pipeline report: `{root}`", "",
             f"{summary['num_test_prompts']} held-out test prompts (topics disjoint from training), greedy "
             "responses. Rates with 95% Wilson intervals; means with normal 95% half-widths.", "",
             "## Constraint pass rate", "",
             "| constraint | " + " | ".join(LABELS[n] for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for family in ["overall"] + families:
        cells = [_pct(models[n]["pass_rates"][family]) if family in models[n]["pass_rates"] else "-" for n in names]
        label = "**all constraints of the prompt**" if family == "overall" else family
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "![pass rates](report_pass_rates.png)", "", "## Policies", "",
              "| | " + " | ".join(LABELS[n] for n in names) + " |", "|---|" + "---|" * len(names)]
    lines.append("| reward-model score | " + " | ".join(
        f"{models[n]['reward'][0]:.3f} ± {models[n]['reward'][1]:.3f}" for n in names) + " |")
    lines.append("| response length (tokens) | " + " | ".join(f"{models[n]['length']:.1f}" for n in names) + " |")
    lines.append("| EOS rate | " + " | ".join(f"{100 * models[n]['eos_rate']:.1f}%" for n in names) + " |")
    kl_mean, kl_half = summary["kl_ppo_to_sft"]
    lines += ["", f"- Win rate of PPO against SFT (by the labeler, ties count half): "
                  f"{_pct(summary['win_rate_ppo_vs_sft'])}",
              f"- Win rate of SFT against the initial model: {_pct(summary['win_rate_sft_vs_initial'])}",
              f"- KL(PPO || SFT) per response, sampled: {kl_mean:.2f} ± {kl_half:.2f} nats", ""]
    reward = summary.get("reward_model", {})
    if reward:
        lines += ["## Reward model", "", f"Held-out pairwise accuracy: {100 * reward['accuracy']:.1f}% "
                  f"on {int(reward['pairs'])} pairs.", ""]
    lines += ["![reward model accuracy](report_reward_model.png)", "", "## PPO", "",
              "![PPO reward and KL](report_ppo.png)", "", "## Sample responses", "",
              "| prompt | " + " | ".join(LABELS[n] for n in names) + " |", "|---|" + "---|" * len(names)]
    for i, prompt in enumerate(prompts[:num_samples]):
        lines.append(f"| {_cell(prompt.prompt)} | " + " | ".join(_cell(responses[n][i]) for n in names) + " |")
    path = root / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
