"""Package metadata for toxigs, read from settings.ini (the nbdev 2 layout, without pkg_resources)."""
from configparser import ConfigParser
from pathlib import Path

import setuptools

config = ConfigParser(delimiters=["="])
config.read(Path(__file__).parent / "settings.ini", encoding="utf-8")
cfg = config["DEFAULT"]

licenses = {"apache2": ("Apache Software License 2.0", "OSI Approved :: Apache Software License")}
statuses = ["1 - Planning", "2 - Pre-Alpha", "3 - Alpha", "4 - Beta", "5 - Production/Stable", "6 - Mature", "7 - Inactive"]
license_name, license_classifier = licenses[cfg["license"]]

def split_requirements(key: str) -> list[str]:
    "Requirements in settings.ini are whitespace separated; none contains a space."
    return cfg.get(key, "").split()

setuptools.setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    author=cfg["author"],
    author_email=cfg["author_email"],
    license=license_name,
    url=cfg["git_url"],
    keywords=cfg["keywords"].split(),
    classifiers=[
        f"Development Status :: {statuses[int(cfg['status'])]}",
        f"Intended Audience :: {cfg['audience']}",
        f"License :: {license_classifier}",
        f"Natural Language :: {cfg['language']}",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    python_requires=f">={cfg['min_python']}",
    packages=setuptools.find_packages(include=["toxigs", "toxigs.*"]),
    include_package_data=True,
    package_data={"toxigs": ["assets/**/*"]},
    install_requires=split_requirements("requirements"),
    extras_require={
        "dev": split_requirements("dev_requirements"),
        "gemma": split_requirements("gemma_requirements"),
        "attacks": split_requirements("attacks_requirements"),
        "utility": split_requirements("utility_requirements"),
        "lora": split_requirements("lora_requirements"),
        "tracking": split_requirements("tracking_requirements"),
    },
    entry_points={
        "console_scripts": split_requirements("console_scripts"),
        "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"],
    },
    zip_safe=False,
)
