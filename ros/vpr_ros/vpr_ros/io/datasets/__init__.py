"""Dataset converters: public place-recognition datasets -> rosbag2 + pose file + ground truth (``vpr_convert``)."""
