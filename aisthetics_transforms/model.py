"""The NIMA model: weights, the Keras reference network, and the LiteRT engine.

NIMA is MobileNet v1 (alpha 1.0, 224x224, global average pooling) followed by
Dropout and a Dense(10, softmax) head. The weights are the seed's HDF5 file
(Keras 2 ``save_weights`` layout), assigned layer by layer, so no code of the
seed package (which targets TensorFlow 1) is imported.

Two engines give the same numbers (to ~3e-7): ``keras`` is the reference,
``litert`` runs the same network converted once by TFLiteConverter under
ai-edge-litert with XNNPACK and is several times faster. The converted model is
cached on local disk under the weights' sha256, so a warm process never imports
TensorFlow. Everything TensorFlow-related is imported lazily for that reason.

Where the converted model is kept, converted once per machine, and staged with a job:
``model_cache``.

TensorFlow and LiteRT print pages of start-up logs from C++ (CUDA probing, converter
signatures, "Created TensorFlow Lite XNNPACK delegate"). They are silenced unless
``AISTHETICS_VERBOSE`` is set (``--verbose``); a cold cache says one line instead.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from aisthetics_transforms.console import one_line
from aisthetics_transforms.model_cache import (  # the weights' and the model's files
    WEIGHTS_FIX,
    WeightsError,
    default_weights_path,
    file_sha256,
    litert_model,
    local_weights,
    stage_litert_model,
)

DEFAULT_WEIGHTS_SHA256 = "e563ad91b3d47410e45f7238f07ab8f6abd1bd0c4b18a4b0af9c681a21a91cb2"
ENGINES = ("auto", "litert", "keras")
DEFAULT_ENGINE = "auto"  # picks litert
DEFAULT_BATCH_SIZE = 32  # images per inference call
NUM_CLASSES = 10
SCORE_VALUES = np.arange(1, NUM_CLASSES + 1, dtype=np.float64)


class Engine(Protocol):
    name: str

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(n, 224, 224, 3) float32 in [-1, 1] -> (n, 10) float32 distributions."""


VERBOSE_VARIABLE = "AISTHETICS_VERBOSE"


def verbose() -> bool:
    """Whether TensorFlow's and LiteRT's own logs are shown (``--verbose``, see :func:`show_logs`)."""
    return os.environ.get(VERBOSE_VARIABLE, "") not in ("", "0")


def show_logs() -> None:
    """``--verbose``: show TensorFlow's and LiteRT's own logs in this process and the processes it
    starts (an environment variable, so local worker processes see it too; a Dataflow worker
    calls this itself, from the option carried with the model's spec)."""
    os.environ[VERBOSE_VARIABLE] = "1"


# fds 1 and 2 are process-wide: one silenced block at a time, or a second block could
# save the first one's /dev/null as "the real stderr" and restore it for good.
_SILENCE_LOCK = threading.RLock()


@contextlib.contextmanager
def native_output_silenced():
    """Discard what is written to stdout and stderr while the block runs, by Python or by
    C++ libraries (which write to fds 1 and 2 directly), unless :func:`verbose`; then
    such output goes to stderr, as stdout is for results."""
    if verbose():
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    with _SILENCE_LOCK:
        _flush_python_streams()
        saved = os.dup(1), os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            yield
        finally:
            _flush_python_streams()  # what Python buffered inside the block goes to /dev/null too
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in (*saved, devnull):
                os.close(fd)


def _flush_python_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):  # replaced, closed or detached streams
            pass


def distribution_stats(probabilities: np.ndarray) -> tuple[float, float]:
    """(mean, sd) of NIMA's distribution over the scores 1..10, computed as the seed does:
    the probabilities, normalised, weight a histogram of the scores."""
    p = np.asarray(probabilities, dtype=np.float64)
    p = p / p.sum()
    mean = float((p * SCORE_VALUES).sum())
    sd = float(np.sqrt((np.square(SCORE_VALUES - mean) * p).sum()))
    return mean, sd


# --- weights -----------------------------------------------------------------------------


def model_version(sha256: str, engine: str) -> str:
    """Identifies weights and engine; goes into every output row."""
    return f"nima-mobilenet-{sha256[:12]}-{engine}"


