"""The judge of what a clip says: MFCC features and a classifier trained on real clips only.

Features: 20 MFCCs of the clip's log-mel frames (silence trimmed), averaged over 8 equal stretches of the
clip, with the mean and spread of each coefficient over the whole clip: 200 numbers whatever its length.
The classifier (scikit-learn's RBF support-vector machine on standardised features) never sees a
generated clip; its accuracy on held-out *real* clips is the ceiling a generator can be compared with.
"""

from __future__ import annotations

import numpy as np

from aigc.tasks.speech.audio import log_mel, trim_silence

N_MFCC = 20
STRETCHES = 8


def features(wave: np.ndarray) -> np.ndarray:
    """(N,) waveform -> (200,) float32 features (zeros for a clip with no sound at all)."""
    import librosa

    voiced = trim_silence(wave)
    if len(voiced) < 2:
        return np.zeros(N_MFCC * (STRETCHES + 2), np.float32)
    mfcc = librosa.feature.mfcc(S=log_mel(voiced).T, n_mfcc=N_MFCC)  # (20, T)
    stretches = [part.mean(axis=1) if part.size else mfcc.mean(axis=1)
                 for part in np.array_split(mfcc, STRETCHES, axis=1)]
    return np.concatenate([*stretches, mfcc.mean(axis=1), mfcc.std(axis=1)]).astype(np.float32)


class Judge:
    """Which label a clip most likely says, fitted on labelled real clips."""

    def __init__(self, waves: list[np.ndarray], labels: list[str]):
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import SVC

        self.model = make_pipeline(StandardScaler(), SVC(C=10.0, gamma="scale"))
        self.model.fit(np.stack([features(w) for w in waves]), labels)

    def predict(self, waves: list[np.ndarray]) -> list[str]:
        return list(self.model.predict(np.stack([features(w) for w in waves]))) if waves else []

    def accuracy(self, waves: list[np.ndarray], labels: list[str]) -> float:
        predicted = self.predict(waves)
        return float(np.mean([p == t for p, t in zip(predicted, labels)])) if labels else 0.0
