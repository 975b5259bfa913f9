"""Settings of the localize node (ROS-free, so CLIs such as ``evaluate`` read the same file)."""

from __future__ import annotations

from dataclasses import dataclass

from vpr_ros.config import section, setting
from vpr_ros.core.geometry.closure import ClosureGeometryConfig
from vpr_ros.core.image import DEFAULT_MAX_PIXELS
from vpr_ros.core.localizer import LocalizerConfig
from vpr_ros.core.loop_closure import LoopClosureConfig
from vpr_ros.core.online_map import OnlineMapConfig


@dataclass(frozen=True)
class LocalizeNodeConfig:
    """Parameters of the localize node; nested sections become dotted ROS parameter names."""

    map_path: str = setting("", "reference map directory made by build_map (required with map_mode fixed; with "
                            "online, the prior map the keyframes are added to, or empty to start from nothing)")
    map_mode: str = setting("fixed", "fixed = localize against map_path as it is; online = add keyframes from the "
                            "camera to the map as the robot drives (loop closures within the run; ~/save_map "
                            "writes it)", choices=("fixed", "online"))
    verify_map: bool = setting(True, "check the sha256 of every map file at load (slower for huge maps)")
    search_device: str = setting("auto", "where the map's FAISS index is searched: auto = a GPU copy when FAISS has "
                                 "GPU support (make gpu-venv) and the map fits, else the CPU; cuda = the same, with a "
                                 "warning when it falls back; cpu (fixed maps; online maps search on the CPU)",
                                 choices=("auto", "cpu", "cuda"))
    autostart: bool = setting(True, "configure and activate the node at start (lifecycle), as `ros2 run` users "
                              "expect; false = stay unconfigured until a lifecycle manager configures it (nav2 style)")
    image_transport: str = setting("raw", "subscribe to sensor_msgs/Image on 'image' (raw) or to "
                                   "sensor_msgs/CompressedImage on 'image/compressed' (compressed)",
                                   choices=("raw", "compressed"))
    max_pixels: int = setting(DEFAULT_MAX_PIXELS, "largest image (width x height) the node decodes; larger ones are "
                              "refused from their header before decoding (decompression bombs)", min=1)
    publish_candidates: bool = setting(True, "publish ~/candidates (PoseArray) and ~/matches (PlaceCandidates)")
    diagnostics_period: float = setting(1.0, "seconds between /diagnostics messages", min=0.05)
    position_sigma_min: float = setting(
        1.0, "pose standard deviation (map units) reported at confidence 1", min=0.0)
    position_sigma_max: float = setting(
        25.0, "pose standard deviation (map units) reported at confidence 0", min=0.0)
    yaw_sigma_deg: float = setting(
        15.0, "heading standard deviation (degrees) at confidence 1; grows like the position sigma", min=0.0)
    localizer: LocalizerConfig = section(LocalizerConfig)
    online_map: OnlineMapConfig = section(OnlineMapConfig)
    loop_closure: LoopClosureConfig = section(LoopClosureConfig)
    geometry: ClosureGeometryConfig = section(ClosureGeometryConfig)

    def __post_init__(self) -> None:
        if self.position_sigma_max < self.position_sigma_min:
            raise ValueError("position_sigma_max must be >= position_sigma_min")
