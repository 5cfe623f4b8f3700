"""The helper Athena imports beside EmbeddingModel."""

import pytest

from athena_client.compat.embeddings import cosine_similarity


def test_cosine_of_parallel_orthogonal_and_opposite_vectors():
    assert cosine_similarity([1.0, 2.0], [2.0, 4.0]) == pytest.approx(1.0)
    assert cosine_similarity([1.0, 0.0], [0.0, 3.0]) == pytest.approx(0.0)
    assert cosine_similarity([1.0, 1.0], [-1.0, -1.0]) == pytest.approx(-1.0)


def test_a_zero_vector_has_cosine_zero_as_in_athena():
    assert cosine_similarity([0.0, 0.0], [1.0, 2.0]) == 0.0


def test_numpy_arrays_are_taken_too():
    np = pytest.importorskip("numpy")
    assert cosine_similarity(np.array([3.0, 4.0]), [3.0, 4.0]) == pytest.approx(1.0)


def test_vectors_of_different_lengths_are_a_clear_error():
    with pytest.raises(ValueError, match="different lengths"):
        cosine_similarity([1.0], [1.0, 2.0])
