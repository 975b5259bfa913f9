"""ament_python package vpr_ros; also pip-installable (console scripts then land in the environment's bin/)."""

from glob import glob

from setuptools import find_packages, setup

package_name = "vpr_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(include=["vpr_ros", "vpr_ros.*"]),
    # The Patch-NetVLAD matching graphs, read with importlib.resources (vpr_ros/core/patchnetvlad/matching.py).
    package_data={"vpr_ros.core.patchnetvlad": ["graphs/*.onnx"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.rviz")),
        # The default encoder, its model card and its licence (models/LICENSE.*).
        ("share/" + package_name + "/models", glob("models/*.yaml") + glob("models/*.onnx") + glob("models/LICENSE.*")),
    ],
    install_requires=["setuptools"],
    # build_map --executor ray (vpr_ros/core/ray_executor.py); the same pin as requirements/ray.txt.
    extras_require={"ray": ["ray==2.60.0"]},
    zip_safe=True,
    maintainer="vpr_ros maintainers",
    maintainer_email="vpr_ros@example.org",
    description="Visual place recognition for ROS 2: relocalization and loop-closure candidates.",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "build_map = vpr_ros.cli.build_map:entry_point",
            "localize = vpr_ros.nodes.localize:main",
            "pose_graph = vpr_ros.nodes.pose_graph:main",
            "evaluate = vpr_ros.cli.evaluate:entry_point",
            "vpr_convert = vpr_ros.cli.convert:entry_point",
        ],
    },
)
