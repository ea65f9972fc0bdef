"""A TFDS dataset builder over the same Beam pipeline: `tfds build` (where TensorFlow is installed; its CLI
imports TF) or `tools/build_dataset.py --tfds_data_dir` (no TF needed: the Python API), then
`tfds.data_source` / `data/tfds_source.py` feeds the grain pipeline.

One record format: each example's `record` feature is the project's training record (data/records.py,
msgpack bytes), so both outputs hand the trainer the same bytes; `clip_id` and `duration` are plain
features for browsing. TFDS writes whole datasets: no resume and no report (tools/build_dataset.py
without --tfds_data_dir has both).

  tfds build dreamfoley_jax/data/build/tfds_dataset.py --data_dir /data/tfds --file_format array_record \\
    --config '{"name": "clips10s", "input": "/data/videos/**/*.mp4", "codec_ckpt": "/ckpt/higgs_jax", \\
               "eva_ckpt": "/ckpt/eva_jax", "sync_ckpt": "/ckpt/sync_jax"}' \\
    --beam_pipeline_options=runner=DirectRunner,direct_running_mode=multi_processing,direct_num_workers=8
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds


@dataclasses.dataclass
class ClipsConfig(tfds.core.BuilderConfig):
  input: str = ""            # glob / folder / CSV, as tools/build_dataset.py --input
  codec_ckpt: str = ""
  eva_ckpt: str = ""
  sync_ckpt: str = ""
  text_tokenizer: str = ""
  stages: str = ""           # as --stages ("" = the default chain)
  clip_seconds: float = 10.0
  min_clip_seconds: float = 2.0
  short_side: int = 360
  audio_channels: int = 1
  batch_size: int = 4
  mesh: str = "data=-1"

  def build_config(self):
    from dreamfoley_jax.data.build import encode, stages, standardise

    std = standardise.StandardiseConfig(clip_seconds=self.clip_seconds, min_clip_seconds=self.min_clip_seconds,
                                        short_side=self.short_side, audio_channels=self.audio_channels)
    enc = encode.EncodeConfig(codec_ckpt=self.codec_ckpt, eva_ckpt=self.eva_ckpt, sync_ckpt=self.sync_ckpt,
                              text_tokenizer=self.text_tokenizer, mesh=self.mesh)
    return stages.BuildConfig(standardise=std, stages=stages.parse_stages(self.stages),
                              stage_configs=(("encode", enc),), batch_size=self.batch_size)


class DreamfoleyClips(tfds.core.GeneratorBasedBuilder):
  """Raw videos -> DreamFoley training records (docs/data.md)."""
  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [ClipsConfig(name="default", description="set input/checkpoints with --config JSON")]

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=tfds.features.FeaturesDict({
            "record": tfds.features.Tensor(shape=(), dtype=np.object_),   # records.encode_example bytes
            "clip_id": tfds.features.Text(),
            "duration": tfds.features.Scalar(dtype=np.float32),
        }))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    import apache_beam as beam

    from dreamfoley_jax.data.build import beam_pipeline, stages, standardise

    c = self.builder_config
    if not c.input:
      raise ValueError("DreamfoleyClips: set the input (--config '{\"input\": ...}')")
    cfg = c.build_config()
    stage_objs = stages.build_stages(cfg)
    spec = beam_pipeline.PipelineSpec(
        items=tuple(standardise.list_inputs(c.input)), std=cfg.standardise, stages=tuple(stage_objs),
        cfg_hash=stages.config_hash(stages.identity(cfg, stage_objs)), done=frozenset(), out_dir="")
    return beam_pipeline.KeptRecords(spec) | "Examples" >> beam.Map(
        lambda r: (r[0], {"record": r[1], "clip_id": r[0], "duration": np.float32(r[2])}))


def build(data_dir: str, config: ClipsConfig, beam_options) -> str:
  """Builds the dataset with the TFDS Python API (no TensorFlow needed); returns its directory."""
  b = DreamfoleyClips(config=config, data_dir=data_dir, file_format="array_record")
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(beam_options=beam_options))
  return str(b.data_path)
