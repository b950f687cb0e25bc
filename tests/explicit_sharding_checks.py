"""Per-device compiled cost of every mask-drawing function under an Explicit mesh, against an Auto one.

Run by tests/test_parallel.py through :func:`multidevice_checks.run_on_host_devices`,
once per device count (``python explicit_sharding_checks.py N`` with N host
devices); prints one JSON object. Each case is compiled on a 1-D mesh of all
devices, ``jax.make_mesh((N,), ("d",), axis_types=(AxisType.X,))`` for X Explicit
and Auto, with its inputs sharded the same way in both (over the batch, axis 0,
or over the features, the last axis), and records

* the per-device flops of the compiled function under each mesh
  (``compiled.cost_analysis()["flops"]``: XLA's count for one device's program);
* whether the compiled HLO has a uint32 op at a draw's global shape, which a
  device that hashes only its shard never has (the row counters of a
  feature-sharded draw, ``(rows, 1)``, are global on every device under any
  sharding, so only the full shape is looked for there);
* whether the Explicit result equals the unsharded one, and keeps the input's sharding.

The drop-in layers of one host library are compiled together, as one case
whose function returns every layer's output (a compile costs about a quarter
of a second, and 15 of them separately would double the run): any layer that
drew its noise whole would put an op at the global shape into that one HLO.
Their values are compared with the functions they are documented to equal.
"""

import json
import math
import os
import sys


