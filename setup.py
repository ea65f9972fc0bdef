"""dreamfoley_jax: DreamFoley (video-to-audio, autoregressive) in JAX/Flax for TPU pods."""
import setuptools

RUNTIME = [
    "jax>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "grain>=0.2.18",
    "array-record>=0.8.1",
    "tensorflow-datasets>=4.9.9",
    "numpy>=1.26",
    "absl-py>=2.1",
    "ml-collections>=1.0",
    "safetensors>=0.4",
    "tokenizers>=0.20",
    "soundfile>=0.12",
    "av>=12",
    "pillow>=10",
    "tqdm>=4.66",
    "scipy>=1.11",
    "matplotlib>=3.8",
    "tensorboardX>=2.6",
    "threadpoolctl>=3.1",
]

DATA = ["apache-beam>=2.60", "importlib-resources>=6"]

setuptools.setup(
    name="dreamfoley_jax",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["dreamfoley_jax", "dreamfoley_jax.*"]),
    # The PyTorch model code that convert/dreamfoley copies into exported HF directories (never imported).
    package_data={"dreamfoley_jax.convert": ["hf_template/*.py"]},
    install_requires=RUNTIME,
    extras_require={
        # torch pinned: an unpinned torch pulls a multi-GB CUDA build.
        # librosa: reference for the eval front-end tests only. torchlibrosa: laion_clap's front end, for
        # benchmarks/bench_clap.py (the laion_clap source itself pins numpy<2: unzip its wheel, see that tool).
        # data: tools/build_dataset.py (docs/data.md). tfds 4.9.10 imports importlib_resources for a builder
        # defined in a package although it declares it only for Python < 3.9. The Silero VAD weights come
        # from the silero-vad wheel: `pip install silero-vad==6.2.3 --no-deps` (its torch is not needed).
        # The separation stage needs `pip install demucs==4.0.1 julius==0.2.8 --no-deps` (demucs' own
        # requirements pull torchaudio, which has no build for every torch; data/build/separation.py stands in
        # for the imports inference never calls); the ast / local-caption stages need torch + transformers.
        "data": DATA,
        # gradio: tools/demo.py; selenium drives Debian's chromium in tests/test_demo.py.
        # silero-vad: the VAD weights and its TorchScript reference (tests); torch is pinned beside it.
        "test": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6", "torch==2.13.0", "transformers>=4.50",
                 "librosa>=0.10", "torchlibrosa==0.1.0", "gradio>=6.31,<7", "selenium>=4.51",
                 "silero-vad==6.2.3"] + DATA,
        "demo": ["gradio>=6.31,<7"],
        "tpu": ["jax[tpu]"],
        "cuda": ["jax[cuda12]"],
    },
)