# --- Keras reference network -------------------------------------------------------------


def _quiet_tensorflow() -> None:
    # TensorFlow's C++ start-up chatter (CUDA probing, CPU features) is not for users.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_keras_model():
    """MobileNet body + Dropout + Dense(10, softmax), untrained."""
    _quiet_tensorflow()
    import keras

    body = keras.applications.MobileNet(
        input_shape=(224, 224, 3), alpha=1.0, include_top=False, pooling="avg", weights=None
    )
    x = keras.layers.Dropout(0.75, name="dropout")(body.output)
    out = keras.layers.Dense(NUM_CLASSES, activation="softmax", name="dense")(x)
    return keras.Model(body.input, out, name="nima_mobilenet")


def _read_hdf5_layers(path: str, arrays: bool = True) -> dict[str, list]:
    """Layer name -> weight arrays (or only their shapes), in the file's declared order,
    from a Keras 2 weights HDF5."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise WeightsError(
            f"weights file {path!r} is not a readable HDF5 file (truncated or not HDF5? {one_line(exc)}); {WEIGHTS_FIX}"
        ) from None
    with f:
        if "layer_names" not in f.attrs:
            raise WeightsError(f"weights file {path!r} has no 'layer_names': not a Keras weights file; {WEIGHTS_FIX}")
        layers = {}
        try:
            for raw in f.attrs["layer_names"]:
                name = raw.decode() if isinstance(raw, bytes) else str(raw)
                group = f[name]
                names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs["weight_names"]]
                if names:
                    layers[name] = [np.asarray(group[n]) if arrays else group[n].shape for n in names]
        except (KeyError, OSError) as exc:
            raise WeightsError(
                f"weights file {path!r} is damaged (truncated?): {one_line(exc)}; {WEIGHTS_FIX}"
            ) from None
    return layers


def _match_layers(path: str, stored: dict[str, list], wanted: dict[str, list[tuple]]) -> dict[str, str]:
    """Each wanted layer -> the stored layer holding its weights, shapes checked; a
    WeightsError names the first that is missing or has other shapes.

    MobileNet layers match by name; the head is the file's one layer named ``dense*``
    (Keras 2 auto-named it ``dense_1``)."""
    heads = [name for name in stored if name.startswith("dense")]
    if len(heads) != 1:
        raise WeightsError(
            f"weights file {path!r}: expected one Dense head layer, found {heads or 'none'}; "
            f"is this a NIMA MobileNet weights file? {WEIGHTS_FIX}"
        )
    sources = {}
    for layer, want in wanted.items():
        source = heads[0] if layer.startswith("dense") else layer
        if source not in stored:
            raise WeightsError(
                f"weights file {path!r} has no weights for layer {layer!r}; "
                f"expected a NIMA MobileNet (alpha 1.0) weights file; {WEIGHTS_FIX}"
            )
        got = [tuple(getattr(w, "shape", w)) for w in stored[source]]
        if got != want:
            raise WeightsError(
                f"weights file {path!r}: layer {source!r} has shapes {got}, expected {want} "
                f"(NIMA MobileNet alpha 1.0, 224x224, 10 classes); {WEIGHTS_FIX}"
            )
        sources[layer] = source
    return sources


@functools.lru_cache(maxsize=1)
def _reference_layout() -> dict[str, list[tuple]]:
    """Layer -> weight shapes of the seed's weights file: what every NIMA MobileNet file holds."""
    layers = _read_hdf5_layers(default_weights_path(), arrays=False)
    return {name: [tuple(shape) for shape in shapes] for name, shapes in layers.items()}


def check_weights(path: str) -> None:
    """Check, without TensorFlow and in well under a second, that ``path`` holds readable
    weights of every layer of NIMA MobileNet in the right shapes. Raises :class:`WeightsError`."""
    if file_sha256(path) == DEFAULT_WEIGHTS_SHA256:
        return
    _match_layers(path, _read_hdf5_layers(path), _reference_layout())  # arrays: a damaged one fails here


