r"""Raw videos -> DreamFoley training records on Apache Beam (docs/data.md).

  # laptop / one machine (DirectRunner, one process per core)
  python tools/build_dataset.py --input 'videos/**/*.mp4' --out_dir data/clips \
    --codec_ckpt ckpt/higgs_jax --eva_ckpt ckpt/eva_jax --sync_ckpt ckpt/sync_jax \
    --text_tokenizer ckpt/Qwen2.5-7B/tokenizer.json
  # a CSV (path[,caption][,id]) on Dataflow: Beam's own options after --beam_pipeline_options
  python tools/build_dataset.py --input gs://b/list.csv --out_dir gs://b/clips ... --runner DataflowRunner \
    --beam_pipeline_options=project=P,region=R,temp_location=gs://b/tmp,requirements_file=req.txt
  # then: python tools/train.py ... --config.data.train_records='data/clips/train-*.array_record'

Rerunning the same command resumes (finished files are skipped); report.json / report.png say what
happened to every file. --tfds_data_dir builds the same records as a TFDS dataset instead.
"""
from __future__ import annotations

import json
import logging
import pathlib
import sys

from absl import app, flags
from absl import logging as absl_logging

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

F = flags.FLAGS
flags.DEFINE_string("input", None, "Glob ('videos/**/*.mp4', gs:// too), folder, or CSV path[,caption][,id].")
flags.DEFINE_string("out_dir", None, "Where shards, indexes and report.json go (local or gs://).")
flags.DEFINE_string("codec_ckpt", None, "Converted higgs-audio-v2 tokenizer (convert_checkpoint --family higgs).")
flags.DEFINE_string("eva_ckpt", None, "Converted EVA-CLIP-g/14 (clip_feats); with --sync_ckpt.")
flags.DEFINE_string("sync_ckpt", None, "Converted Synchformer (sync_feats); with --eva_ckpt.")
flags.DEFINE_string("text_tokenizer", None, "Qwen2.5 tokenizer.json (or its folder) for text_ids.")
flags.DEFINE_string("stages", "", "Stages to run: 'silence,clipping,static,speech,encode' (the default), "
                    "or edits of the default like '+asr,-static'; part 2: +separation, +pam, +ast, +imagebind, "
                    "+caption.")
flags.DEFINE_float("clip_seconds", 10.0, "Clip length (paper 4.1).")
flags.DEFINE_float("min_clip_seconds", 2.0, "Shortest clip kept (a shorter tail is dropped).")
flags.DEFINE_integer("short_side", 360, "Standardised video short side in px (paper 4.1).")
flags.DEFINE_integer("audio_channels", 1, "Standardised audio channels: 1 or 2.")
flags.DEFINE_float("max_silence_ratio", 0.8, "Reject clips whose silence ratio is above this.")
flags.DEFINE_float("silence_dbfs", -60.0, "A 50 ms window below this RMS level is silent.")
flags.DEFINE_float("max_clipping_ratio", 0.1, "Reject clips whose clipped-sample ratio is above this.")
flags.DEFINE_float("clip_level_dbfs", -0.1, "A sample at or above this level is clipped.")
flags.DEFINE_float("static_threshold", 2.0, "Reject as static below this median frame difference.")
flags.DEFINE_float("max_speech_ratio", 0.3, "Reject clips whose Silero speech ratio is above this.")
flags.DEFINE_float("vad_threshold", 0.5, "Silero probability counted as speech.")
flags.DEFINE_string("vad_weights", "", "silero_vad_16k.safetensors (default: the installed silero-vad's).")
flags.DEFINE_string("asr_model", "", "Local Whisper directory for the asr stage (--stages=+asr).")
flags.DEFINE_integer("asr_max_words", 2, "Reject clips where Whisper hears more words than this.")
flags.DEFINE_string("asr_language", "", "Whisper language (e.g. en); empty: detected.")
# part 2 (docs/data.md "Model stages"): each off by default, on with --stages=+name
flags.DEFINE_string("separation_model", "", "demucs htdemucs file 955717e8-8726e21a.th (--stages=+separation).")
flags.DEFINE_float("max_vocals_ratio", None, "Reject clips whose vocals stem holds more energy share than this.")
flags.DEFINE_string("separation_device", "cpu", "torch device for demucs: cpu, cuda, cuda:1.")
flags.DEFINE_string("pam_model", "", "MS-CLAP CLAP_weights_2023.pth for PAM (--stages=+pam).")
flags.DEFINE_string("pam_tokenizer", "", "GPT-2 tokenizer.json (or a folder with vocab.json + merges.txt).")
flags.DEFINE_float("min_pam", 0.3, "Reject clips whose PAM score is below this (the paper's, for MS-CLAP 2023).")
flags.DEFINE_string("ast_model", "", "Local ASTForAudioClassification directory (--stages=+ast).")
flags.DEFINE_string("imagebind_model", "", "imagebind_huge.pth (--stages=+imagebind).")
flags.DEFINE_float("min_imagebind", 0.1, "Reject clips whose ImageBind audio-video cosine is below this.")
flags.DEFINE_string("caption_audio_endpoint", "", "OpenAI-compatible base URL (http://host:port/v1) for audio captions.")
flags.DEFINE_string("caption_audio_model", "", "Audio captioner: the endpoint's model name, or a local directory.")
flags.DEFINE_string("caption_video_endpoint", "", "OpenAI-compatible base URL for video captions.")
flags.DEFINE_string("caption_video_model", "", "Video captioner: the endpoint's model name, or a local directory.")
flags.DEFINE_string("caption_llm_endpoint", "", "OpenAI-compatible base URL for the consistency check / integration.")
flags.DEFINE_string("caption_llm_model", "", "LLM: the endpoint's model name, or a local causal-LM directory.")
flags.DEFINE_enum("caption_llm_backend", "transformers", ["transformers", "jax"],
                  "A local --caption_llm_model: a transformers directory (torch), or jax: a Qwen2.5-Instruct converted "
                  "with tools/convert_checkpoint.py --family qwen2, run on the Flax Qwen2 (TPU / GPU).")
