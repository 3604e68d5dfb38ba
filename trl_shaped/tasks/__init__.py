"""The study's tasks: each builds its stage-1 corpus, RL prompts and test problems from seeds and names its judge.

base.py            StudyTask (the interface), get_task (a task from its name), TASKS
arithmetic.py      ArithmeticTask: signed sums worked out step by step (judge: exact)
code.py            CodeTask: one-line Python functions from a specification, hidden tests run in the sandbox (judge: code)
fill_sum.py        FillSumTask: fill the blanks of a sum (17+?+?+?=43), a free skewed choice at almost every step
                   (judge: trl_shaped.tasks.fill_sum:fill_sum_reward)
reasoning_gym.py   ReasoningGymTask: any reasoning-gym puzzle, propositional logic by default (judge: reasoning_gym)
"""

from .arithmetic import ArithmeticTask
from .base import TASKS, StudyTask, check_disjoint, get_task
from .fill_sum import FillSumTask
