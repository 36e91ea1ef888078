r"""FGVC-Aircraft (Maji et al., 2013) as an ImageFolder: `python -m ssl_jax.data.aircraft --src S --dst D`.

FGVC-Aircraft is not in tfds. Download the official archive (fgvc-aircraft-2013b.tar.gz, from the dataset's
page at the University of Oxford's VGG) and unpack it; SRC is the unpacked `fgvc-aircraft-2013b` folder (or
its `data` folder), which holds `images/<id>.jpg` and the split lists `images_variant_<split>.txt` (lines
"<id> <variant name>"). This script arranges it as

    DST/train/<variant>/<id>.jpg      the `--train_list` split (default `trainval`: 6,667 images)
    DST/test/<variant>/<id>.jpg       the `test` split (3,333 images)

with 100 variant folders each ('/' in a variant name, as in "F/A-18", becomes '_'), as symbolic links to the
images (or copies with `--copy`). Train on it with `--config.data.name=image_folder --config.data.root=DST`
(`configs/s3l_moco_cub.py:dataset=aircraft`); the labels are the variant folders in sorted order. The images
are used whole, the 20-px copyright banner at their bottom included (S3L's loader for them was not released).
Exit codes: 0 done; 2 bad input (one line on stderr).
"""
import argparse
import os
import pathlib
import shutil
import sys

from ssl_jax.errors import UserError

_SPLITS = ('train', 'val', 'trainval', 'test')


def read_split(data_dir: pathlib.Path, split: str) -> list[tuple[str, str]]:
  """(image id, variant) pairs of `images_variant_<split>.txt`, in file order."""
  path = data_dir / f'images_variant_{split}.txt'
  if not path.exists():
    raise UserError(f'{path} does not exist; pass --src the unpacked fgvc-aircraft-2013b folder')
  pairs = []
  for line in path.read_text().splitlines():
    if line.strip():
      image_id, variant = line.strip().split(' ', 1)
      pairs.append((image_id, variant))
  return pairs


def arrange(src, dst, *, train_list: str = 'trainval', copy: bool = False) -> dict[str, int]:
  """Builds the ImageFolder layout of the module docstring.

  Args:
    src: the unpacked `fgvc-aircraft-2013b` folder or its `data` folder.
    dst: the folder to create (it may exist; existing files are left as they are).
    train_list: which official list becomes DST/train: 'trainval' (the usual), 'train' or 'val'.
    copy: copy the images instead of linking them.

  Returns:
    {'train': number of images, 'test': number of images}.
  """
  src, dst = pathlib.Path(src).expanduser().absolute(), pathlib.Path(dst).expanduser()
  data_dir = src / 'data' if (src / 'data' / 'images').is_dir() else src
  if not (data_dir / 'images').is_dir():
    raise UserError(f'no images/ folder in {src}; pass --src the unpacked fgvc-aircraft-2013b folder')
  if train_list not in _SPLITS[:3]:
    raise UserError(f'--train_list={train_list!r} is not an official training list; use train, val or '
                    'trainval')
  counts = {}
  for name, split in (('train', train_list), ('test', 'test')):
    pairs = read_split(data_dir, split)
    for image_id, variant in pairs:
      image = data_dir / 'images' / f'{image_id}.jpg'
      if not image.exists():
        raise UserError(f'{image} is listed in images_variant_{split}.txt but missing; unpack the whole '
                        'archive')
      target = dst / name / variant.replace('/', '_') / image.name
      target.parent.mkdir(parents=True, exist_ok=True)
      if not target.exists():
        if copy:
          shutil.copyfile(image, target)
        else:
          os.symlink(image, target)
    counts[name] = len(pairs)
  return counts


def main(argv=None) -> int:
  """The command line (module docstring); returns the exit code."""
  parser = argparse.ArgumentParser(prog='python -m ssl_jax.data.aircraft',
                                   description=__doc__.splitlines()[0])
  parser.add_argument('--src', required=True, help='the unpacked fgvc-aircraft-2013b folder')
  parser.add_argument('--dst', required=True, help='the ImageFolder root to create (data.root)')
  parser.add_argument('--train_list', default='trainval',
                      help='official list for DST/train (default trainval)')
  parser.add_argument('--copy', action='store_true', help='copy the images instead of linking them')
  args = parser.parse_args(argv)
  try:
    counts = arrange(args.src, args.dst, train_list=args.train_list, copy=args.copy)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'{args.dst}: train {counts["train"]} images, test {counts["test"]} images; train with '
        f'--config.data.name=image_folder --config.data.root={args.dst}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
