"""Install with ``pip install -e .``; the ``kpmask`` command is ``python run.py``."""
from setuptools import setup

setup(
    name="kpmask",
    version="0.1.0",
    description="Image animation with keypoint masks: one source image moved by a driving video",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["modules", "modules.core", "modules.nets", "modules.config", "modules.data", "modules.training",
              "modules.families", "modules.evaluation", "modules.inference", "modules.app"],   # the layers, bottom up
    # The top-level stage scripts are importable modules too (run.py is the console entry point).
    py_modules=["run", "train", "logger", "frames_dataset", "reconstruction", "animate"],
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",   # the release paired with torch 2.1; later pairs work too
        "numpy",
        "pyyaml>=5.1",
        "imageio",
        "imageio-ffmpeg",
        "pillow",
        "scikit-image",
        "scipy",
        "tqdm",
        "tensorboard",
    ],
    extras_require={
        "test": ["pytest", "playwright"],     # playwright: the browser tests of the web page (tests/test_browser.py)
        # --mode app: the web page (gradio 6 asks for pillow < 13)
        "app": ["gradio>=6,<7", "pillow<13"],
        # --engine onnxruntime / auto: the exported parts run in ONNX Runtime (onnx 1.22 is the newest that
        # co-installs with the metrics extra's protobuf < 5)
        "engines": ["onnx>=1.16,<1.23", "onnxruntime>=1.17", "openvino>=2025.0"],
        # Landmark metrics (AKD, MKR, AED) and --find_best_frame on real videos. mediapipe 0.10.14 needs
        # protobuf < 5; tensorboard 2.21 needs protobuf >= 6.31, so the extra holds tensorboard below it.
        "metrics": ["mediapipe==0.10.14", "protobuf>=4.25,<5", "tensorboard<2.21", "dlib-bin",
                    "face-recognition-models"],
    },
    entry_points={"console_scripts": ["kpmask=run:main"]},
)
