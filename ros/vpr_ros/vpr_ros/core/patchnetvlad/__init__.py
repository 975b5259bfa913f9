"""Patch-NetVLAD (Hausler et al., CVPR 2021): multi-scale patch descriptors, their store in the map, matching and
spatial scoring, and the re-ranking stage that uses them.

- :mod:`.presets`      named configurations from the paper (speed / balanced / performance), storage encodings
- :mod:`.descriptors`  IntegralVLAD patch descriptors from a local feature map (eqs. 1-4)
- :mod:`.store`        the per-frame patch store kept in a reference map (spec, encode / decode, checks)
- :mod:`.query_graph`  a query's patch descriptors in one ONNX Runtime call, in the layout the matcher reads
- :mod:`.matching`     mutual nearest patches between a query and candidates, run by ONNX Runtime
- :mod:`.shipped_graphs`  the ONNX graphs shipped as package data and their shared sessions
- :mod:`.scoring`      rapid spatial and RANSAC scores, multi-scale fusion (eqs. 5-7)
- :mod:`.rerank`       the pipeline stage: global top-k candidates -> re-ranked by patch scores
"""
