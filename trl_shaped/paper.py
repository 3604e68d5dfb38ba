"""The paper this package implements, as TRL's trainers describe theirs (`_paper`: title, arXiv id, BibTeX).

Both trainers put it in their model cards.
"""

PAPER = {
    "title": "Diversity or Precision? A Deep Dive into Next Token Prediction",
    "id": "2512.22955",
    "citation": """\
@article{wu2025diversity,
    title   = {{Diversity or Precision? A Deep Dive into Next Token Prediction}},
    author  = {Haoyuan Wu and Hai Wang and Jiajia Wu and Jinxiang Ou and Keyao Wang and Weile Chen and Zihao Zheng
               and Bei Yu},
    year    = 2025,
    journal = {arXiv preprint arXiv:2512.22955}
}""",
}
