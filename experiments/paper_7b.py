"""DreamFoley as published: Qwen2.5-7B decoder, EVA-CLIP-g/14 + Synchformer, K = 8 higgs codebooks.

Every number the paper states appears here once, with the section it comes from; everything else is
marked OUR CHOICE (the paper leaves it unsaid).

  python tools/train.py --config experiments/paper_7b.py --workdir gs://BUCKET/dreamfoley_7b \
      --config.train.pretrained_decoder=/ckpt/qwen7b_jax --config.data.train_records='/data/records/train-*'
  python tools/model_summary.py --config experiments/paper_7b.py
  python tools/aot_compile.py --config experiments/paper_7b.py --topology v5p-128
"""
import ml_collections

PAPER_LOSS_WEIGHTS = [0.240, 0.192, 0.154, 0.123, 0.099, 0.079, 0.063, 0.050]


def get_config():
  c = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict()
  # Sec. 3.1: the backbone is Qwen2.5-7B (28 layers, width 3584, 28 query / 4 kv heads).
  c.model.decoder = ml_collections.ConfigDict(dict(
      preset="qwen2.5-7b",
      hf_config="",                  # or a local Qwen2.5-7B config.json to build from
      dtype="bfloat16",              # OUR CHOICE: bf16 compute, fp32 master weights
      param_dtype="float32",
      scan_layers=True,              # OUR CHOICE (compile time, memory)
      remat_policy="full",           # OUR CHOICE: fits global batch 1024 on v5p
      attention_impl="xla",
  ))
  c.model.num_codebooks = 8                      # Sec. 3.2: higgs-audio-v2 tokenizer, 8 RVQ codebooks
  c.model.codebook_size = 1024                   # Sec. 3.2: 1024 entries per codebook (25 frames/s)
  c.model.loss_weights = PAPER_LOSS_WEIGHTS      # Sec. 5.1: decaying per-codebook CE weights
  c.model.use_sync = True                        # Sec. 3.2, eq. 1: audio-aligned encoder (Synchformer)
  c.model.use_clip = True                        # Sec. 3.2, eq. 1: text-aligned encoder (EVA-CLIP-g/14)
  c.model.sync_dim = 768                         # Synchformer token width
  c.model.clip_dim = 1024                        # EVA01-g-14 projected embedding width
  c.model.sync_rate = 25.0                       # Sec. 3.2: r_a = 25 fps
  c.model.clip_rate = 4.0                        # Sec. 3.2: r_t = 4 fps
  c.model.upsample = "nearest"                   # Sec. 3.2: up() by r_a/r_t; nearest = OUR READING
  c.model.projector_depth = 2                    # OUR CHOICE: Linear-GELU-Linear video projector
  c.model.head_hidden = 0                        # OUR CHOICE: head hidden = decoder width
  c.model.head_depth = 2                         # Sec. 3.2: K MLP heads; depth 2 is OUR CHOICE
  c.model.null_text_len = 8                      # OUR CHOICE: length of the learnable null text sequence
  c.model.null_video_len = 8                     # OUR CHOICE: length of the learnable null video sequence
  c.model.learnable_pad = True                   # Eq. 2: learnable padding in vacant delay positions
  c.model.cfg_drop_text = 0.1                    # Sec. 5.1: text condition dropped with p = 0.1
  c.model.cfg_drop_video = 0.1                   # Sec. 5.1: video condition dropped with p = 0.1
  c.model.position_scheme = "sequential"         # OUR CHOICE: plain causal positions, as a Qwen2 LM
  # features: encoders run offline (tools/extract_features.py) and are frozen (our reading of sec. 3.2);
  # frames: the encoders run inside the model on uint8 frames (params eva_clip/..., synchformer/...).
  c.model.vision_mode = "features"
  # Sec. 3.2: Synchformer (MMAudio's visual branch; its preset: 16-frame windows, stride 8, as in MMAudio) and
  # EVA-CLIP-g/14; pretrained and frozen (OUR READING: offline features, or train.frozen_regex in frames mode).
  c.model.synchformer = ml_collections.ConfigDict(dict(preset="synchformer"))
  c.model.eva = ml_collections.ConfigDict(dict(preset="eva01-g-14"))

  c.data = ml_collections.ConfigDict(dict(
      crop_min_s=2.0, crop_max_s=10.0,   # Sec. 5.1: random crops of 2-10 s
      max_text_len=64,                   # OUR CHOICE
      train_records="",                  # glob(s) of ArrayRecord shards (tools/write_records.py)
      bucket_seconds=(4.0, 7.0, 10.0),   # OUR CHOICE: padded length buckets (crop upper edges)
      num_workers=4,                     # grain worker processes per host (0 = in-process)
      text_pad_id=0,                     # masked out; any id inside the vocab
      balance_by="",                     # e.g. 'ast_class' (build with --stages=+ast): class-balanced draws
      balance_power=1.0,                 # weight = count(class) ** -power (data/balance.py)
  ))

  c.optim = ml_collections.ConfigDict(dict(
      name="adamw",
      lr=1e-4,                 # Sec. 5.1: AdamW, learning rate 1e-4
      b1=0.9, b2=0.95,         # OUR CHOICE
      eps=1e-8,                # OUR CHOICE
      weight_decay=0.01,       # OUR CHOICE
      warmup_steps=1000,       # OUR CHOICE
      schedule="cosine",       # OUR CHOICE (to 10% of peak)
      final_lr_frac=0.1,       # OUR CHOICE
      clip_norm=1.0,           # OUR CHOICE
  ))

  c.train = ml_collections.ConfigDict(dict(
      global_batch=1024,       # Sec. 5.1: global batch 1024
      steps=40_000,            # Sec. 5.1: 40k steps
      grad_accum=1,            # OUR CHOICE
      seed=0,
      frozen_regex=r"^(eva_clip|synchformer)/",   # frozen encoders (when run in the model)
      log_every=50,
      ckpt_every=1000,
      keep_ckpts=3,
      async_ckpt=True,
      # Sec. 3.1: the decoder starts from Qwen2.5-7B: a checkpoint converted by
      #   python tools/convert_checkpoint.py --family qwen2 --input /ckpt/Qwen2.5-7B --output /ckpt/qwen7b_jax
      # (either layer layout; restored onto the training mesh). Required unless from_scratch=True.
      pretrained_decoder="",
      from_scratch=False,      # True: random decoder init (not the paper's recipe)
      # More initial weights from converted checkpoints: 'TARGET=PATH::SOURCE' entries, e.g.
      # 'synchformer=/ckpts/sync_jax' (frames mode); PATH's subtree SOURCE -> params[TARGET].
      init_from=(),
  ))

  c.sample = ml_collections.ConfigDict(dict(
      temperature=1.0,         # Sec. 5.1: sampling temperature 1.0
      top_p=0.9,               # Sec. 5.1: top-p 0.9
      top_k=25,                # Sec. 5.1: top-k 25
      cfg_scale=3.0,           # Table 5: CFG scale 3 (the best row of the ablation)
      window_s=10.0,           # clips longer than the trained length (10 s) are generated in windows ...
      context_s=3.0,           # ... each carrying the last 3 s of audio + video as context (OUR CHOICE; sec. 7)
  ))

  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))   # OUR CHOICE: FSDP over the pod
  return c
