"""The default task of the pipeline: everyday requests with verifiable constraints (IFEval-style),
a quality score for the labeler, and an offline pretraining-text corpus.

    prompts = ij.tasks.make_prompts("train", 256, seed=0)
    ok = [c.check(response) for c in prompts[0].constraints]
"""

from instructjax.tasks.constraints import FAMILIES, constraints_of_prompt
from instructjax.tasks.instructions import make_prompts

__all__ = ["FAMILIES", "constraints_of_prompt", "make_prompts"]
