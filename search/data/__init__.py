"""Datasets (CIFAR-10/100, digits, image folders) and the one image pipeline.

``data.images`` is torch-free (Pillow and numpy) because ``serve`` preprocesses with it.
May import: ``search.core``, torch, torchvision (only where a copy is found), scikit-learn.
"""