def main(devices: int) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P
    from multidevice_checks import close, same_mask_and_close

    import jdrop
    import jdrop.equinox
    import jdrop.linen
    import jdrop.nnx

    assert jax.device_count() == devices, jax.devices()
    key = jax.random.key(0)
    batch, features = 512, 256
    keep, rate = 0.7, 0.3  # the functions take keep_prob, the layers the drop rate
    logit = math.log((1 - rate) / rate)  # the concrete layers' initial keep logit
    # Inputs made with NumPy: each eager JAX op would be one more compilation.
    rng = np.random.default_rng(0)
    inputs = {
        "x": jnp.asarray(rng.normal(size=(batch, features)), jnp.float32),
        "x3": jnp.asarray(rng.normal(size=(batch // 8, 16, features // 8)), jnp.float32),
        "keys": jax.random.split(jax.random.key(4), batch),
        # Integer-valued inputs and weights with keep probabilities 1/2 make every
        # sum in the MLP exact, so its output is bit-identical under any sharding
        # exactly when its masks are (as in multidevice_checks.py).
        "x_int": jnp.asarray(rng.integers(-4, 5, (batch, features)), jnp.float32),
        # Attention's (B, T, N, H), sharded along the batch: 16 examples of 64 queries, 2 heads of 16.
        "qkv": jnp.asarray(rng.normal(size=(16, 64, 2, 16)), jnp.float32),
    }
    params = [
        {"w": jnp.asarray(rng.integers(-2, 3, (n_in, n_out)), jnp.float32), "b": jnp.zeros(n_out)}
        for n_in, n_out in ((features, 128), (128, 10))
    ]

    def exact(a, b):
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))

    # The functions, by name: (function, the names of its inputs, how its values are compared).
    # Continuous noise goes through log, sqrt and exp, and alpha dropout's affine
    # map through a multiply-add, whose last bit XLA may change with the
    # per-device shapes: compared with close(), as in multidevice_checks.py.
    functions = {
        "dropout": (lambda x: jdrop.dropout(key, x, keep), ("x",), exact),
        "dropout broadcast_dims=(1,)": (lambda x: jdrop.dropout(key, x, keep, broadcast_dims=(1,)), ("x3",), exact),
        "gaussian_dropout": (lambda x: jdrop.gaussian_dropout(key, x, keep), ("x",), close),
        "alpha_dropout": (lambda x: jdrop.alpha_dropout(key, x, keep), ("x",), close),
        "drop_path": (lambda x: jdrop.drop_path(key, x, keep), ("x",), exact),
        "concrete_dropout": (lambda x: jdrop.concrete_dropout(key, x, jnp.float32(logit)), ("x",), close),
        "activation_dropout tanh": (
            lambda x: jdrop.activation_dropout(key, x, keep, activation="tanh"),
            ("x",),
            same_mask_and_close,
        ),
        "activation_dropout gelu": (
            lambda x: jdrop.activation_dropout(key, x, keep, activation="gelu"),
            ("x",),
            same_mask_and_close,
        ),
        "mlp_apply": (lambda x: jdrop.mlp_apply(params, x, key=key, keep_probs=(0.5, 0.5)), ("x_int",), exact),
        # The attention's mask, drawn per tile: its counters must be the device's own items too.
        "dot_product_attention": (
            lambda q: jdrop.dot_product_attention(q, q, q, dropout_key=key, keep_prob=keep),
            ("qkv",),
            close,
        ),
        "dot_product_attention gradient": (
            lambda q: jax.grad(
                lambda q: (jdrop.dot_product_attention(q, q, q, dropout_key=key, keep_prob=keep) ** 2).sum()
            )(q),
            ("qkv",),
            close,
        ),
        "nnx.dot_product_attention": (
            lambda q: jdrop.nnx.dot_product_attention(q, q, q, dropout_rng=key, dropout_rate=rate),
            ("qkv",),
            close,
        ),
        # Equinox's own idiom: the layer sees one example, with a key per example.
        "equinox.Dropout under vmap": (
            lambda k, x: jax.vmap(lambda k, row: jdrop.equinox.Dropout(rate)(row, key=k))(k, x),
            ("keys", "x"),
            exact,
        ),
    }
    linen_logit = {"params": {"keep_logit": jnp.float32(logit)}}
    # The drop-in layers, by host: each layer's output equals the function it names.
    layers = {
        "nnx": {
            "Dropout": (lambda x: jdrop.nnx.Dropout(rate)(x, rngs=key), "dropout"),
            "GaussianDropout": (lambda x: jdrop.nnx.GaussianDropout(rate)(x, rngs=key), "gaussian_dropout"),
            "AlphaDropout": (lambda x: jdrop.nnx.AlphaDropout(rate)(x, rngs=key), "alpha_dropout"),
            "DropPath": (lambda x: jdrop.nnx.DropPath(rate)(x, rngs=key), "drop_path"),
            "ConcreteDropout": (lambda x: jdrop.nnx.ConcreteDropout(rate)(x, rngs=key), "concrete_dropout"),
        },
        "linen": {
            name: (
                lambda x, layer=layer, variables=variables: layer(rate, deterministic=False).apply(
                    variables, x, rng=key
                ),
                function,
            )
            for name, layer, variables, function in (
                ("Dropout", jdrop.linen.Dropout, {}, "dropout"),
                ("GaussianDropout", jdrop.linen.GaussianDropout, {}, "gaussian_dropout"),
                ("AlphaDropout", jdrop.linen.AlphaDropout, {}, "alpha_dropout"),
                ("DropPath", jdrop.linen.DropPath, {}, "drop_path"),
                ("ConcreteDropout", jdrop.linen.ConcreteDropout, linen_logit, "concrete_dropout"),
            )
        },
        "equinox": {
            "Dropout": (lambda x: jdrop.equinox.Dropout(rate)(x, key=key), "dropout"),
            "GaussianDropout": (lambda x: jdrop.equinox.GaussianDropout(rate)(x, key=key), "gaussian_dropout"),
            "AlphaDropout": (lambda x: jdrop.equinox.AlphaDropout(rate)(x, key=key), "alpha_dropout"),
            "DropPath": (lambda x: jdrop.equinox.DropPath(rate, mode="row")(x, key=key), "drop_path"),
            "ConcreteDropout": (lambda x: jdrop.equinox.ConcreteDropout(rate)(x, key=key), "concrete_dropout"),
        },
    }
    # The unsharded values, in one compilation.
    reference = jax.jit(
        lambda inputs: {
            "dropout_mask": jdrop.dropout_mask(key, inputs["x"].shape, keep),
            **{name: fn(*(inputs[i] for i in names)) for name, (fn, names, _) in functions.items()},
        }
    )(inputs)

    def spec_of(layout: str, ndim: int) -> P:
        return P("d", *[None] * (ndim - 1)) if layout == "batch" else P(*[None] * (ndim - 1), "d")

    def cost(compiled) -> float:
        analysis = compiled.cost_analysis()
        analysis = analysis[0] if isinstance(analysis, list) else analysis
        return float(analysis["flops"])

    meshes = {
        mode: jax.make_mesh((devices,), ("d",), axis_types=(getattr(AxisType, mode),)) for mode in ("Explicit", "Auto")
    }
    results: dict[str, dict] = {}

    def measure(case, build, draw_shapes, comparisons):
        """Compiles ``build(mesh) -> (jitted, args, sharding)`` under both meshes; records what the docstring says.

        ``comparisons`` maps each output (a key of the function's result) to
        ``(compare, expected)``; ``sharding`` is the one the outputs must keep.
        """
        global_shapes = ["u32[" + ",".join(map(str, shape)) + "]" for shape in draw_shapes]
        entry: dict[str, object] = {}
        try:
            for mode, mesh in meshes.items():
                with jax.set_mesh(mesh):
                    jitted, args, sharding = build(mesh)
                    compiled = jitted.lower(*args).compile()
                    hlo = compiled.as_text()
                    entry[mode] = {
                        "flops": cost(compiled),
                        "global_shapes_in_hlo": [shape for shape in global_shapes if shape in hlo],
                    }
                    if mode == "Explicit":
                        out = compiled(*args)
                        entry["differs_from_unsharded"] = [
                            name for name, (same, expected) in comparisons.items() if not same(out[name], expected)
                        ]
                        entry["sharding_changed"] = [
                            name
                            for name, value in out.items()
                            if not value.sharding.is_equivalent_to(sharding, value.ndim)
                        ]
        except Exception as error:  # recorded, so that one failing case does not hide the others
            entry["error"] = f"{type(error).__name__}: {str(error)[:500]}"
        results[case] = entry

    def sharded_inputs(mesh, names, layout):
        return tuple(jax.device_put(inputs[i], NamedSharding(mesh, spec_of(layout, inputs[i].ndim))) for i in names)

    def draw_shape(name, names, layout):
        """The global shapes that a redundant draw would show: the noise, for drop_path (rows, 1)."""
        x = inputs[names[-1]]
        if name.endswith("drop_path") or name.endswith("DropPath"):
            return [(x.shape[0], 1)] if layout == "batch" else []  # shared by all devices when features are split
        if "broadcast_dims" in name:
            return [(x.shape[0], 1, x.shape[2])]
        if "attention" in name:  # the mask of the weights (B, N, T, S), or of one example's for Flax's broadcast
            b, t, n, _ = x.shape
            return [(b, n, t, t), (n, t, t)]
        return [x.shape]

    # The column counters matter when the last axis is split: the functions that
    # draw in different ways (a mask, normal noise, a broadcast mask) also over the features.
    over_features = ("dropout", "dropout broadcast_dims=(1,)", "gaussian_dropout")
    for name, (fn, names, compare) in functions.items():
        for layout in ("batch", "features") if name in over_features else ("batch",):

            def build(mesh, fn=fn, names=names, layout=layout):
                args = sharded_inputs(mesh, names, layout)
                return jax.jit(lambda *a: {"out": fn(*a)}), args, NamedSharding(mesh, spec_of(layout, args[-1].ndim))

            measure(f"{name} [{layout}]", build, draw_shape(name, names, layout), {"out": (compare, reference[name])})

    for host, members in layers.items():

        def build_layers(mesh, members=members):
            fn = jax.jit(lambda x: {name: layer(x) for name, (layer, _) in members.items()})
            return fn, sharded_inputs(mesh, ("x",), "batch"), NamedSharding(mesh, spec_of("batch", 2))

        comparisons = {name: (functions[function][2], reference[function]) for name, (_, function) in members.items()}
        shapes = [inputs["x"].shape, (batch, 1)]
        measure(f"{host} layers [batch]", build_layers, shapes, comparisons)

    # dropout_mask has no input to take a sharding from: under Explicit it takes
    # out_sharding (as jax.random's functions do); under Auto, jit's out_shardings.
    for layout in ("batch", "features"):

        def build_mask(mesh, layout=layout):
            sharding = NamedSharding(mesh, spec_of(layout, 2))
            shape = inputs["x"].shape
            if mesh.axis_types[0] == AxisType.Explicit:
                fn = jax.jit(lambda k: {"out": jdrop.dropout_mask(k, shape, keep, out_sharding=sharding)})
            else:
                fn = jax.jit(lambda k: {"out": jdrop.dropout_mask(k, shape, keep)}, out_shardings={"out": sharding})
            return fn, (key,), sharding

        measure(
            f"dropout_mask [{layout}]", build_mask, [inputs["x"].shape], {"out": (exact, reference["dropout_mask"])}
        )

    print(json.dumps({"devices": devices, "cases": results}))


if __name__ == "__main__":
    count = int(sys.argv[1])
    if f"--xla_force_host_platform_device_count={count}" not in os.environ.get("XLA_FLAGS", ""):
        sys.exit(f"run with XLA_FLAGS=--xla_force_host_platform_device_count={count}")
    main(count)
