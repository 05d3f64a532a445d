"""The audio vocabulary: log-mel frames replaced by the nearest entries of codebooks fitted with k-means.

Level 0 holds ``size`` entries, the first of them exact silence (every frame at the floor), the rest
k-means centroids of the training clips' frames (seeded, so the same data gives the same codebook). With
``levels=2`` a second, residual codebook is fitted on what level 0 leaves (frame minus its entry): a frame is
then two tokens, and its reconstruction the sum of both entries. Codebooks are ``(levels, size, N_MELS)``
float32 arrays, saved with the model's weights.
"""

from __future__ import annotations

import numpy as np

from aigc.tasks.speech.audio import FLOOR_DB


def fit_codebooks(frames: np.ndarray, size: int, levels: int, seed: int) -> np.ndarray:
    """(F, M) training frames -> (levels, size, M) codebooks. Level 0's entry 0 is silence."""
    from sklearn.cluster import MiniBatchKMeans

    voiced = frames[(frames > FLOOR_DB).any(axis=1)]
    unique = np.unique(voiced, axis=0)
    if len(unique) < size:
        raise ValueError(f"{len(unique)} distinct frames are fewer than data.codebook_size={size}; "
                         "add clips or lower data.codebook_size")
    books, residual = [], voiced
    for level in range(levels):
        count = size - 1 if level == 0 else size
        kmeans = MiniBatchKMeans(n_clusters=count, random_state=seed + level, n_init=3, batch_size=4096,
                                 max_iter=200).fit(residual)
        centroids = kmeans.cluster_centers_.astype(np.float32)
        if level == 0:
            centroids = np.concatenate([np.full((1, frames.shape[1]), FLOOR_DB, np.float32), centroids])
        books.append(centroids)
        residual = residual - centroids[nearest(residual, centroids)]
    return np.stack(books)


def nearest(frames: np.ndarray, entries: np.ndarray) -> np.ndarray:
    """(F, M), (K, M) -> (F,) index of each frame's nearest entry (squared Euclidean distance)."""
    distances = (frames**2).sum(1, keepdims=True) - 2 * frames @ entries.T + (entries**2).sum(1)
    return distances.argmin(axis=1)


def encode_frames(frames: np.ndarray, books: np.ndarray) -> np.ndarray:
    """(T, M) frames -> (T, levels) codes, level by level on the residual; silent frames take silence."""
    codes, residual = [], frames.astype(np.float32)
    for level, entries in enumerate(books):
        index = nearest(residual, entries)
        if level == 0:
            index[(frames <= FLOOR_DB).all(axis=1)] = 0
        codes.append(index)
        residual = residual - entries[index]
    return np.stack(codes, axis=1)


def decode_codes(codes: np.ndarray, books: np.ndarray) -> np.ndarray:
    """(T, levels) codes -> (T, M) frames: the sum of each level's entry, clipped to the dB range."""
    frames = sum(books[level][codes[:, level]] for level in range(codes.shape[1]))
    frames = np.where((codes[:, :1] == 0), FLOOR_DB, frames)  # silence stays exact silence
    return np.clip(frames, FLOOR_DB, 0.0).astype(np.float32)