flags.DEFINE_string("caption_llm_tokenizer", "", "jax LLM: the HF directory with its tokenizer files (default: the "
                    "directory the checkpoint was converted from).")
flags.DEFINE_string("caption_api_key_env", "", "Environment variable holding the endpoints' bearer token.")
flags.DEFINE_float("caption_timeout_s", 120.0, "Seconds per caption request before it is retried.")
flags.DEFINE_integer("caption_retries", 2, "Retries of a failed/malformed caption request before rejecting.")
flags.DEFINE_bool("caption_consistency", True, "Reject clips whose audio and video captions disagree.")
flags.DEFINE_bool("store_frames", False, "Also store 224x224 uint8 frames (frames-mode configs).")
flags.DEFINE_string("mesh", "data=-1", "Encoder mesh over each worker's local devices.")
flags.DEFINE_integer("batch_size", 4, "Clips per model-stage call (Beam RunInference batch).")
flags.DEFINE_string("runner", "DirectRunner", "Beam runner: DirectRunner, DataflowRunner, FlinkRunner, ...")
flags.DEFINE_string("beam_pipeline_options", "", "Comma-separated Beam options (as tfds build takes them), "
                    "e.g. direct_num_workers=8 or project=P,region=R,temp_location=gs://b/tmp.")
flags.DEFINE_integer("num_workers", 0, "DirectRunner processes (0: one per core).")
flags.DEFINE_integer("files_per_shard", 64, "Source files per output shard.")
flags.DEFINE_string("name", "train", "Shard name prefix: NAME-<hash>.array_record.")
flags.DEFINE_bool("share_model", False, "One copy of each model per machine (Beam large_model): on an "
                  "accelerator host, so a single process owns the TPU/GPU.")
flags.DEFINE_bool("progress", True, "Per-stage progress bars (local runs).")
flags.DEFINE_bool("strict", False, "stop at the first file or clip that cannot be used: exit 1 naming it "
                  "(also in OUT_DIR/failures.json; shards already written stay and a rerun resumes from them). "
                  "Default: the good files finish, the bad ones are listed in OUT_DIR/failures.json, status 0")
flags.DEFINE_string("tfds_data_dir", None, "Build a TFDS dataset here instead (no resume, no report).")
flags.DEFINE_string("tfds_config_name", "clips", "TFDS builder config name for --tfds_data_dir (not \"default\").")


