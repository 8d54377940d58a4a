r"""The public benchmarks' classes, colours and label encodings, as the field uses them.

Each benchmark is read by the folder source (`segjax.data.sources`) from its
official on-disk layout; this module holds what is specific to it: class
names, palette, and the label map from the values stored in its mask files to
training labels (class indices, or 255 = ignored). configs/common.py's
DATASETS rows (`dataset=cityscapes`, ...) put them into a config; the layouts,
archives and label conventions are in docs/benchmarks.md.

  Cityscapes     labelIds (0..33) -> 19 trainIds, the others ignored
                 (cityscapesScripts' labels.py); *_gtFine_labelTrainIds.png
                 (0..18, 255) read as they are when present.
  ADE20K         150 classes; 0 ('other') ignored, k -> k - 1 (mmsegmentation's
                 reduce_zero_label), 255 stays ignored.
  Pascal VOC     21 classes, the palette-PNG index is the class, 255 (the
                 object boundaries) ignored.
  Pascal Context 59 classes: 0 (background) ignored, k -> k - 1 (mmsegmentation's
                 PascalContextDataset59, reduce_zero_label=True).
  COCO-Stuff     stuffthingmaps value v = COCO id - 1 (0..181), 255 unlabeled;
                 the 171 ids in use -> 0..170 in id order (mmsegmentation's
                 coco_stuff164k.py); *_labelTrainIds.png read as they are.

Any other stored value is an error naming the file and the values
(`labels.LabelMapper`), never a class.
"""

from __future__ import annotations

from segjax.data import labels as labels_lib

IGNORE = 255


def label_map_string(mapping: dict[int, int]) -> str:
  """{raw: label} -> 'raw:label,...' (the data.label_map form), by raw value."""
  return ','.join(f'{raw}:{label}' for raw, label in sorted(mapping.items()))


def reduce_zero_label(num_classes: int) -> dict[int, int]:
  """mmsegmentation's reduce_zero_label: 0 -> ignored, k -> k - 1 for k in
  1..num_classes, and 255 stays ignored (255 - 1 = 254 is set back to 255)."""
  mapping = {0: IGNORE, IGNORE: IGNORE}
  mapping.update({k: k - 1 for k in range(1, num_classes + 1)})
  return mapping


# --------------------------------------------------------------------------- Cityscapes

# cityscapesScripts helpers/labels.py: (name, id, trainId, colour). trainId 255
# or -1 is not evaluated. 'license plate' (id -1) is never drawn into the
# *_labelIds.png files (json2labelImg skips negative ids), so it has no value.
CITYSCAPES_LABELS = (
    ('unlabeled', 0, 255, (0, 0, 0)),
    ('ego vehicle', 1, 255, (0, 0, 0)),
    ('rectification border', 2, 255, (0, 0, 0)),
    ('out of roi', 3, 255, (0, 0, 0)),
    ('static', 4, 255, (0, 0, 0)),
    ('dynamic', 5, 255, (111, 74, 0)),
    ('ground', 6, 255, (81, 0, 81)),
    ('road', 7, 0, (128, 64, 128)),
    ('sidewalk', 8, 1, (244, 35, 232)),
    ('parking', 9, 255, (250, 170, 160)),
    ('rail track', 10, 255, (230, 150, 140)),
    ('building', 11, 2, (70, 70, 70)),
    ('wall', 12, 3, (102, 102, 156)),
    ('fence', 13, 4, (190, 153, 153)),
    ('guard rail', 14, 255, (180, 165, 180)),
    ('bridge', 15, 255, (150, 100, 100)),
    ('tunnel', 16, 255, (150, 120, 90)),
    ('pole', 17, 5, (153, 153, 153)),
    ('polegroup', 18, 255, (153, 153, 153)),
    ('traffic light', 19, 6, (250, 170, 30)),
    ('traffic sign', 20, 7, (220, 220, 0)),
    ('vegetation', 21, 8, (107, 142, 35)),
    ('terrain', 22, 9, (152, 251, 152)),
    ('sky', 23, 10, (70, 130, 180)),
    ('person', 24, 11, (220, 20, 60)),
    ('rider', 25, 12, (255, 0, 0)),
    ('car', 26, 13, (0, 0, 142)),
    ('truck', 27, 14, (0, 0, 70)),
    ('bus', 28, 15, (0, 60, 100)),
    ('caravan', 29, 255, (0, 0, 90)),
    ('trailer', 30, 255, (0, 0, 110)),
    ('train', 31, 16, (0, 80, 100)),
    ('motorcycle', 32, 17, (0, 0, 230)),
    ('bicycle', 33, 18, (119, 11, 32)),
    ('license plate', -1, -1, (0, 0, 142)),
)
_CS_TRAIN = sorted((t, name, colour) for name, _, t, colour in CITYSCAPES_LABELS if 0 <= t < 255)
CITYSCAPES_CLASSES = tuple(name for _, name, _ in _CS_TRAIN)
CITYSCAPES_PALETTE = tuple(colour for _, _, colour in _CS_TRAIN)
CITYSCAPES_LABEL_MAP = label_map_string(
    {i: (t if 0 <= t < 255 else IGNORE) for _, i, t, _ in CITYSCAPES_LABELS if i >= 0})

