"""The baseline: NetDissect-Lite's tally loop, written here in NumPy (our own code).

Per image and per unit, as ``tally_job`` in NetDissect-Lite's feature_operation.py: skip
the unit when its map's maximum is not above the threshold, else upsample the map to the
label size (``imresize(..., mode="F")``, i.e. PIL's bilinear resize of a float image), find
the active pixels, ``bincount`` the labels under them over all planes, and add image-level
labels for the whole mask. The union rule is Lite's.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def lite_tally(features, thresholds, label_planes, image_labels, label_category, num_categories):
    """G, I, A (int64) for activations (N, h, w, U) and label planes (N, P, sh, sw)."""
    num_images, units = features.shape[0], features.shape[-1]
    label_height, label_width = label_planes.shape[-2:]
    num_labels = len(label_category)
    category_onehot = np.zeros((num_labels, num_categories), np.int64)
    has_category = label_category >= 0
    category_onehot[np.flatnonzero(has_category), label_category[has_category]] = 1
    G = np.zeros(num_labels, np.int64)
    I = np.zeros((units, num_labels), np.int64)
    A = np.zeros((units, num_categories), np.int64)
    for i in range(num_images):
        pixels = label_planes[i]
        scalars = [int(s) for s in image_labels[i] if s]
        for s in scalars:
            G[s] += label_height * label_width
        counts = np.bincount(pixels.ravel(), minlength=num_labels)
        counts[0] = 0
        G += counts
        for u in range(units):
            feature_map = features[i, :, :, u]
            if feature_map.max() <= thresholds[u]:
                continue
            image = Image.fromarray(np.ascontiguousarray(feature_map, np.float32), mode="F")
            mask = np.asarray(image.resize((label_width, label_height), Image.BILINEAR))
            indexes = np.argwhere(mask > thresholds[u])
            area = len(indexes)
            hits = np.bincount(
                pixels[:, indexes[:, 0], indexes[:, 1]].ravel(), minlength=num_labels
            )
            hits[0] = 0
            I[u] += hits
            hit_categories = hits @ category_onehot
            for s in scalars:
                hit_categories = hit_categories + category_onehot[s]
                I[u, s] += area
            A[u] += area * (hit_categories > 0)
    return G, I, A
