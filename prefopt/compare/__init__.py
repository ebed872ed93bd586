"""prefopt-compare: objectives side by side on the built-in task's reward–KL frontier.

The experiment of Rafailov et al., "Direct Preference Optimization: Your Language Model
is Secretly a Reward Model", NeurIPS 2023, arXiv:2305.18290, Figure 2: for each
objective and setting, the expected true reward of the final policy's samples against
KL(π ‖ π_ref), over a few seeds. One job per module:

- `sweep`: overrides (a Hydra sweep) -> training jobs, each objective's settings matched
- `runs`: train the jobs, or read run directories trained before
- `evaluation`: sample held-out prompts, score them, estimate the KL
- `stats`: means over seeds and their Student-t intervals
- `report`: compare.json, the Markdown table, the PNG frontier
- `cli`: the console script
"""