# --------------------------------------------------------------------------- ADE20K

# SceneParsing (ADEChallengeData2016) objectInfo150 order, as mmsegmentation's
# ADE20KDataset names them ('bed ' there has a stray trailing space).
ADE20K_CLASSES = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed', 'windowpane',
    'grass', 'cabinet', 'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant',
    'curtain', 'chair', 'car', 'water', 'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror',
    'rug', 'field', 'armchair', 'seat', 'fence', 'desk', 'rock', 'wardrobe', 'lamp',
    'bathtub', 'railing', 'cushion', 'base', 'box', 'column', 'signboard',
    'chest of drawers', 'counter', 'sand', 'sink', 'skyscraper', 'fireplace',
    'refrigerator', 'grandstand', 'path', 'stairs', 'runway', 'case', 'pool table',
    'pillow', 'screen door', 'stairway', 'river', 'bridge', 'bookcase', 'blind',
    'coffee table', 'toilet', 'flower', 'book', 'hill', 'bench', 'countertop', 'stove',
    'palm', 'kitchen island', 'computer', 'swivel chair', 'boat', 'bar', 'arcade machine',
    'hovel', 'bus', 'towel', 'light', 'truck', 'tower', 'chandelier', 'awning',
    'streetlight', 'booth', 'television receiver', 'airplane', 'dirt track', 'apparel',
    'pole', 'land', 'bannister', 'escalator', 'ottoman', 'bottle', 'buffet', 'poster',
    'stage', 'van', 'ship', 'fountain', 'conveyer belt', 'canopy', 'washer', 'plaything',
    'swimming pool', 'stool', 'barrel', 'basket', 'waterfall', 'tent', 'bag', 'minibike',
    'cradle', 'oven', 'ball', 'food', 'step', 'tank', 'trade name', 'microwave', 'pot',
    'animal', 'bicycle', 'lake', 'dishwasher', 'screen', 'blanket', 'sculpture', 'hood',
    'sconce', 'vase', 'traffic light', 'tray', 'ashcan', 'fan', 'pier', 'crt screen',
    'plate', 'monitor', 'bulletin board', 'shower', 'radiator', 'glass', 'clock', 'flag')
# mmsegmentation's ADE20K palette (its first 60 colours are also Pascal Context's).
ADE20K_PALETTE = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3),
    (120, 120, 80), (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7),
    (224, 5, 255), (235, 255, 7), (150, 5, 61), (120, 120, 70), (8, 255, 51),
    (255, 6, 82), (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3),
    (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255), (255, 7, 71),
    (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10),
    (7, 255, 255), (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7),
    (255, 122, 8), (0, 255, 20), (255, 8, 41), (255, 5, 153), (6, 51, 255),
    (235, 12, 255), (160, 150, 20), (0, 163, 255), (140, 140, 140), (250, 10, 15),
    (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0), (153, 255, 0),
    (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112),
    (0, 255, 133), (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0),
    (0, 143, 255), (51, 255, 0), (0, 82, 255), (0, 255, 41), (0, 255, 173),
    (10, 0, 255), (173, 255, 0), (0, 255, 153), (255, 92, 0), (255, 0, 255),
    (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20), (255, 184, 184),
    (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255),
    (0, 122, 255), (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0),
    (143, 255, 0), (82, 0, 255), (163, 255, 0), (255, 235, 0), (8, 184, 170),
    (133, 0, 255), (0, 255, 92), (184, 0, 255), (255, 0, 31), (0, 184, 255),
    (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255), (112, 224, 255),
    (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235),
    (245, 0, 255), (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0),
    (0, 204, 255), (20, 0, 255), (255, 255, 0), (0, 153, 255), (0, 41, 255),
    (0, 255, 204), (41, 0, 255), (41, 255, 0), (173, 0, 255), (0, 245, 255),
    (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255), (184, 255, 0),
    (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255))
ADE20K_LABEL_MAP = label_map_string(reduce_zero_label(150))

# --------------------------------------------------------------------------- Pascal VOC

VOC_CLASSES = ('background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car',
               'cat', 'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person',
               'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor')
# The devkit's colour map (VOCdevkit/VOCcode/VOClabelcolormap.m), the palette
# stored in the SegmentationClass PNGs; the boundary (255) is (224, 224, 192).
VOC_PALETTE = tuple(tuple(int(v) for v in c) for c in labels_lib.default_palette(21))

