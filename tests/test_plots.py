"""plots.write_spectrogram: the one spectrogram picture (generate's <stem>.png, the main job's samples/*.png)."""
import numpy as np

from dreamfoley_jax import plots


def test_spectrogram_png_is_written_whole(tmp_path):
  sr = 24000
  audio = np.sin(2 * np.pi * 440 * np.arange(sr) / sr).astype(np.float32)
  plots.write_spectrogram(tmp_path / "a.png", audio, sr, title="a tone")
  plots.write_spectrogram(tmp_path / "b.png", audio, sr, "events", event_times=[0.2, 0.5], detected=[0.21],
                          nfft=512, hop=128, figsize=(8, 3), title_size=9)
  for name, size in (("a.png", (1000, 350)), ("b.png", (800, 300))):
    data = (tmp_path / name).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (w, h) == size                                   # figsize x dpi 100
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]   # no temp file left behind
