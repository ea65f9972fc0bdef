"""Tables 3-6 protocol: each ablation row is a folder of generated VGGSound-Test audio, scored exactly
as Table 1 (8 s clips); the argument names the row in the markdown table.

  python tools/evaluate.py --config experiments/eval_ablation.py:table3_sync \
      --config.gen_dir /data/ablations/vision_sync/vggsound_test --config.video_dir /data/vggsound/test_videos \
      --config.captions_csv /data/vggsound/vggsound_test_captions.csv --config.weights_dir /data/metric_weights \
      --config.ref_cache_dir /data/vggsound/eval_ref_cache
  # Table 3 rows: table3_sync table3_clip table3_both   (generate with experiments/ablation_vision.py:<v>)
  # Table 4 rows: table4_k1 table4_k4 table4_k8         (experiments/ablation_rvq.py:<k>)
  # Table 5 rows: table5_cfg1 .. table5_cfg4            (experiments/ablation_cfg.py:<s>)
  # Table 6 rows: table6_<your label>                   (the paper's remaining ablation; same protocol)
Share --config.ref_cache_dir between rows: ground-truth, video and caption features are then computed once.
"""
import pathlib
import importlib.util


def get_config(row="table3_both"):
  if not row.startswith(("table3_", "table4_", "table5_", "table6_")):
    raise ValueError(f"eval_ablation: row must start with table3_..table6_, got {row!r}")
  spec = importlib.util.spec_from_file_location("eval_vggsound", pathlib.Path(__file__).with_name("eval_vggsound.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  c.row_name = row
  return c
