"""Evaluation conventions of published tables on a handmade set of names: av-benchmark's pairing (names of the
schemes it handles, and what it does to other names), KL_PANNs by exact stem, ISC_PaSST on the paired set,
ISC_PANNs on all generated clips, KL_PANNs / KL_PaSST beside their mean, IB-score x100 in the table."""
import pathlib

import numpy as np
import pytest
import soundfile as sf

from dreamfoley_jax.eval import harness, metrics
from eval_helpers import NameEmbedder
from eval_helpers import vec as _vec

DUR = 1.0
# generated stem -> the video av-benchmark pairs it with (None: unpaired there)
AV_BENCHMARK = {
    "000000014_zxpo56cpUBU_000007-0": "zxpo56cpUBU_000007",   # MMAudio's VGGSound output names (30 chars)
    "abcdefghijk_000030-1": "abcdefghijk_000030",             # id_start-k (20 chars)
    "Y---g-f_I2yQ_000001_0": "---g-f_I2yQ_000001",            # AudioSet Y-prefixed, _k (21 chars)
    "zxpo56cpUBU_000007": "zxpo56cpUBU_000007",               # the exact id (18 chars)
    "cat": "cat",                                             # any exact stem of another length
    "dog-1": None,                                            # NAME-k of another length: not cleaned
    "thunder_and_rain_xyz": None,                             # 20 chars in no scheme: cut to 18, no video
    "orphan": None,
}
# the same names under the "stem" rule: exact, else NAME-<k>
STEM = {"abcdefghijk_000030-1": "abcdefghijk_000030", "zxpo56cpUBU_000007": "zxpo56cpUBU_000007", "cat": "cat",
        "dog-1": "dog", "thunder_and_rain_xyz": "thunder_and_rain_xyz"}
VIDEOS = ["zxpo56cpUBU_000007", "abcdefghijk_000030", "---g-f_I2yQ_000001", "cat", "dog", "thunder_and_rain_xyz",
          "never_generated"]
# ten more MMAudio-style names (paired only by av-benchmark's renaming), so ISC's 10 splits have clips
EXTRA = {f"{i:09d}_vid{i:08d}_{i:06d}-0": f"vid{i:08d}_{i:06d}" for i in range(10)}


def test_av_benchmark_name_rule():
  for g, want in AV_BENCHMARK.items():
    if want is not None:
      assert harness.av_benchmark_name(g) == want, g
  assert harness.av_benchmark_name("thunder_and_rain_xyz") == "thunder_and_rain_x"
  assert harness.av_benchmark_name("dog-1") == "dog-1"
  for g, want in EXTRA.items():
    assert len(g) == 30 and harness.av_benchmark_name(g) == want


def test_pairing_rules_on_handmade_names():
  refs = dict.fromkeys(VIDEOS + list(EXTRA.values()))
  gen = dict.fromkeys(list(AV_BENCHMARK) + list(EXTRA))
  p = harness.pair(gen, refs, None, "av-benchmark")
  want = {g: r for g, r in {**AV_BENCHMARK, **EXTRA}.items() if r is not None}
  assert p.gen_to_ref == want
  assert p.gen_unpaired == ["dog-1", "orphan", "thunder_and_rain_xyz"]
  assert p.ref_unpaired == ["dog", "never_generated", "thunder_and_rain_xyz"]
  assert p.kl_panns == {"cat": "cat", "zxpo56cpUBU_000007": "zxpo56cpUBU_000007"}   # exact stems only
  assert p.report()["paired_by_renaming"] == 3 + 10
  s = harness.pair(gen, refs, None, "stem")
  assert s.gen_to_ref == STEM and s.kl_panns == STEM
  with pytest.raises(ValueError, match=r"pairing='mmaudio': expected one of \('av-benchmark', 'stem'\)"):
    harness.pair(gen, refs, None, "mmaudio")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  root = tmp_path_factory.mktemp("names")
  for sub, names in (("gen", list(AV_BENCHMARK) + list(EXTRA)), ("gt", VIDEOS + list(EXTRA.values()))):
    (root / sub).mkdir()
    for n in names:
      sf.write(root / sub / f"{n}.wav", np.zeros(int(16000 * DUR), np.float32), 16000)
  return root


def _run(folders, tmp_path, rule):
  emb = {"panns": NameEmbedder("panns", {"panns_2048": 6, "panns_logits": 5}),
         "passt": NameEmbedder("passt", {"passt_embed": 4, "passt_logits": 5})}
  inp = harness.EvalInputs(gen_dir=str(folders / "gen"), gt_audio_dir=str(folders / "gt"), duration_s=DUR,
                           cache_dir=str(tmp_path / rule), pairing=rule)
  return harness.evaluate(inp, emb)


