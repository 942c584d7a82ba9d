"""Image-text retrieval with a dual encoder (timm image tower, transformers text tower), Flickr30k style."""
