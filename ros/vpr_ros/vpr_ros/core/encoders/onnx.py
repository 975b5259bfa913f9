"""Image encoder: ONNX model + model card -> local feature maps, run with ONNX Runtime (CUDA when present).

``encoder.device`` picks ONNX Runtime's provider (:func:`vpr_ros.core.ort.providers`): ``cpu``, ``cuda``,
``tensorrt`` (an engine per input size, built at first use and cached under ``encoder.tensorrt_cache``) or
``auto``. A GPU device this ONNX Runtime lacks is refused at start with one line. On a GPU the batch is run with
IO binding (:class:`vpr_ros.core.ort.BoundRunner`): :meth:`OnnxEncoder.device_features` leaves the feature maps in
device memory for the graphs that follow, :meth:`OnnxEncoder.features` copies them to the host once.

A model is an ONNX file plus a model card (same stem, ``.yaml``) that says what the graph expects and
returns. The graph takes RGB float32 (B, 3, H, W) in 0..255 (normalisation lives inside the graph, so no
preprocessing constant can drift between training, export and the node). The card's ``kind`` says what
comes out:

* ``backbone`` -- local features (B, C, h, w); the reference map fits a VLAD head on its own images;
* ``netvlad``  -- local features (B, C, h, w) plus a trained head (NetVLAD centroids, soft assignment and
  PCA / WPCA) in the ``.npz`` file named by the card's ``head_file``; maps use that head as is;
* ``global``   -- global descriptors (B, P) directly (e.g. weights-free thumbnails); no head.

Aggregation to a global descriptor happens in numpy (:mod:`vpr_ros.core.vlad`), so every kind shares one
tested implementation of NetVLAD, IntegralVLAD patches and PCA.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vpr_ros.core.encoders.base import EncoderConfig
from vpr_ros.core.encoders.model_card import ModelCard
from vpr_ros.core.files import sha256_file
from vpr_ros.core.image import to_network_input
from vpr_ros.core.paths import resolve_path
from vpr_ros.core.vlad import VladHead
from vpr_ros.errors import InputError


class OnnxEncoder:
    """Runs an encoder ONNX model on RGB images.

    Example (the default model, shipped in models/, on a corridor frame resized to 480 x 640):
        >>> from vpr_ros.core.image import load_rgb
        >>> from vpr_ros.core.paths import resolve_path
        >>> enc = OnnxEncoder(EncoderConfig(threads=1))
        >>> rgb = load_rgb(resolve_path("data/corridor/query/0000000.jpg"))
        >>> enc.features([rgb], 480, 640).shape
        (1, 112, 30, 40)
    """

    def __init__(self, config: EncoderConfig | None = None) -> None:
        from vpr_ros.core import ort

        self.config = config or EncoderConfig()
        self.model_path = resolve_path(self.config.model, what="encoder model")
        self.card = ModelCard.load(self.model_path.with_suffix(".yaml"))
        self.sha256 = sha256_file(self.model_path)
        if self.sha256 != self.card.onnx_sha256:
            raise InputError(
                f"{self.model_path}: sha256 {self.sha256[:12]}... does not match its model card "
                f"({self.card.onnx_sha256[:12]}...): the file was changed or the card is stale")
        # Refused here, at start, when the device's provider is missing (one line naming encoder.device).
        requested = ort.providers(self.config.device, what="encoder.device")
        #: One session for cpu / cuda (key None); tensorrt: one per input size (its engines are per shape).
        self._sessions: dict[tuple[int, int] | None, Any] = {}
        self._runners: dict[tuple[int, int] | None, ort.BoundRunner] = {}
        if self.config.device == "tensorrt":
            self.session = None
            self.providers = [p if isinstance(p, str) else p[0] for p in requested]
        else:
            self.session = ort.session(self.model_path, requested, self.config.threads, what="encoder.device")
            self._sessions[None] = self.session
            self.providers = self.session.get_providers()
        # A failed run raises with the whole message; ONNX Runtime's own log line of it would be a second copy.
        self._run_options = ort.onnxruntime.RunOptions()
        self._run_options.log_severity_level = 4
        self.head = self._load_head()

    def _load_head(self) -> VladHead | None:
        """The trained head of a ``netvlad`` model (checked against the card's sha256), else None."""
        if self.card.kind != "netvlad":
            return None
        path = self.model_path.parent / str(self.card.raw["head_file"])
        expected = self.card.raw.get("head_sha256")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: head file named by the model card of {self.model_path} is missing")
        if expected and sha256_file(path) != expected:
            raise InputError(f"{path}: sha256 does not match the model card (file changed or card stale)")
        with np.load(path) as npz:
            return VladHead.from_arrays(dict(npz))

    def _session_key(self, height: int, width: int) -> tuple[int, int] | None:
        return (height, width) if self.config.device == "tensorrt" else None

    def session_for(self, height: int, width: int) -> Any:
        """The ONNX Runtime session that runs inputs of (height, width); with ``tensorrt``, made (and its engine
        built or read from the cache) on first use of that size."""
        from vpr_ros.core import ort

        key = self._session_key(height, width)
        if key not in self._sessions:
            trt = ort.TensorrtSettings(self.config.tensorrt_cache, self.sha256, self.card.input_name,
                                       self.config.batch_size, 3, height, width, self.config.tensorrt_fp16)
            trt.cache_dir.mkdir(parents=True, exist_ok=True)
            requested = ort.providers("tensorrt", what="encoder.device", tensorrt=trt)
            self._sessions[key] = ort.session(self.model_path, requested, self.config.threads, what="encoder.device")
            self.session = self._sessions[key]
            self.providers = self.session.get_providers()
        return self._sessions[key]

    def _runner(self, height: int, width: int) -> Any:
        from vpr_ros.core import ort

        key = self._session_key(height, width)
        if key not in self._runners:
            self._runners[key] = ort.BoundRunner(self.session_for(height, width))
        return self._runners[key]

    @property
    def on_gpu(self) -> bool:
        from vpr_ros.core import ort

        return ort.device_of(self.providers) == "cuda"

    def device_features(self, images: list[np.ndarray], height: int, width: int) -> Any:
        """Local features of one batch (at most ``batch_size`` images), left where the session keeps them: an
        ``OrtValue`` in GPU memory on cuda / tensorrt, to be fed to the next graph without a copy."""
        self.check_input_size(height, width)
        if len(images) > self.config.batch_size:
            raise ValueError(f"device_features takes one batch of at most {self.config.batch_size} images, "
                             f"got {len(images)}")
        batch = to_network_input(images, height, width)
        return self._runner(height, width).run({self.card.input_name: batch}, [self.card.output_name])[0]

    @property
    def id(self) -> str:
        return self.card.id

    def describe(self) -> dict[str, Any]:
        """Identity written into maps, so a map refuses a different encoder."""
        return {"id": self.card.id, "kind": self.card.kind, "onnx_sha256": self.sha256,
                "channels": self.card.channels, "stride": self.card.stride}

    def check_input_size(self, height: int, width: int) -> None:
        """InputError unless (height, width) suits the model: cards with ``input.size_multiple_required`` (ViT/14
        imports: their graph would drop the pixels beyond the last whole patch) take only multiples of
        ``input.size_multiple``."""
        spec = self.card.raw.get("input", {})
        multiple = int(spec.get("size_multiple", 1))
        if spec.get("size_multiple_required") and (height % multiple or width % multiple):
            raise InputError(f"network input {width}x{height} (WxH): model {self.card.id} takes widths and heights "
                             f"that are multiples of {multiple} pixels; set image_width / image_height to multiples "
                             f"of {multiple}, or 0 for the automatic size")

    def features(self, images: list[np.ndarray], height: int, width: int) -> np.ndarray:
        """Local features for RGB uint8 images resized to (height, width).

        Shape:
            returns: (B, C, ceil(height / stride), ceil(width / stride)) float32.
        """
        self.check_input_size(height, width)
        out = []
        bs = self.config.batch_size
        try:
            for start in range(0, len(images), bs):
                if self.on_gpu:
                    out.append(self.device_features(images[start:start + bs], height, width).numpy())
                    continue
                batch = to_network_input(images[start:start + bs], height, width)
                out.append(self.session_for(height, width).run([self.card.output_name],
                                                               {self.card.input_name: batch}, self._run_options)[0])
        except Exception as exc:
            # numpy raises MemoryError, ONNX Runtime its own Fail ("Failed to allocate memory for requested
            # buffer"): either way the input size asked for more memory than this machine gives.
            if not isinstance(exc, MemoryError) and "Failed to allocate memory" not in str(exc):
                raise
            raise InputError(f"network input {width}x{height} (batch of {min(bs, len(images))}) needs more memory "
                             f"than is available: choose a smaller input size (image_width / image_height) or "
                             f"encoder.batch_size") from None
        return np.concatenate(out, axis=0) if out else np.empty((0, self.card.channels, 0, 0), np.float32)