def test_metrics_follow_av_benchmark_sets(folders, tmp_path):
  r = _run(folders, tmp_path, "av-benchmark")
  m = r["metrics"]
  f = lambda role, n, k: _vec(f"{role}/{n}", k, 5)  # noqa: E731
  paired = {g: x for g, x in {**AV_BENCHMARK, **EXTRA}.items() if x is not None}
  order = sorted(paired)                                   # av-benchmark iterates the generated stems sorted
  # KL_PANNs: exact stems only; KL_PaSST: every av-benchmark pair; KL = their mean.
  exact = ["cat", "zxpo56cpUBU_000007"]
  kl_panns = metrics.kl_softmax(np.stack([f("gt", g, "panns_logits") for g in exact]),
                                np.stack([f("gen", g, "panns_logits") for g in exact]))
  kl_passt = metrics.kl_softmax(np.stack([f("gt", paired[g], "passt_logits") for g in order]),
                                np.stack([f("gen", g, "passt_logits") for g in order]))
  assert m["KL-PANNS-softmax"] == pytest.approx(kl_panns, rel=1e-12)
  assert m["KL-PASST-softmax"] == pytest.approx(kl_passt, rel=1e-12)
  assert m["KL"] == pytest.approx((kl_panns + kl_passt) / 2, rel=1e-12)
  assert r["counts"]["KL-PANNS-softmax"] == 2 and r["counts"]["FD-PASST"] == 15
  # ISC_PaSST on the 15 paired clips in sorted order; ISC_PANNs (the table's IS) on all 18 generated clips.
  want_pa = metrics.inception_score(np.stack([f("gen", g, "passt_logits") for g in order]))
  all_gen = sorted(list(AV_BENCHMARK) + list(EXTRA))
  want_pn = metrics.inception_score(np.stack([f("gen", g, "panns_logits") for g in all_gen]))
  assert (m["ISC-PASST-mean"], m["ISC-PASST-std"]) == pytest.approx(want_pa, rel=1e-12)
  assert (m["ISC-PANNS-mean"], m["ISC-PANNS-std"]) == pytest.approx(want_pn, rel=1e-12)
  everything = metrics.inception_score(np.stack([f("gen", g, "passt_logits") for g in all_gen]))
  assert abs(everything[0] - want_pa[0]) > 1e-3                  # the set matters: the old rule would differ
  assert r["counts"]["ISC-PASST"] == 15 and r["counts"]["ISC-PANNS"] == 18
  # FD_PANNs: all generated vs all references (unpaired ones too).
  want_fd = metrics.frechet_distance(np.stack([_vec(f"gen/{g}", "panns_2048", 6) for g in all_gen]),
                                     np.stack([_vec(f"gt/{n}", "panns_2048", 6) for n in sorted(VIDEOS + list(EXTRA.values()))]))
  assert m["FD-PANN"] == pytest.approx(want_fd, rel=1e-9)
  assert r["pairing"]["rule"] == "av-benchmark" and r["pairing"]["paired"] == 15

  # The table: KL_PANNs and KL_PaSST beside KL, IB-score x100.
  r["metrics"]["IB-Score"] = 0.3312
  table = harness.write_outputs(r, tmp_path / "t.json", row_name="ours")
  head, _, row = table.splitlines()
  cells = dict(zip([h.rsplit(" ", 1)[0] for h in head.strip("|").split(" | ")[1:]], row.strip("| ").split(" | ")[1:]))
  assert cells["KL_PANNs"] == f"{kl_panns:.2f}" and cells["KL_PaSST"] == f"{kl_passt:.2f}"
  assert cells["KL"] == f"{(kl_panns + kl_passt) / 2:.2f}" and cells["IS"] == f"{want_pn[0]:.2f}"
  assert cells["IB-score"] == "33.12" and cells["DeSync"] == "-"


def test_stem_rule_switch(folders, tmp_path):
  r = _run(folders, tmp_path, "stem")
  assert r["pairing"]["rule"] == "stem" and r["pairing"]["paired"] == 5
  f = lambda role, n, k: _vec(f"{role}/{n}", k, 5)  # noqa: E731
  order = sorted(STEM)
  want = metrics.kl_softmax(np.stack([f("gt", STEM[g], "panns_logits") for g in order]),
                            np.stack([f("gen", g, "panns_logits") for g in order]))
  assert r["metrics"]["KL-PANNS-softmax"] == pytest.approx(want, rel=1e-12)
  assert r["counts"]["KL-PANNS-softmax"] == 5 and "ISC-PASST-mean" not in r["metrics"]   # 5 paired < 10 splits
  # The protocol configs choose av-benchmark's rule; --config.pairing=stem switches.
  import importlib.util

  spec = importlib.util.spec_from_file_location(
      "eval_vggsound", pathlib.Path(__file__).resolve().parents[1] / "experiments" / "eval_vggsound.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  assert c.pairing == "av-benchmark" and c.ib_scale == 100.0
