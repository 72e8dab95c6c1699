"""Data: loaders for MedMNIST .npz, image folders, CSV/JSONL manifests, DICOM, and a phantom.

Everything becomes an :class:`ImageSet`: uint8 tensor ``images`` of shape
(N, C, R, R) with C = 1 (grey) or 3 (RGB), int64 ``labels`` (N,), optional
free-text ``prompts`` and the class names.  Preprocessing is medical-safe and the
same for every source:

* grey stays grey and colour stays colour (``data.channels: auto``): RGB files
  whose three channels are equal (the common case for X-ray JPEGs) are grey; a
  set of true-colour images (fundus, dermatology, pathology) stays RGB; a set
  mixing both is an error naming one file of each, unless ``data.channels`` is
  1 (colour to ITU-R 601 luma) or 3 (grey repeated into three channels).  RGBA
  loses its alpha channel (with a note); 2-channel images are refused;
* pad to square with black, centred, *then* resize (never stretch anatomy);
* intensity: 8-bit images are kept as they are (0..255); 16-bit and DICOM
  images are rescaled (DICOM RescaleSlope/Intercept, then the file's window if
  it has one, else the 0.5-99.5 percentile range) to 0..255;
* inside models pixels are floats in [-1, 1]: x / 127.5 - 1;
* no horizontal flip unless ``data.hflip: true`` (laterality matters).

Modules, along the seams: :mod:`~synth.data.base` (ImageSet, errors), :mod:`~synth.data.images` (one
image: format, EXIF, DICOM, channels, window, pad, resize), :mod:`~synth.data.sources` (npz, folders,
MedMNIST), :mod:`~synth.data.manifest` (CSV/JSONL), :mod:`~synth.data.phantoms`, :mod:`~synth.data.splits`
(``load_split``, fractions, the validation carve), :mod:`~synth.data.registry` (``open_source``: which
loader takes a path) and :mod:`~synth.data.text` (safe names in messages).
Every name is importable from ``synth.data``.
"""

from synth.data.base import (DataError, MixedChannelsError, ImageSet, MAX_CLASS_INDEX, POOL_KINDS, pool_kind)  # noqa: F401
from synth.data.text import (show, describe, path_inside, file_name_problem, escape_problem, escaping_entry)  # noqa: F401
from synth.data.images import (EXIF_ORIENTATION, IMAGE_EXTS, MAGIC, BMP_DIB_SIZES, sniff_format, image_files,
                               unused_note, to_grey, channel_layout, GREY_TOLERANCE, COLOUR_SHARE, has_alpha,
                               stack_images, hwc_list, check_splits_agree, alpha_note, scale_intensity,
                               nonfinite_count, nonfinite_note, pad_to_square, resize, prepare, read_dicom, read_raw, read_image)  # noqa: F401
from synth.data.phantoms import (phantom_image, phantom_set, colour_phantom_image, colour_phantom_set, phantom_domains)  # noqa: F401
from synth.data.sources import (MEDMNIST_CLASSES, MEDMNIST_URL, default_cache_dirs, resolve_medmnist, load_npz,
                                decode_labels, _class_dirs, load_image_folder, available_memory, check_memory)  # noqa: F401
from synth.data.manifest import (SPLIT_NAMES, JSONL_EXAMPLE, ManifestRow, ManifestSplit, json_object_lines,
                                 read_manifest, load_manifest)  # noqa: F401
from synth.data.registry import SOURCES, Source, open_source, register_source, source_for  # noqa: F401
from synth.data.splits import (min_fraction, fraction_subset, subset_record, random_carve_indices, carve_applies,
                               val_quota, carve_indices, load_split, _load_path, fingerprint)  # noqa: F401
from synth.data.pool import UnlabelledPool, load_pool, with_pool, content_hash, POOL_NPZ_KEY  # noqa: F401
