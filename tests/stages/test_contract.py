"""The stage contract (recfunnel.testing) over every registered stage, on real data.

LLM stages answer through a scripted model here (deterministic, and fast enough to run
every check); tests/integration runs each of them against the real bundled model.
"""

import re
import zlib

import numpy as np
import pytest

from recfunnel.data import load_dataset
from recfunnel.data.splits import cold_start
from recfunnel.stages.registry import REGISTRY
from recfunnel.stages.retrieve.cf import CFConfig
from recfunnel.testing import CHECKS, EXAMPLES, Harness, example
from scripted import ScriptedLLM


def logprobs(prompt: str, options) -> np.ndarray:
    """An arbitrary but fixed score per (prompt end, option): crc32, unlike the salted
    ``hash()``, is the same in every process, so a failure reproduces."""
    tail = prompt[-200:].encode()
    return np.array([(zlib.crc32(tail + o.encode()) % 1000) / -100.0 for o in options])


def text(prompt: str) -> str:
    if m := re.search(r"the (\d+) ids in your order", prompt):  # a goal-graph node
        n = int(m.group(1))
        return ", ".join(str(i) for i in range(n, 0, -1)) + "]\nNext: stop"
    if m := re.search(r"Here are (\d+) candidate", prompt):  # a permutation
        return " > ".join(f"[{i}]" for i in range(int(m.group(1)), 0, -1))
    return " nothing in particular."  # an explanation that names no liked title


@pytest.fixture(scope="module")
def setup(shared_data):
    data = load_dataset("ml-latest-small", shared_data)
    split = cold_start(data, seed=0, n_users=8, n_valid=30)
    return data, split


# models of a kind beyond its one example, each tuned on a grid (EASE on the liked events
# rated >= 4.5: fewer items, so its cubic fit stays a few seconds)
MODELS = {
    "cf:ease": {"kind": "cf", "model": "ease", "min_rating": 4.5, "ease_lambda": [100.0, 500.0]},
    "cf:rp3beta": {"kind": "cf", "model": "rp3beta", "min_rating": 4.0, "rp3_alpha": [0.5, 1.0]},
}


@pytest.fixture(scope="module", params=list(REGISTRY) + list(MODELS))
def harness(request, setup):
    data, split = setup
    llm = ScriptedLLM(logprobs=logprobs, text=text)
    param = request.param
    config = example(param) if param in REGISTRY else CFConfig.model_validate(MODELS[param])
    return Harness(config, split.train, data.catalog, split, llm)


def test_every_registered_stage_has_a_contract_example():
    assert set(EXAMPLES) == set(REGISTRY)


@pytest.mark.parametrize("check", list(CHECKS))
def test_stage_contract(harness, setup, check):
    _, split = setup
    CHECKS[check](harness, split.train, split.test.requests[:6])
