"""Raw streams of jdrop's mask generator for PractRand: the audit of its randomness.

``python benchmarks/rng_streams.py MODE | RNG_test stdin16 -tlmax 32GB -multithreaded``
writes an endless little-endian stream to stdout. The values are exactly the
ones the library computes: the 16-bit uniforms that masks compare with their
threshold (uint16, ``stdin16``), for the ``*bits`` modes keep-0.5 masks packed
eight to a byte (``stdin8``), and for the ``*words`` modes the full 32-bit
words whose bits make the continuous noise (uint32, ``stdin32``). Modes:

  rowmajor  every 4096x4096 draw with its own key fold_in(base, i), row by row
  colmajor  the same draws, column by column
  steps     one position's values over 4096 successive step keys, position by position
  layers    eight layer keys split from each step key, interleaved entry by entry
  narrow    (2**20, 1) and (2**20,) draws, alternating, each with its own key
  bits      packed keep-0.5 masks of the rowmajor draws (stdin8)
  bigarray  one key drawing one (R, 4096) array of unbounded R, row chunks in order
  bigbits   packed keep-0.5 masks of the bigarray draw (stdin8)
  words     the rowmajor draws' full 32-bit words (stdin32), as Gaussian and concrete dropout use them
  bigwords  the bigarray draw's full 32-bit words (stdin32)

``--rounds`` lowers the generator's rounds after the row and column hashes meet,
for the safety-margin audit only. Building PractRand: ``../shared/practrand/BUILD.md``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jdrop import _generator

MODES = ("rowmajor", "colmajor", "steps", "layers", "narrow", "bits", "bigarray", "bigbits", "words", "bigwords")
SIDE = 4096  # the side of the rowmajor draws and the width of the bigarray draw
CHUNK_ROWS = 1024  # rows of the bigarray draw per chunk: 8 MiB of uint16
KEEP_HALF = 1 << 15  # the threshold of keep probability 0.5


def _draw(rounds: int, words: bool = False) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
    """``(key, row, col) -> uint32 uniforms``: the library's function, at ``rounds``.

    16-bit uniforms (:func:`_generator.hash16`), or with ``words`` the full
    32-bit words (:func:`_generator.hash32`).

    ``key`` may also be a draw's key words (``_generator.seeds_of(key)``): the
    bigarray modes compute one draw's words once and its rows chunk by chunk.
    """

    @jax.jit
    def draw(key: jax.Array, row: jax.Array, col: jax.Array) -> jax.Array:
        seeds = key if key.dtype == jnp.uint32 else _generator.seeds_of(key)
        return (_generator.hash32 if words else _generator.hash16)(seeds, row, col, rounds)

    return draw


def _grid(rows: int, cols: int, first_row: int = 0) -> tuple[jax.Array, jax.Array]:
    row = jnp.arange(first_row, first_row + rows, dtype=jnp.uint32)[:, None]
    return row, jnp.arange(cols, dtype=jnp.uint32)[None, :]


def chunks(mode: str, seed: int = 0, rounds: int = _generator.ROUNDS) -> Iterator[np.ndarray]:
    """The stream of ``mode`` as numpy chunks (uint16 values, uint8 packed mask bits or uint32 words), forever."""
    draw = _draw(rounds, words=mode in ("words", "bigwords"))
    base = jax.random.key(seed)
    square = _grid(SIDE, SIDE)
    if mode in ("bigarray", "bigbits", "bigwords"):
        seeds = _generator.seeds_of(base)  # one key, one draw: its rows come chunk by chunk
        for first_row in range(0, _generator.MAX_COUNTER, CHUNK_ROWS):
            values = np.asarray(draw(seeds, *_grid(CHUNK_ROWS, SIDE, first_row)))
            if mode == "bigbits":
                yield np.packbits(values < KEEP_HALF)
            else:
                yield values if mode == "bigwords" else values.astype(np.uint16)
        raise RuntimeError("the bigarray draw has used every row counter")
    for i in range(1 << 62):
        key = jax.random.fold_in(base, i)
        if mode in ("rowmajor", "colmajor", "bits", "words"):
            values = np.asarray(draw(key, *square))
            if mode == "words":
                yield values.ravel()
            elif mode == "bits":
                yield np.packbits(values < KEEP_HALF)
            else:
                yield (values if mode == "rowmajor" else values.T).astype(np.uint16).ravel()
        elif mode == "steps":
            # Positions of a 64x64 draw at 4096 consecutive steps i * 4096 + t.
            keys = jax.vmap(lambda t: jax.random.fold_in(base, t))(jnp.arange(i * SIDE, (i + 1) * SIDE))
            values = np.asarray(jax.vmap(lambda k: draw(k, *_grid(64, 64)))(keys))  # (steps, 64, 64)
            yield values.reshape(SIDE, -1).T.astype(np.uint16).ravel()
        elif mode == "layers":
            layer_keys = jax.random.split(key, 8)
            values = np.asarray(jax.vmap(lambda k: draw(k, *_grid(512, 1024)))(layer_keys))  # (8, 512, 1024)
            yield values.reshape(8, -1).T.astype(np.uint16).ravel()
        elif mode == "narrow":
            n = 1 << 20
            # (n, 1): rows count up with one column; (n,): one row whose columns count up.
            row, col = (_grid(n, 1)) if i % 2 == 0 else _grid(1, n)
            yield np.asarray(draw(key, row, col)).astype(np.uint16).ravel()
        else:
            raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--seed", type=int, default=0, help="base key seed (default 0)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=_generator.ROUNDS,
        help=f"rounds after the hashes meet (default {_generator.ROUNDS}; fewer only to audit the margin)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.rounds <= _generator.ROUNDS:
        parser.error(f"--rounds must be in [0, {_generator.ROUNDS}], got {args.rounds}")
    out = sys.stdout.buffer
    try:
        for chunk in chunks(args.mode, args.seed, args.rounds):
            out.write(chunk.astype(chunk.dtype.newbyteorder("<"), copy=False).tobytes())
    except BrokenPipeError:  # RNG_test stopped reading: the normal end
        sys.stderr.close()


if __name__ == "__main__":
    main()
