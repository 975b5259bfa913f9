"""ROS-free engine: encoder, VLAD, reference map, localization pipeline (numpy, FAISS, ONNX Runtime, OpenCV)."""
