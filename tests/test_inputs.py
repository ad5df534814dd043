"""LazyInputs: indexing preprocesses exactly the samples asked for, in order."""

from __future__ import annotations

import numpy as np

from edvit.preprocess import ImagePreprocess, preprocess_batch
from modelgen.inputs import LazyInputs, inputs_nbytes


def test_lazy_inputs_index_like_the_array() -> None:
    rng = np.random.default_rng(0)
    samples = [rng.integers(0, 256, (12, 10, 3), dtype=np.uint8) for _ in range(7)]
    spec = ImagePreprocess(kind="image", height=8, width=8, channels=3)
    eager = preprocess_batch(spec, samples)
    lazy = LazyInputs(spec, samples)
    assert len(lazy) == 7
    np.testing.assert_array_equal(lazy[2:5], eager[2:5])
    np.testing.assert_array_equal(lazy[5:], eager[5:])
    picks = np.array([6, 0, 3])
    np.testing.assert_array_equal(lazy[picks], eager[picks])
    assert lazy[7:].shape == (0, 3, 8, 8)
    assert inputs_nbytes(spec, 7) == eager.nbytes
