"""Training plug-ins (curricula, self-paced learning, gradient modulation)."""
from merc.strategies.base import Strategy

STRATEGIES: dict[str, type[Strategy]] = {"none": Strategy}


def build_strategy(name: str, **kwargs) -> Strategy:
    if name not in STRATEGIES:
        raise KeyError(f"unknown strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name](**kwargs)
