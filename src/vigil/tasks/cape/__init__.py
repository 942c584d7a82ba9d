"""Category-agnostic keypoint estimation (CAPE): given support examples of a category, find its keypoints."""