def load_hdf5_weights(model, path: str) -> None:
    """Assign the file's weights to ``model`` layer by layer, checking every name and shape."""
    stored = _read_hdf5_layers(path)
    layers = [layer for layer in model.layers if layer.get_weights()]
    wanted = {layer.name: [tuple(w.shape) for w in layer.get_weights()] for layer in layers}
    sources = _match_layers(path, stored, wanted)
    for layer in layers:
        layer.set_weights(stored[sources[layer.name]])


class KerasEngine:
    """The reference: the Keras model run through one traced tf.function."""

    name = "keras"

    def __init__(self, weights_path: str):
        with native_output_silenced():  # TensorFlow's start-up logs
            self.model = build_keras_model()
            import tensorflow as tf

        load_hdf5_weights(self.model, weights_path)
        self._call = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._call(batch), dtype=np.float32)


# --- LiteRT engine -------------------------------------------------------------------------


def convert_to_tflite(keras_model) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    # The Keras export prints a page of signatures, TensorFlow its C++ logs.
    with native_output_silenced():
        return converter.convert()


def tflite_model_path(weights_path: str, sha256: str, staged: str | None = None) -> Path:
    """The LiteRT conversion of these weights in this machine's cache: copied from ``staged``
    or converted there first if need be (``model_cache``)."""

    def convert() -> bytes:
        with native_output_silenced():
            model = build_keras_model()
            load_hdf5_weights(model, weights_path)
            return convert_to_tflite(model)

    return litert_model(sha256, convert, staged)


class LiteRTEngine:
    """The converted model under ai-edge-litert (XNNPACK). One interpreter, one call at a time.

    The input is kept at batch size 1: XNNPACK reaches the same throughput per image
    as with larger batches, and no tensor re-allocation is ever needed.
    """

    name = "litert"

    def __init__(self, tflite_path: str | os.PathLike, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.num_threads = num_threads or os.cpu_count() or 1
        with native_output_silenced():  # "Created TensorFlow Lite XNNPACK delegate for CPU."
            self._interpreter = Interpreter(model_path=str(tflite_path), num_threads=self.num_threads)
            self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._lock = threading.Lock()  # an Interpreter is not safe for concurrent invoke()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        out = np.empty((len(batch), NUM_CLASSES), dtype=np.float32)
        with self._lock:
            for i in range(len(batch)):
                self._interpreter.set_tensor(self._input, batch[i : i + 1])
                self._interpreter.invoke()
                out[i] = self._interpreter.get_tensor(self._output)[0]
        return out


# --- loading -------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    engine: Engine
    weights_sha256: str
    model_version: str

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.engine.predict(batch)


def engine_name(engine: str) -> str:
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    return "litert" if engine == "auto" else engine


def check_model(engine: str = DEFAULT_ENGINE, weights: str | None = None) -> str:
    """Before any work starts: resolve and check the weights (in a second, without
    TensorFlow). Returns the ``model_version`` rows will carry; raises :class:`WeightsError`."""
    name = engine_name(engine)
    weights_path, sha = local_weights(weights)
    check_weights(weights_path)
    return model_version(sha, name)


def convert_model(engine: str = DEFAULT_ENGINE, weights: str | None = None, stage_at: str | None = None) -> str | None:
    """For LiteRT, convert the weights into the cache now (once; a no-op when cached), so
    that workers only load the result rather than each converting it; with ``stage_at`` (a
    remote runner's temp location) also copy it there for the workers, and return where."""
    if engine_name(engine) != "litert":
        return None
    path = tflite_model_path(*local_weights(weights))
    return stage_litert_model(path, stage_at) if stage_at else None


def load_model(
    engine: str = DEFAULT_ENGINE, weights: str | None = None, num_threads: int | None = None, staged: str | None = None
) -> LoadedModel:
    """Load NIMA with the given engine ('auto' picks litert) and weights (None: the seed's);
    ``staged``: where a launcher staged the converted model (``convert_model``)."""
    weights_path, sha = local_weights(weights)
    check_weights(weights_path)  # a bad file fails here, in a second, not after TensorFlow's start-up
    if engine_name(engine) == "keras":
        loaded: Engine = KerasEngine(weights_path)
    else:
        loaded = LiteRTEngine(tflite_model_path(weights_path, sha, staged), num_threads=num_threads)
    return LoadedModel(loaded, sha, model_version(sha, loaded.name))
