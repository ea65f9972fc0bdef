"""A Qwen2.5 HF checkpoint converted into the full DreamFoley model leaves the decoder weights identical."""
import jax
import jax.numpy as jnp
import numpy as np
import torch
from transformers import Qwen2Config as HFConfig, Qwen2ForCausalLM

from dreamfoley_jax import checkpoint as ckptlib
from dreamfoley_jax import sharding
from dreamfoley_jax.convert import qwen2 as convert_qwen2
from dreamfoley_jax.models import foley, qwen2
from dreamfoley_jax.models import params as foley_params


def test_converted_qwen_initialises_the_decoder_exactly(tmp_path):
  torch.manual_seed(0)
  hf_cfg = HFConfig(vocab_size=96, hidden_size=56, intermediate_size=80, num_hidden_layers=2,
                    num_attention_heads=7, num_key_value_heads=1, tie_word_embeddings=False, rope_theta=1e6)
  hf = Qwen2ForCausalLM(hf_cfg).eval()
  hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
  convert_qwen2.convert_to_orbax(tmp_path / "hf", tmp_path / "qwen_jax")

  dec = qwen2.from_hf_config(str(tmp_path / "hf"))
  cfg = foley.FoleyConfig(decoder=dec, num_codebooks=4, codebook_size=16, loss_weights=(0.4, 0.3, 0.2, 0.1),
                          sync_dim=12, clip_dim=8, null_text_len=2, null_video_len=2)
  model = foley.DreamFoley(cfg)
  batch = foley_params.dummy_batch(cfg, text_len=4, video_frames=8, audio_cols=6)
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  params, shard = sharding.init_sharded(model, mesh, jax.random.key(0), batch)
  params, shard = params["params"], shard["params"]
  params = ckptlib.load_initial_weights(params, shard, [f"decoder={tmp_path / 'qwen_jax'}::model"])

  sd = {k: v.numpy() for k, v in hf.state_dict().items()}
  d = jax.device_get(params["decoder"])
  np.testing.assert_array_equal(d["embed_tokens"]["embedding"], sd["model.embed_tokens.weight"])
  np.testing.assert_array_equal(d["norm"]["weight"], sd["model.norm.weight"])
  for i in range(2):
    p = f"model.layers.{i}."
    L = d[f"layers_{i}"]
    for n in ("q_proj", "k_proj", "v_proj"):
      np.testing.assert_array_equal(L["self_attn"][n]["kernel"], sd[p + f"self_attn.{n}.weight"].T)
      np.testing.assert_array_equal(L["self_attn"][n]["bias"], sd[p + f"self_attn.{n}.bias"])
    np.testing.assert_array_equal(L["self_attn"]["o_proj"]["kernel"], sd[p + "self_attn.o_proj.weight"].T)
    for n in ("gate_proj", "up_proj", "down_proj"):
      np.testing.assert_array_equal(L["mlp"][n]["kernel"], sd[p + f"mlp.{n}.weight"].T)
    np.testing.assert_array_equal(L["input_layernorm"]["weight"], sd[p + "input_layernorm.weight"])
    np.testing.assert_array_equal(L["post_attention_layernorm"]["weight"], sd[p + "post_attention_layernorm.weight"])

  # ... and the DreamFoley decoder computes what transformers computes on the same input embeddings.
  x = np.random.default_rng(0).normal(size=(2, 9, 56)).astype(np.float32)
  mask = np.ones((2, 9), bool)
  h, _ = model.apply({"params": params}, jnp.asarray(x), jnp.asarray(mask),
                     jnp.broadcast_to(jnp.arange(9), (2, 9)), method=lambda m, *a: m.decode(*a))
  with torch.no_grad():
    ref = hf.model(inputs_embeds=torch.from_numpy(x)).last_hidden_state.numpy()
  np.testing.assert_allclose(np.asarray(h), ref, rtol=1e-5, atol=1e-5)
