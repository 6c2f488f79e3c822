"""Writes tests/model/data/tf_electra/: a tiny checkpoint in the layout google-research/
electra's run_pretraining.py saves (TensorFlow 1 variable names, a tf.compat.v1 Saver, Adam
slots and global_step beside the parameters), for the converter's tests. Needs TensorFlow:
    python tests/model/data/make_tf_checkpoint.py
The values are `values()` below, so that the tests can rebuild them without TensorFlow."""

from pathlib import Path

import numpy as np

V, E, P, T = 30, 12, 16, 2  # vocabulary, embedding size, positions, token types
SIZES = {"electra": (16, 2, 32), "generator": (8, 1, 16)}  # hidden, layers, intermediate


def shapes() -> dict[str, tuple[int, ...]]:
    """Every parameter of a discriminator and a generator with tied embeddings, as the
    official modeling.py and run_pretraining.py name them."""
    out = {"electra/embeddings/word_embeddings": (V, E),
           "electra/embeddings/position_embeddings": (P, E),
           "electra/embeddings/token_type_embeddings": (T, E),
           "electra/embeddings/LayerNorm/gamma": (E,),
           "electra/embeddings/LayerNorm/beta": (E,)}  # fmt: skip
    for scope, (H, layers, inner) in SIZES.items():
        out[f"{scope}/embeddings_project/kernel"] = (E, H)
        out[f"{scope}/embeddings_project/bias"] = (H,)
        for i in range(layers):
            at = f"{scope}/encoder/layer_{i}"
            for name in ("attention/self/query", "attention/self/key", "attention/self/value",
                         "attention/output/dense"):  # fmt: skip
                out[f"{at}/{name}/kernel"], out[f"{at}/{name}/bias"] = (H, H), (H,)
            out[f"{at}/intermediate/dense/kernel"] = (H, inner)
            out[f"{at}/intermediate/dense/bias"] = (inner,)
            out[f"{at}/output/dense/kernel"], out[f"{at}/output/dense/bias"] = (inner, H), (H,)
            for norm in ("attention/output/LayerNorm", "output/LayerNorm"):
                out[f"{at}/{norm}/gamma"] = out[f"{at}/{norm}/beta"] = (H,)
    H = SIZES["electra"][0]
    out["discriminator_predictions/dense/kernel"] = (H, H)
    out["discriminator_predictions/dense/bias"] = (H,)
    out["discriminator_predictions/dense_1/kernel"] = (H, 1)
    out["discriminator_predictions/dense_1/bias"] = (1,)
    out["generator_predictions/dense/kernel"] = (SIZES["generator"][0], E)
    out["generator_predictions/dense/bias"] = (E,)
    out["generator_predictions/LayerNorm/gamma"] = out["generator_predictions/LayerNorm/beta"] = (
        E,
    )
    out["generator_predictions/output_bias"] = (V,)
    return out


def values() -> dict[str, np.ndarray]:
    """Distinct float32 values per parameter, reproducible from the name's position."""
    return {name: np.random.default_rng(i).standard_normal(shape).astype(np.float32)
            for i, (name, shape) in enumerate(sorted(shapes().items()))}  # fmt: skip


def main() -> None:
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    directory = Path(__file__).parent / "tf_electra"
    directory.mkdir(exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        variables = []
        for name, value in values().items():
            variables.append(tf.compat.v1.get_variable(name, initializer=value))
            for slot in ("adam_m", "adam_v"):  # the official optimizer's slots
                ones = np.ones_like(value)
                variables.append(tf.compat.v1.get_variable(f"{name}/{slot}", initializer=ones))
        variables.append(tf.compat.v1.train.get_or_create_global_step())
        saver = tf.compat.v1.train.Saver(variables)
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            session.run(tf.compat.v1.assign(variables[-1], 7))
            saver.save(session, str(directory / "model.ckpt"), global_step=7,
                       write_meta_graph=False)  # fmt: skip
    # Relative paths, as a checkpoint moved from the machine that wrote it is read.
    state = 'model_checkpoint_path: "model.ckpt-7"\nall_model_checkpoint_paths: "model.ckpt-7"\n'
    (directory / "checkpoint").write_text(state)


if __name__ == "__main__":
    main()
