"""Tests for jdrop._mlp: initialisation, the forward pass, per-layer dropout, errors."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import jdrop

SIZES = (12, 32, 24, 5)


def hand_forward(params, x, activation, keys=None, keep_probs=None):
    """The MLP written out layer by layer, independently of mlp_apply."""
    a = x
    for i, layer in enumerate(params):
        if keys is not None:
            a = jdrop.dropout(keys[i], a, keep_probs[i])
        a = jnp.dot(a, layer["w"]) + layer["b"][None]
        if i < len(params) - 1:
            a = activation(a)
    return a


class InitTest(parameterized.TestCase):
    def test_shapes_and_dtype(self):
        params = jdrop.mlp_init(jax.random.key(0), SIZES, dtype=jnp.bfloat16)
        assert len(params) == 3
        for layer, n_in, n_out in zip(params, SIZES[:-1], SIZES[1:], strict=True):
            chex.assert_shape(layer["w"], (n_in, n_out))
            chex.assert_shape(layer["b"], (n_out,))
            chex.assert_type([layer["w"], layer["b"]], jnp.bfloat16)
            np.testing.assert_array_equal(layer["b"], 0)

    @parameterized.parameters(
        ("relu", 2.0),
        ("gelu", 2.0),
        ("tanh", None),
        ("sigmoid", None),
        (jax.nn.relu, 2.0),
        (jax.nn.gelu, 2.0),
        (jnp.tanh, None),
        (jax.nn.softplus, None),
    )
    def test_weight_variance_suits_the_activation(self, activation, fan_in_scale):
        n_in, n_out = 400, 500
        w = jdrop.mlp_init(jax.random.key(0), (n_in, n_out), activation=activation)[0]["w"]
        expected = fan_in_scale / n_in if fan_in_scale else 2.0 / (n_in + n_out)  # He or Glorot
        # The sample variance of N normal draws has standard deviation sqrt(2 / N) * var.
        tolerance = 5 * math.sqrt(2.0 / w.size) * expected
        assert abs(float(jnp.var(w)) - expected) <= tolerance, (float(jnp.var(w)), expected)

    def test_custom_initialisers_and_layer_keys(self):
        custom_key, default_key = jax.random.split(jax.random.key(0))
        params = jdrop.mlp_init(
            custom_key, SIZES, w_init=jax.nn.initializers.ones, b_init=jax.nn.initializers.constant(0.5)
        )
        np.testing.assert_array_equal(params[1]["w"], 1.0)
        np.testing.assert_array_equal(params[1]["b"], 0.5)
        default = jdrop.mlp_init(default_key, (8, 8, 8))
        assert not np.array_equal(default[0]["w"], default[1]["w"])  # each layer its own key

    def test_an_activation_by_name_or_as_its_function_gives_the_same_network(self):
        for name, function in jdrop.ACTIVATIONS.items():
            key = jax.random.key(0)
            by_name = jdrop.mlp_init(key, SIZES, activation=name)
            by_function = jdrop.mlp_init(jax.random.clone(key), SIZES, activation=function)
            chex.assert_trees_all_equal(by_name, by_function)

    def test_weights_and_biases_of_a_layer_draw_from_different_keys(self):
        # One key for both made a normal bias equal to the first row of the
        # weights (and the key-reuse checker raise); both are N(0, 1) here.
        normal = jax.nn.initializers.normal(1.0)
        params = jdrop.mlp_init(jax.random.key(0), (6, 6, 6), w_init=normal, b_init=normal)
        for layer in params:
            rows = np.asarray(layer["w"])
            assert not np.any(np.all(rows == np.asarray(layer["b"]), axis=1))
        assert not np.array_equal(params[0]["b"], params[1]["b"])

    @pytest.mark.filterwarnings("ignore")
    def test_errors(self):
        key = jax.random.key(0)  # never consumed: the checks come first
        with pytest.raises(ValueError, match="at least two"):
            jdrop.mlp_init(key, (10,))
        with pytest.raises(ValueError, match="positive ints"):
            jdrop.mlp_init(key, (10, 0, 3))
        with pytest.raises(ValueError, match="positive ints"):
            jdrop.mlp_init(key, (10, 2.5, 3))


class ApplyTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    # Named, so that test ids do not contain function addresses (pytest-xdist workers must agree on them).
    @parameterized.named_parameters(
        ("relu", "relu", jax.nn.relu),
        ("tanh", "tanh", jnp.tanh),
        ("sigmoid", "sigmoid", jax.nn.sigmoid),
        ("gelu", "gelu", jax.nn.gelu),
    )
    def test_deterministic_equals_the_hand_written_forward_pass(self, name, function):
        params = jdrop.mlp_init(jax.random.key(0), SIZES, activation=name)
        x = jax.random.normal(jax.random.key(1), (7, SIZES[0]))
        out = self.variant(lambda p, x: jdrop.mlp_apply(p, x, deterministic=True, activation=name))(params, x)
        chex.assert_shape(out, (7, SIZES[-1]))
        chex.assert_trees_all_close(out, hand_forward(params, x, function), rtol=1e-6, atol=1e-6)

    def test_callable_activation_and_no_dropout_paths_agree(self):
        params = jdrop.mlp_init(jax.random.key(0), SIZES)
        x = jax.random.normal(jax.random.key(2), (4, SIZES[0]))
        expected = hand_forward(params, x, jax.nn.softplus)
        for out in (
            jdrop.mlp_apply(params, x, activation=jax.nn.softplus),
            jdrop.mlp_apply(params, x, activation=jax.nn.softplus, keep_probs=(1.0, 1.0, 1.0)),
            jdrop.mlp_apply(params, x, activation=jax.nn.softplus, keep_probs=(0.5, 0.5, 0.5), deterministic=True),
        ):
            chex.assert_trees_all_close(out, expected, rtol=1e-6, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_dropout_uses_one_split_key_per_layer(self):
        init_key, key = jax.random.split(jax.random.key(0))
        params = jdrop.mlp_init(init_key, SIZES)
        x = jax.random.normal(jax.random.key(3), (6, SIZES[0]))
        keep_probs = (0.9, 0.5, 0.7)
        out = self.variant(lambda p, x, k: jdrop.mlp_apply(p, x, key=k, keep_probs=keep_probs))(params, x, key)
        keys = jax.random.split(jax.random.clone(key), 3)  # the layer keys that mlp_apply used
        chex.assert_trees_all_close(out, hand_forward(params, x, jax.nn.relu, keys, keep_probs), rtol=1e-6, atol=1e-6)
        # Layers 1 and 2 see 32- and 24-wide inputs; compare their masks on a common shape.
        same_keys = jax.random.clone(keys)
        mask_1, mask_2 = (jdrop.dropout_mask(same_keys[i], (6, 24), 0.5) for i in (1, 2))
        assert not np.array_equal(mask_1, mask_2)

    def test_every_example_gets_its_own_mask(self):
        init_key, key = jax.random.split(jax.random.key(0))
        params = jdrop.mlp_init(init_key, SIZES)
        x = jnp.tile(jax.random.normal(jax.random.key(4), (1, SIZES[0])), (64, 1))  # 64 identical rows
        out = np.asarray(jdrop.mlp_apply(params, x, key=key, keep_probs=(1.0, 0.5, 0.5)))
        assert len({row.tobytes() for row in out}) == 64
        plain = jdrop.mlp_apply(params, x, deterministic=True)
        assert len({row.tobytes() for row in np.asarray(plain)}) == 1

    def test_same_key_same_output_other_key_other_output(self):
        init_key, key = jax.random.split(jax.random.key(0))
        params = jdrop.mlp_init(init_key, SIZES)
        x = jax.random.normal(jax.random.key(5), (8, SIZES[0]))
        a, b, c = (
            jdrop.mlp_apply(params, x, key=k, keep_probs=(0.8, 0.5, 0.5))
            for k in (key, jax.random.clone(key), jax.random.key(9))
        )
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)

    def test_gradients_use_the_forward_masks(self):
        init_key, key = jax.random.split(jax.random.key(0))
        params = jdrop.mlp_init(init_key, SIZES)
        x = jax.random.normal(jax.random.key(6), (8, SIZES[0]))
        keep_probs = (0.8, 0.5, 0.5)
        keys = jax.random.split(jax.random.clone(key), 3)  # the layer keys that mlp_apply uses

        def loss(p, apply):
            return jnp.sum(apply(p) ** 2)

        grads = jax.grad(loss)(params, lambda p: jdrop.mlp_apply(p, x, key=key, keep_probs=keep_probs))
        expected = jax.grad(loss)(params, lambda p: hand_forward(p, x, jax.nn.relu, keys, keep_probs))
        chex.assert_trees_all_close(grads, expected, rtol=1e-5, atol=1e-6)

    def test_vmap_over_keys_and_traced_keep_probs_without_retracing(self):
        init_key, key = jax.random.split(jax.random.key(0))
        params = jdrop.mlp_init(init_key, SIZES)
        x = jax.random.normal(jax.random.key(7), (4, SIZES[0]))

        @jax.jit
        @chex.assert_max_traces(n=1)
        def apply(keys, keep_prob):
            return jax.vmap(lambda k: jdrop.mlp_apply(params, x, key=k, keep_probs=(1.0, keep_prob, keep_prob)))(keys)

        # Three new keys for each keep probability.
        for keys, keep_prob in zip(jax.random.split(key, (3, 3)), (0.3, 0.6, 0.9), strict=True):
            out = apply(keys, jnp.float32(keep_prob))
            chex.assert_shape(out, (3, 4, SIZES[-1]))
            same_key = jax.random.clone(keys)[1]
            expected = jdrop.mlp_apply(params, x, key=same_key, keep_probs=(1.0, keep_prob, keep_prob))
            chex.assert_trees_all_close(out[1], expected, rtol=1e-6, atol=1e-6)

    def test_accepts_legacy_raw_keys_and_leading_batch_axes(self):
        params = jdrop.mlp_init(jax.random.PRNGKey(0), SIZES)
        x = jax.random.normal(jax.random.key(8), (2, 3, SIZES[0]))
        raw = jdrop.mlp_apply(params, x, key=jax.random.PRNGKey(4), keep_probs=(0.9, 0.5, 0.5))
        typed = jdrop.mlp_apply(
            params, x, key=jax.random.wrap_key_data(jax.random.PRNGKey(4)), keep_probs=(0.9, 0.5, 0.5)
        )
        chex.assert_shape(raw, (2, 3, SIZES[-1]))
        np.testing.assert_array_equal(raw, typed)


class TestApplyErrors:
    params = jdrop.mlp_init(jax.random.key(0), SIZES)
    x = jnp.ones((2, SIZES[0]))

    def test_keep_probs_length(self):
        with pytest.raises(ValueError, match="keep_probs has 2 entries, but params has 3 layers"):
            jdrop.mlp_apply(self.params, self.x, key=jax.random.key(0), keep_probs=(0.5, 0.5))

    def test_input_width_names_both_widths(self):
        with pytest.raises(ValueError, match=r"x has 11 features.*the first layer takes 12"):
            jdrop.mlp_apply(self.params, jnp.ones((2, 11)), deterministic=True)

    def test_missing_key_when_dropout_is_active(self):
        with pytest.raises(ValueError, match=r"pass key=.*deterministic=True"):
            jdrop.mlp_apply(self.params, self.x, keep_probs=(1.0, 0.5, 0.5))

    def test_keep_prob_out_of_range_names_the_layer(self):
        with pytest.raises(ValueError, match=r"keep_probs\[1\] must be in \(0, 1\]"):
            jdrop.mlp_apply(self.params, self.x, key=jax.random.key(0), keep_probs=(1.0, 0.0, 0.5))

    def test_unknown_activation_and_bad_inputs(self):
        with pytest.raises(ValueError, match="activation must be one of"):
            jdrop.mlp_apply(self.params, self.x, activation="swish")
        with pytest.raises(TypeError, match="floating"):
            jdrop.mlp_apply(self.params, jnp.ones((2, SIZES[0]), jnp.int32))
        with pytest.raises(ValueError, match="params is empty"):
            jdrop.mlp_apply([], self.x)
