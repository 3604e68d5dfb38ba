"""How often a random conclusion is right on reasoning-gym's propositional logic, with its own 2-4 premises and with
the study task's 1-2 (`trl_shaped.tasks.reasoning_gym.DEFAULT_CONFIGS`): the floor a model reaches without learning
anything about entailment.

    python benchmarks/logic_random_conclusions.py

For 300 problems of each configuration (seed 5), 10 random well-formed conclusions of depth 2 over the problem's
variables (reasoning-gym's own generator, simplified as its example answers are) are scored by the puzzle's verifier;
a conclusion is right when it scores 1.0 (entailed, not a bare variable or a tautology).
"""

import random

import reasoning_gym


def right_fraction(config: dict, problems: int = 300, candidates: int = 10) -> float:
    data = reasoning_gym.create_dataset("propositional_logic", size=problems, seed=5, **config)
    rng, right = random.Random(0), 0
    for index in range(problems):
        entry = data[index]
        for _ in range(candidates):
            conclusion = data._generate_expression(rng, entry["metadata"]["variables"], 2).simplify()
            right += data.score_answer(str(conclusion), entry) == 1.0
    return right / (problems * candidates)


if __name__ == "__main__":
    for config in ({}, {"min_statements": 1, "max_statements": 2}):
        print(f"{config or 'reasoning-gym default'}: {right_fraction(config):.3f} of random conclusions right")
