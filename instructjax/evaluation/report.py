"""`report.md` of a pipeline run: tables of the evaluation summary, PNG plots and sample responses."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from instructjax.evaluation.elo import REFERENCE_RATING  # noqa: E402
from instructjax.tasks.instructions import TaskPrompt  # noqa: E402
from instructjax.train.metrics import read_metrics  # noqa: E402

LABELS = {"initial": "initial", "sft": "SFT", "ppo": "PPO", "ppo_ptx": "PPO-ptx", "grpo": "GRPO", "rloo": "RLOO",
          "dpo": "DPO"}
COLORS = {"initial": "#999", "sft": "#4a90d9", "ppo": "#d9534f", "ppo_ptx": "#5cb85c", "grpo": "#f0ad4e",
          "rloo": "#9b59b6", "dpo": "#16a085"}
OTHER_COLORS = ("#8c564b", "#e377c2", "#17becf", "#bcbd22")  # later rounds, compared policies


def _base_and_round(name: str) -> tuple[str, int]:
    """("grpo", 2) for "grpo_r2" (a later round's folder), (name, 1) otherwise."""
    base, sep, round_ = name.rpartition("_r")
    return (base, int(round_)) if sep and round_.isdigit() else (name, 1)


def label(name: str) -> str:
    """A policy's name in the report: "GRPO round 2" for "grpo_r2"; a compared policy's own name."""
    base, round_ = _base_and_round(name)
    return LABELS.get(base, base) + (f" round {round_}" if round_ > 1 else "")


def color(name: str) -> str:
    base, round_ = _base_and_round(name)
    return COLORS[base] if round_ == 1 and base in COLORS else OTHER_COLORS[(round_ + len(base)) % len(OTHER_COLORS)]


def _pct(rate: dict[str, Any]) -> str:
    return f"{100 * rate['value']:.1f}% [{100 * rate['low']:.1f}, {100 * rate['high']:.1f}]"


def _series(path: pathlib.Path, key: str) -> tuple[list[int], list[float]]:
    records = [r for r in read_metrics(path) if key in r] if path.exists() else []
    return [r["step"] for r in records], [r[key] for r in records]


def _rl_stages(root: pathlib.Path, names: Sequence[str]) -> list[str]:
    """The policies of `names` trained by the PPO trainer (their stage logged a validation curve)."""
    return [n for n in names if (root / n / "validation_start.json").exists()]


def plot_ppo(root: pathlib.Path, names: Sequence[str], out: pathlib.Path) -> None:
    """Mean RM score and KL to the starting policy per iteration of each RL run."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, key, title in ((axes[0], "train/score", "rollout reward (score)"),
                           (axes[1], "train/kl", "KL to the starting policy (nats)")):
        for stage in _rl_stages(root, names):
            ax.plot(*_series(root / stage / "metrics.jsonl", key), marker=".", label=label(stage), color=color(stage))
        ax.set_xlabel("iteration")
        ax.set_title(title)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def overoptimization_points(stage_dir: pathlib.Path) -> list[tuple[float, float, float]]:
    """(rollout KL to the starting policy, validation pass rate, validation RM score or NaN) of an RL stage's starting
    policy (KL 0, from `validation_start.json`) and at each evaluated iteration (`metrics.jsonl`)."""
    metrics_file, start_file = stage_dir / "metrics.jsonl", stage_dir / "validation_start.json"
    kl = dict(zip(*_series(metrics_file, "train/kl")))
    passed, scored = dict(zip(*_series(metrics_file, "eval/pass_rate"))), dict(zip(*_series(metrics_file,
                                                                                            "eval/reward_score")))
    points = [(kl[s], passed[s], scored.get(s, float("nan"))) for s in sorted(passed) if s in kl]
    if start_file.exists():
        start = json.loads(start_file.read_text())
        points.insert(0, (0.0, start["pass_rate"], start.get("reward_score", float("nan"))))
    return points


def plot_overoptimization(root: pathlib.Path, names: Sequence[str], out: pathlib.Path) -> None:
    """Gold (the checker's validation pass rate) and proxy (RM score) against KL to the starting policy
    (Gao et al. 2022)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for stage in _rl_stages(root, names):
        points = overoptimization_points(root / stage)
        kl = [p[0] for p in points]
        axes[0].plot(kl, [100 * p[1] for p in points], marker="o", label=label(stage), color=color(stage))
        axes[1].plot(kl, [p[2] for p in points], marker="o", label=label(stage), color=color(stage))
    for ax, title in ((axes[0], "gold: validation pass rate (%)"), (axes[1], "proxy: validation RM score")):
        ax.set_xlabel("KL to the starting policy (nats, rollout mean)")
        ax.set_title(title)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_reward_model(root: pathlib.Path, out: pathlib.Path) -> None:
    """Pairwise accuracy of the reward model over training (train batches and held-out comparisons)."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for key, name in (("train/accuracy", "train batches"), ("eval/accuracy", "held-out")):
        steps, values = _series(root / "reward" / "metrics.jsonl", key)
        if steps:
            ax.plot(steps, values, marker=".", label=name)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("step")
    ax.set_ylabel("pairwise accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_pass_rates(summary: dict[str, Any], out: pathlib.Path) -> None:
    """Overall pass rate of each model with its 95% interval, on the test and the held-out families."""
    names = list(summary["models"])
    splits = [s for s in ("test", "heldout") if s in summary["models"][names[0]]]
    fig, axes = plt.subplots(1, len(splits), figsize=(4.5 * len(splits), 3.2), squeeze=False)
    for ax, split in zip(axes[0], splits):
        rates = [summary["models"][n][split]["pass_rates"]["overall"] for n in names]
        values = [100 * r["value"] for r in rates]
        errors = [[100 * (r["value"] - r["low"]) for r in rates], [100 * (r["high"] - r["value"]) for r in rates]]
        ax.bar([label(n) for n in names], values, yerr=errors, capsize=6, color=[color(n) for n in names])
        ax.set_ylabel("prompts with every constraint met (%)")
        ax.set_title("trained families" if split == "test" else "held-out families")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_elo(elo: dict[str, Any], out: pathlib.Path) -> None:
    """Elo rating of each policy with its bootstrap 95% interval (`summary["elo"]`)."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for x, (name, r) in enumerate(elo["ratings"].items()):
        ax.errorbar([x], [r["rating"]], yerr=[[r["rating"] - r["low"]], [r["high"] - r["rating"]]], fmt="o",
                    capsize=6, color=color(name))
    ax.axhline(REFERENCE_RATING, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(elo["ratings"])), [label(n) for n in elo["ratings"]])
    ax.set_ylabel(f"Elo ({label(elo['reference'])} = {REFERENCE_RATING:.0f})")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _elo_table(elo: dict[str, Any]) -> list[str]:
    ranked = sorted(elo["ratings"].items(), key=lambda item: -item[1]["rating"])
    return ["| rank | policy | Elo | 95% interval | games |", "|---|---|---|---|---|",
            *(f"| {i + 1} | {label(name)} | {r['rating']:.0f} | [{r['low']:.0f}, {r['high']:.0f}] | {r['games']} |"
              for i, (name, r) in enumerate(ranked))]


def _cell(text: str, limit: int = 400) -> str:
    text = text if len(text) <= limit else text[:limit] + "…"
    return text.replace("|", "\\|").replace("\n", "<br>") or "(empty)"


def _pass_table(models: dict[str, Any], names: list[str], split: str) -> list[str]:
    families = sorted({f for n in names for f in models[n][split]["pass_rates"]} - {"overall"})
    lines = ["| constraint | " + " | ".join(label(n) for n in names) + " |", "|---|" + "---|" * len(names)]
    for family in ["overall"] + families:
        rates = [models[n][split]["pass_rates"].get(family) for n in names]
        row = "**all constraints of the prompt**" if family == "overall" else family
        lines.append(f"| {row} | " + " | ".join(_pct(r) if r else "-" for r in rates) + " |")
    return lines


def _paired_table(tests: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| comparison | pass-rate difference | prompts only the first passes | only the second | "
             "McNemar exact p |", "|---|---|---|---|---|"]
    for key, t in tests.items():
        a, b = key.split("_vs_")
        lines.append(f"| {label(a)} vs {label(b)} | {100 * t['difference']:+.1f} points | {t['ours_only']} | "
                     f"{t['theirs_only']} | {t['p_value']:.3g} |")
    return lines


def write_report(root: pathlib.Path, summary: dict[str, Any], prompts: Sequence[TaskPrompt],
                 responses: dict[str, list[str]], num_samples: int = 8) -> pathlib.Path:
    """Write ROOT/report.md and its plots (ROOT/report_*.png); returns the report's path."""
    models = summary["models"]
    names = list(models)
    plot_ppo(root, names, root / "report_ppo.png")
    plot_overoptimization(root, names, root / "report_overoptimization.png")
    plot_reward_model(root, root / "report_reward_model.png")
    plot_pass_rates(summary, root / "report_pass_rates.png")
    plot_elo(summary["elo"], root / "report_elo.png")
    lines = [f"# InstructGPT pipeline report: `{root}`", "",
             f"{summary['num_test_prompts']} held-out test prompts (topics disjoint from training), greedy "
             "responses. Rates with 95% Wilson intervals; means with normal 95% half-widths; paired differences "
             "with McNemar's exact test on the same prompts.", "",
             "## Constraint pass rate", "", *_pass_table(models, names, "test"), "",
             "![pass rates](report_pass_rates.png)", "", "Paired tests (every constraint met, same prompts):", "",
             *_paired_table(summary["paired_tests"]["test"]), "", "## Policies", "",
             "| | " + " | ".join(label(n) for n in names) + " |", "|---|" + "---|" * len(names)]
    lines.append("| reward-model score | " + " | ".join(
        f"{models[n]['test']['reward'][0]:.3f} ± {models[n]['test']['reward'][1]:.3f}" for n in names) + " |")
    lines.append("| response length (tokens) | " + " | ".join(
        f"{models[n]['test']['length']:.1f}" for n in names) + " |")
    lines.append("| EOS rate | " + " | ".join(f"{100 * models[n]['test']['eos_rate']:.1f}%" for n in names) + " |")
    lines.append("")
    for key, rate in summary["win_rates"].items():
        a, b = key.split("_vs_")
        lines.append(f"- Win rate of {label(a)} against {label(b)} (by the labeler, ties count half): {_pct(rate)}")
    for name, (mean, half) in summary["kl_to_sft"].items():
        lines.append(f"- KL({label(name)} || SFT) per response, sampled on {summary['num_kl_prompts']} test prompts: "
                     f"{mean:.2f} ± {half:.2f} nats")
    lines.append("")
    elo = summary["elo"]
    lines += ["## Elo ratings", "", f"Every pair of policies judged by the labeler on each of the {elo['prompts']} "
              "test prompts, ranked by a Bradley-Terry fit on the Elo scale (a tie counts half; virtual ties "
              f"added per pair of policies: {elo['prior_ties']:g}; {label(elo['reference'])} at "
              f"{REFERENCE_RATING:.0f}); 95% percentile intervals over {elo['bootstrap_samples']} resamples of the "
              "prompts.", "", *_elo_table(elo), "", "![Elo ratings](report_elo.png)", ""]
    if summary.get("num_heldout_prompts") or summary.get("num_heldout_texts"):
        lines += ["## Alignment tax", "", "What training costs outside the task: constraint families no training "
                  "stage saw (test topics), and perplexity on docstrings kept out of PPO-ptx's corpus "
                  "(Ouyang et al. 2022, section 3.5).", ""]
        if summary.get("num_heldout_prompts"):
            lines += [f"{summary['num_heldout_prompts']} prompts of the held-out families:", "",
                      *_pass_table(models, names, "heldout"), "", *_paired_table(summary["paired_tests"]["heldout"]),
                      ""]
        if summary.get("num_heldout_texts"):
            lines += [f"Perplexity on {summary['num_heldout_texts']} held-out docstrings:", "",
                      "| | " + " | ".join(label(n) for n in names) + " |", "|---|" + "---|" * len(names),
                      "| perplexity | " + " | ".join(f"{models[n]['perplexity']:.2f}" for n in names) + " |", ""]
    reward = summary.get("reward_model", {})
    if reward:
        lines += ["## Reward model", "", f"Held-out pairwise accuracy: {100 * reward['accuracy']:.1f}% "
                  f"on {int(reward['pairs'])} pairs.", ""]
        if reward.get("families"):
            lines += ["By the constraint families of the pair's prompt (a pair counts towards each family its "
                      "prompt has; 95% Wilson intervals):", "", "| family | pairs | accuracy |", "|---|---|---|",
                      *(f"| {family} | {rate['total']} | {_pct(rate)} |"
                        for family, rate in reward["families"].items()), ""]
    agreement = summary.get("reward_agreement", {})
    if agreement:
        lines += ["Agreement with the labeler on the evaluated policies' own test responses (every pair of policies "
                  "on each test prompt where the labeler prefers one response; an equal score counts half): "
                  f"{_pct(agreement['all'])} of {agreement['all']['total']} pairs.", ""]
        for key, rate in agreement.items():
            if key != "all":
                a, b = key.split("_vs_")
                lines.append(f"- {label(a)} against {label(b)}: {_pct(rate)} of {rate['total']} pairs")
        lines.append("")
    for name, later in summary.get("later_reward_models", {}).items():
        lines += [f"Reward model of round {name.rpartition('_r')[2]} (on the comparisons of every round so far): "
                  f"{100 * later['accuracy']:.1f}% on {int(later['pairs'])} held-out pairs.", ""]
    lines += ["![reward model accuracy](report_reward_model.png)", "", "## RL runs", "",
              "![RL reward and KL](report_ppo.png)", "",
              "Gold (the task's checker) and proxy (the reward model) on the validation prompts against KL to the "
              "starting policy along the runs of the PPO trainer (reward over-optimisation, Gao et al. 2022):", "",
              "![over-optimisation](report_overoptimization.png)", "", "## Sample responses", "",
              "| prompt | " + " | ".join(label(n) for n in names) + " |", "|---|" + "---|" * len(names)]
    for i, prompt in enumerate(prompts[:num_samples]):
        lines.append(f"| {_cell(prompt.prompt)} | " + " | ".join(_cell(responses[n][i]) for n in names) + " |")
    path = root / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
