"""Fusion by hand: RRF and weighted scores on two small pools."""

import numpy as np
import pytest

from recfunnel.core.candidates import PAD, CandidateBatch
from recfunnel.core.errors import ConfigError
from recfunnel.stages.retrieve.fuse import FusionConfig, fuse


def pools():
    a = CandidateBatch(np.array([[1, 2, 3]]), np.array([[3.0, 2.0, 1.0]]), "a")
    b = CandidateBatch(np.array([[3, 4, PAD]]), np.array([[10.0, 5.0, -np.inf]]), "b")
    return [a, b]


def test_rrf_by_hand():
    out = fuse(pools(), FusionConfig(method="rrf", rrf_k=0), 4, 10)
    # 1: 1/1; 2: 1/2; 3: 1/3 + 1/1; 4: 1/2 (ties -> lower item first)
    assert out.items.tolist() == [[3, 1, 2, 4]]
    np.testing.assert_allclose(out.scores[0], [4 / 3, 1.0, 0.5, 0.5])
    assert out.stage == "fuse:rrf"


def test_weighted_by_hand():
    out = fuse(pools(), FusionConfig(method="weighted"), 4, 10)
    # a -> 0.01 + 0.99 * [1, .5, 0]; b -> [1, 0.01]; item 3 gets both
    assert out.items.tolist() == [[3, 1, 2, 4]]
    np.testing.assert_allclose(out.scores[0], [1.01, 1.0, 0.505, 0.01])


def test_weights_change_the_winner():
    out = fuse(pools(), FusionConfig(method="rrf", rrf_k=0, weights=[5.0, 1.0]), 2, 10)
    assert out.items[0, 0] == 1  # 5/1 beats 5/3 + 1


def test_depth_pads_and_truncates():
    out = fuse(pools(), FusionConfig(), 6, 10)
    assert out.items.shape == (1, 6) and (out.items[0, 4:] == PAD).all()
    assert fuse(pools(), FusionConfig(), 2, 10).items.shape == (1, 2)


def test_bad_weights():
    with pytest.raises(ConfigError, match="weights"):
        fuse(pools(), FusionConfig(weights=[1.0]), 3, 10)
    with pytest.raises(ValueError):
        FusionConfig(weights=[1.0, -1.0])
