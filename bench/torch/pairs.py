"""AV-MNIST's clip-image pairing as `equimodal data pairs` writes it, read for the PyTorch
protocol script (avmnist_protocol.py --pairs), so that both train on the same (clip, image)
pairs and the same splits. Plain Python (no NumPy), so the engine's tests can run it."""
import csv


class PairsError(Exception):
    """A pairing file that does not fit the data it is used with; the message names the file
    and line."""


def read_pairs(path, clip_names, clip_digits, image_labels):
    """The split ('train', 'val' or 'test') and MNIST image of each clip, in the order of
    `clip_names` (FSDD file names, their spoken digits in `clip_digits`); `image_labels` are
    the MNIST labels. Every clip must appear once, with its own digit as the label, paired
    with an image of that digit."""
    at = {name: i for i, name in enumerate(clip_names)}
    split, image = [None] * len(clip_names), [None] * len(clip_names)
    with open(path, newline="") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header != ["split", "index", "clip", "image", "label"]:
            raise PairsError(f"{path}: line 1: expected the header split,index,clip,image,label, got {header}")
        for line, row in enumerate(rows, start=2):
            where = f"{path}: line {line}"
            if len(row) != 5:
                raise PairsError(f"{where}: {len(row)} fields, expected 5")
            s, _, clip, img, label = row
            if s not in ("train", "val", "test"):
                raise PairsError(f"{where}: split {s!r} is not train, val or test")
            if clip not in at:
                raise PairsError(f"{where}: clip {clip} is not among the {len(clip_names)} FSDD recordings")
            i = at[clip]
            if split[i] is not None:
                raise PairsError(f"{where}: clip {clip} is listed twice")
            try:
                img, label = int(img), int(label)
            except ValueError:
                raise PairsError(f"{where}: image {row[3]!r} and label {row[4]!r} must be integers") from None
            if not 0 <= img < len(image_labels):
                raise PairsError(f"{where}: image {img} outside the {len(image_labels)} MNIST images")
            if label != clip_digits[i] or image_labels[img] != label:
                raise PairsError(f"{where}: clip {clip} (digit {clip_digits[i]}) paired with image {img} (digit {image_labels[img]}) under label {label}")
            split[i], image[i] = s, img
    missing = [clip_names[i] for i, s in enumerate(split) if s is None]
    if missing:
        raise PairsError(f"{path}: {len(missing)} clips have no pair, the first {missing[0]}")
    return split, image
