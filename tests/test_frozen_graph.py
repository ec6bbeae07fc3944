"""``kseg.models.frozen_graph``: a made-up frozen TF1 GraphDef runs in TF2, saves in a SavedModel, and bad files
or names fail with one line naming the file."""

import numpy as np
import pytest
import tensorflow as tf

from kseg.core.errors import KsegError
from kseg.models.frozen_graph import FrozenGraphError, load_frozen_graph

WEIGHTS = np.array([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]], np.float32)


@pytest.fixture(scope="module")
def frozen_graph(tmp_path_factory):
    """``image`` [None, 2] -> ``scores`` = relu(image @ W + 1) and ``double`` = 2 * image, as a frozen .pb."""
    graph = tf.Graph()
    with graph.as_default():
        image = tf.compat.v1.placeholder(tf.float32, [None, 2], name="image")
        weights = tf.constant(WEIGHTS, name="weights")
        tf.nn.relu(tf.matmul(image, weights) + 1.0, name="scores")
        tf.multiply(image, 2.0, name="double")
    folder = tmp_path_factory.mktemp("frozen")
    tf.io.write_graph(graph.as_graph_def(), str(folder), "graph.pb", as_text=False)
    return folder / "graph.pb"


def _expected(x):
    return np.maximum(x @ WEIGHTS + 1.0, 0.0)


def test_runs_the_graph_from_inputs_to_outputs(frozen_graph):
    run = load_frozen_graph(frozen_graph, ["image:0"], ["scores:0", "double:0"])
    x = np.array([[1.0, 2.0], [-3.0, 0.5]], np.float32)
    scores, double = run(tf.constant(x))
    np.testing.assert_allclose(scores.numpy(), _expected(x))
    np.testing.assert_allclose(double.numpy(), 2 * x)


def test_bare_node_names_mean_their_first_output(frozen_graph):
    run = load_frozen_graph(frozen_graph, ["image"], ["scores"])
    x = np.ones((1, 2), np.float32)
    np.testing.assert_allclose(run(tf.constant(x))[0].numpy(), _expected(x))


def test_works_inside_a_tf_function_and_a_saved_model(frozen_graph, tmp_path):
    class Holder(tf.Module):
        def __init__(self):
            super().__init__()
            self.graph = load_frozen_graph(frozen_graph, ["image:0"], ["scores:0"])

        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32)])
        def __call__(self, x):
            return self.graph(x)[0]

    tf.saved_model.save(Holder(), str(tmp_path / "model"))
    reloaded = tf.saved_model.load(str(tmp_path / "model"))
    x = np.array([[0.5, -1.0]], np.float32)
    np.testing.assert_allclose(reloaded(tf.constant(x)).numpy(), _expected(x))


def _one_line_naming(error, path):
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    assert isinstance(error.value, KsegError)
    return message


def test_missing_file(tmp_path):
    path = tmp_path / "nothing.pb"
    with pytest.raises(FrozenGraphError) as error:
        load_frozen_graph(path, ["image"], ["scores"])
    assert "no such frozen graph file" in _one_line_naming(error, path)


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage", b"", b"just some text, not a graph\n"])
def test_not_a_graph_def(tmp_path, content):
    path = tmp_path / "graph.pb"
    path.write_bytes(content)
    with pytest.raises(FrozenGraphError) as error:
        load_frozen_graph(path, ["image"], ["scores"])
    assert "not a TensorFlow GraphDef" in _one_line_naming(error, path)


@pytest.mark.parametrize(
    ("inputs", "outputs", "role", "close"),
    [(["imgae:0"], ["scores:0"], "input", "image"), (["image:0"], ["score"], "output", "scores")],
)
def test_unknown_names_list_close_ones(frozen_graph, inputs, outputs, role, close):
    with pytest.raises(FrozenGraphError) as error:
        load_frozen_graph(frozen_graph, inputs, outputs)
    message = _one_line_naming(error, frozen_graph)
    assert f"{role} " in message and "close names" in message and close in message