# --------------------------------------------------------------------------- Pascal Context

# The 59 classes in the order of their Detail ids (mmsegmentation's
# PascalContextDataset59; its converter numbers the 59 + background sorted ids).
PASCAL_CONTEXT59_CLASSES = (
    'aeroplane', 'bag', 'bed', 'bedclothes', 'bench', 'bicycle', 'bird', 'boat', 'book',
    'bottle', 'building', 'bus', 'cabinet', 'car', 'cat', 'ceiling', 'chair', 'cloth',
    'computer', 'cow', 'cup', 'curtain', 'dog', 'door', 'fence', 'floor', 'flower', 'food',
    'grass', 'ground', 'horse', 'keyboard', 'light', 'motorbike', 'mountain', 'mouse',
    'person', 'plate', 'platform', 'pottedplant', 'road', 'rock', 'sheep', 'shelves',
    'sidewalk', 'sign', 'sky', 'snow', 'sofa', 'table', 'track', 'train', 'tree', 'truck',
    'tvmonitor', 'wall', 'water', 'window', 'wood')
# mmsegmentation's PascalContextDataset59 colours: ADE20K's colours 1..59.
PASCAL_CONTEXT59_PALETTE = ADE20K_PALETTE[1:60]
PASCAL_CONTEXT59_LABEL_MAP = label_map_string(reduce_zero_label(59))

# --------------------------------------------------------------------------- COCO-Stuff

# The 80 COCO thing category ids in use (of 1..91) and the 91 stuff ids
# (92..182); 'other' (183) is not a class. The stuffthingmaps PNGs store id - 1.
COCO_THING_IDS = (tuple(range(1, 12)) + tuple(range(13, 26)) + (27, 28) +
                  tuple(range(31, 45)) + tuple(range(46, 66)) + (67, 70) +
                  tuple(range(72, 83)) + tuple(range(84, 91)))
COCO_STUFF_IDS = tuple(range(92, 183))
COCO_STUFF_CLASSES = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat',
    'traffic light', 'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat',
    'dog', 'horse', 'sheep', 'cow', 'elephant', 'bear', 'zebra', 'giraffe', 'backpack',
    'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee', 'skis', 'snowboard', 'sports ball',
    'kite', 'baseball bat', 'baseball glove', 'skateboard', 'surfboard', 'tennis racket',
    'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple',
    'sandwich', 'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair',
    'couch', 'potted plant', 'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse',
    'remote', 'keyboard', 'cell phone', 'microwave', 'oven', 'toaster', 'sink',
    'refrigerator', 'book', 'clock', 'vase', 'scissors', 'teddy bear', 'hair drier',
    'toothbrush', 'banner', 'blanket', 'branch', 'bridge', 'building-other', 'bush',
    'cabinet', 'cage', 'cardboard', 'carpet', 'ceiling-other', 'ceiling-tile', 'cloth',
    'clothes', 'clouds', 'counter', 'cupboard', 'curtain', 'desk-stuff', 'dirt',
    'door-stuff', 'fence', 'floor-marble', 'floor-other', 'floor-stone', 'floor-tile',
    'floor-wood', 'flower', 'fog', 'food-other', 'fruit', 'furniture-other', 'grass',
    'gravel', 'ground-other', 'hill', 'house', 'leaves', 'light', 'mat', 'metal',
    'mirror-stuff', 'moss', 'mountain', 'mud', 'napkin', 'net', 'paper', 'pavement',
    'pillow', 'plant-other', 'plastic', 'platform', 'playingfield', 'railing', 'railroad',
    'river', 'road', 'rock', 'roof', 'rug', 'salad', 'sand', 'sea', 'shelf', 'sky-other',
    'skyscraper', 'snow', 'solid-other', 'stairs', 'stone', 'straw', 'structural-other',
    'table', 'tent', 'textile-other', 'towel', 'tree', 'vegetable', 'wall-brick',
    'wall-concrete', 'wall-other', 'wall-panel', 'wall-stone', 'wall-tile', 'wall-wood',
    'water-other', 'waterdrops', 'window-blind', 'window-other', 'wood')
# mmsegmentation's COCO-Stuff palette repeats colours (e.g. person and bicycle),
# so the panels use the VOC colour map, distinct for all 171 classes.
COCO_STUFF_PALETTE = tuple(tuple(int(v) for v in c) for c in labels_lib.default_palette(171))
# The 11 unused thing ids are declared invalid (-1): below 171 they would
# otherwise pass through the label map as classes.
COCO_STUFF_LABEL_MAP = label_map_string(
    {**{i - 1: -1 for i in range(1, 92) if i not in COCO_THING_IDS},
     **{coco_id - 1: k for k, coco_id in enumerate(COCO_THING_IDS + COCO_STUFF_IDS)},
     IGNORE: IGNORE})