def build_config(f=F):
  from dreamfoley_jax.data.build import (alignment, captions, encode, pam, quality, separation, speech, stages,
                                         standardise, tags)

  std = standardise.StandardiseConfig(clip_seconds=f.clip_seconds, min_clip_seconds=f.min_clip_seconds,
                                      short_side=f.short_side, audio_channels=f.audio_channels)
  confs = (
      ("silence", quality.SilenceConfig(threshold_dbfs=f.silence_dbfs, max_ratio=f.max_silence_ratio)),
      ("clipping", quality.ClippingConfig(level_dbfs=f.clip_level_dbfs, max_ratio=f.max_clipping_ratio)),
      ("static", quality.StaticConfig(threshold=f.static_threshold)),
      ("speech", speech.SpeechConfig(weights=f.vad_weights, threshold=f.vad_threshold,
                                     max_ratio=f.max_speech_ratio)),
      ("asr", speech.AsrConfig(model=f.asr_model, max_words=f.asr_max_words, language=f.asr_language)),
      ("separation", separation.SeparationConfig(model=f.separation_model, max_vocals_ratio=f.max_vocals_ratio,
                                                 device=f.separation_device)),
      ("pam", pam.PamConfig(model=f.pam_model, tokenizer=f.pam_tokenizer, min_score=f.min_pam)),
      ("ast", tags.TagsConfig(model=f.ast_model)),
      ("imagebind", alignment.AlignmentConfig(model=f.imagebind_model, min_score=f.min_imagebind)),
      ("caption", captions.CaptionConfig(
          audio_endpoint=f.caption_audio_endpoint, audio_model=f.caption_audio_model,
          video_endpoint=f.caption_video_endpoint, video_model=f.caption_video_model,
          llm_endpoint=f.caption_llm_endpoint, llm_model=f.caption_llm_model, llm_backend=f.caption_llm_backend,
          llm_tokenizer=f.caption_llm_tokenizer, api_key_env=f.caption_api_key_env,
          timeout_s=f.caption_timeout_s, retries=f.caption_retries, check_consistency=f.caption_consistency)),
      ("encode", encode.EncodeConfig(codec_ckpt=f.codec_ckpt or "", eva_ckpt=f.eva_ckpt or "",
                                     sync_ckpt=f.sync_ckpt or "", text_tokenizer=f.text_tokenizer or "",
                                     store_frames=f.store_frames, mesh=f.mesh)))
  return stages.BuildConfig(standardise=std, stages=stages.parse_stages(f.stages), stage_configs=confs,
                            batch_size=f.batch_size)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]} (Beam options go in --beam_pipeline_options)")
  logging.getLogger("apache_beam").setLevel(logging.WARNING)
  absl_logging.set_verbosity(absl_logging.WARNING)   # orbax restores log every file at INFO
  from dreamfoley_jax.data.build import beam_pipeline, report, run

  if not F.input:
    raise app.UsageError("--input is required (a glob, a folder or a CSV)")
  try:
    cfg = build_config()
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  extra = [o.strip() for o in F.beam_pipeline_options.split(",") if o.strip()]
  # the model stages' weights, checked here: a missing one would otherwise reject every clip in the workers
  need = {"separation": ["separation_model"], "pam": ["pam_model", "pam_tokenizer"], "ast": ["ast_model"],
          "imagebind": ["imagebind_model"],
          "caption": ["caption_audio_model", "caption_video_model", "caption_llm_model"]}   # integration: always
  for stage, names in need.items():
    if stage not in cfg.stages:
      continue
    for n in names:
      v = getattr(F, n)
      if not v:
        raise app.UsageError(f"--stages includes {stage}: --{n} is required (docs/data.md \"Model stages\")")
      local = not n.startswith("caption_") or not getattr(F, n.replace("_model", "_endpoint"))
      if local and not pathlib.Path(v).expanduser().exists():
        raise app.UsageError(f"--{n}={v}: no such file or directory (weights are read by local path)")
  if "caption" in cfg.stages and F.caption_llm_backend == "jax":
    meta = pathlib.Path(F.caption_llm_model).expanduser() / "dreamfoley_meta.json"
    if not meta.exists() or json.loads(meta.read_text()).get("family") != "qwen2":
      raise app.UsageError(f"--caption_llm_model={F.caption_llm_model}: not a checkpoint converted with "
                           "tools/convert_checkpoint.py --family qwen2 (--caption_llm_backend jax runs one)")
  if "encode" in cfg.stages and not F.codec_ckpt:
    raise app.UsageError("--codec_ckpt is required: records need audio_codes (or leave out the encode stage "
                         "with --stages=-encode to only filter)")
  if F.tfds_data_dir:
    from dreamfoley_jax.data.build import tfds_dataset

    c = tfds_dataset.ClipsConfig(name=F.tfds_config_name, input=F.input, codec_ckpt=F.codec_ckpt or "",
                                 eva_ckpt=F.eva_ckpt or "", sync_ckpt=F.sync_ckpt or "",
                                 text_tokenizer=F.text_tokenizer or "", stages=",".join(cfg.stages),
                                 clip_seconds=F.clip_seconds, min_clip_seconds=F.min_clip_seconds,
                                 short_side=F.short_side, audio_channels=F.audio_channels,
                                 batch_size=F.batch_size)
    d = tfds_dataset.build(F.tfds_data_dir, c, beam_pipeline.pipeline_options(F.runner, extra, F.num_workers))
    print(f"TFDS dataset: {d}\n  train with --config.data.train_records='tfds:{d}'")
    return
  if not F.out_dir:
    raise app.UsageError("--out_dir is required")
  try:
    rep = run.build_dataset(F.input, F.out_dir, cfg, runner=F.runner, beam_options=extra,
                            num_workers=F.num_workers, name=F.name, files_per_shard=F.files_per_shard,
                            show_progress=F.progress, share_model=F.share_model, strict=F.strict)
  except beam_pipeline.StrictFailure as e:
    print(f"build_dataset: error: {e} (--strict: stopped at the first failure; {F.out_dir}/failures.json)",
          file=sys.stderr)
    sys.exit(1)
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from None
  print("\n".join(report.summary_lines(rep)))
  last = rep["last_run"]
  print(f"this run: {last['inputs']} inputs, {last['skipped_done']} already done, {last['seconds']:.1f} s; "
        f"report: {F.out_dir}/report.json, {F.out_dir}/report.png")
  print(f"train with --config.data.train_records='{F.out_dir}/{F.name}-*.array_record'")
  failed = rep.get("failures", [])
  if failed:
    print(f"{len(failed)} failed (files or clips that could not be used; reasons in {F.out_dir}/failures.json)")


if __name__ == "__main__":
  app.run(main)
