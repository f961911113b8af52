"""The seed tutorial's training code, kept only as the benchmark's baseline (not the pipeline).

Faithful to the guide the project started from: a Dataset that decodes the full-size JPEG and
GIF on every read, albumentations Resize inside the per-read transform, fp32 NCHW, Adam,
BCE-with-logits, `torch.cuda.amp.autocast` + GradScaler (both no-ops without CUDA), a tqdm
loop with `loss.item()` per batch, a checkpoint per epoch and `check_accuracy` on the
validation loader. Two departures, neither affecting speed: the model is the project's UNet
(the guide's bridge had the wrong width and does not run), so both sides train the same
network, and validation is normalized with mean 0 like training (the guide's 8.0 is a typo).

    python -m tools.tutorial TRAIN_IMG_DIR TRAIN_MASK_DIR VAL_IMG_DIR VAL_MASK_DIR [--epochs 1]

runs the guide's `main()`; tools.bench times its training step.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn, optim  # noqa: E402
from tqdm import tqdm  # noqa: E402

from unet.network.model import UNet  # noqa: E402

# The guide's hyperparameters.
LEARNING_RATE = 1e-4
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BATCH_SIZE = 16
NUM_WORKERS = 5
IMAGE_HEIGHT = 160
IMAGE_WIDTH = 240
PIN_MEMORY = True


class CarvanaDataset(torch.utils.data.Dataset):
    def __init__(self, image_dir, mask_dir, transform=None):
        self.image_dir = image_dir
        self.mask_dir = mask_dir
        self.transform = transform
        self.images = os.listdir(image_dir)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        img_path = os.path.join(self.image_dir, self.images[index])
        mask_path = os.path.join(self.mask_dir, self.images[index].replace(".jpg", "_mask.gif"))
        image = np.array(Image.open(img_path).convert("RGB"))
        mask = np.array(Image.open(mask_path).convert("L"), dtype=np.float32)
        mask[mask == 255.0] = 1.0
        if self.transform is not None:
            augs = self.transform(image=image, mask=mask)
            image = augs["image"]
            mask = augs["mask"]
        return image, mask


train_transform = A.Compose([
    A.Resize(height=IMAGE_HEIGHT, width=IMAGE_WIDTH),
    A.Rotate(limit=35, p=1.0),
    A.HorizontalFlip(p=0.5),
    A.VerticalFlip(p=0.1),
    A.Normalize(mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0], max_pixel_value=255.0),
    ToTensorV2(),
])
val_transform = A.Compose([
    A.Resize(height=IMAGE_HEIGHT, width=IMAGE_WIDTH),
    A.Normalize(mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0], max_pixel_value=255.0),
    ToTensorV2(),
])


def get_loaders(train_dir, train_maskdir, val_dir, val_maskdir, batch_size, train_transform,
                val_transform, num_workers=NUM_WORKERS, pin_memory=PIN_MEMORY):
    train_ds = CarvanaDataset(train_dir, train_maskdir, train_transform)
    train_loader = torch.utils.data.DataLoader(train_ds, batch_size=batch_size, shuffle=True,
                                               num_workers=num_workers, pin_memory=pin_memory)
    val_ds = CarvanaDataset(val_dir, val_maskdir, val_transform)
    val_loader = torch.utils.data.DataLoader(val_ds, batch_size=batch_size, shuffle=False,
                                             num_workers=num_workers, pin_memory=pin_memory)
    return train_loader, val_loader


def train_fn(loader, model, optimizer, loss_fn, scaler):
    loop = tqdm(loader, disable=None)
    for batch_ind, (data, targets) in enumerate(loop):
        data = data.to(device=DEVICE)
        targets = targets.float().unsqueeze(1).to(device=DEVICE)
        # The guide's torch.cuda.amp.autocast(), spelled without the deprecation warning.
        with torch.autocast("cuda", enabled=DEVICE == "cuda"):
            pred = model(data)
            loss = loss_fn(pred, targets)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loop.set_postfix(loss=loss.item())


def save_checkpoint(state, filename="my_checkpoint.pth.tar"):
    print("=> Saving checkpoint")
    torch.save(state, filename)


def check_accuracy(loader, model, device=DEVICE):
    num_correct = 0
    num_pixels = 0
    dice_score = 0
    model.eval()
    with torch.no_grad():
        for x, y in loader:
            x = x.to(device)
            y = y.to(device).unsqueeze(1)
            preds = torch.sigmoid(model(x))
            preds = (preds > 0.5).float()
            num_correct += (preds == y).sum()
            num_pixels += torch.numel(preds)
            dice_score += (2 * (preds * y).sum()) / ((preds + y).sum() + 1e-8)
    print(f"Got {num_correct}/{num_pixels} with accuracy {num_correct / num_pixels * 100:.2f}")
    print(f"Dice Score: {dice_score / len(loader)}")
    model.train()


def make_model():
    return UNet(in_channels=3, out_channels=1).to(DEVICE)


def make_scaler():
    # The guide's torch.cuda.amp.GradScaler(): disabled (a pass-through) without CUDA.
    return torch.amp.GradScaler("cuda", enabled=DEVICE == "cuda")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="tools.tutorial", description=__doc__.split("\n")[0])
    for name in ("train_img_dir", "train_mask_dir", "val_img_dir", "val_mask_dir"):
        parser.add_argument(name)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--checkpoint", default="my_checkpoint.pth.tar")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    model = make_model()
    loss_fn = nn.BCEWithLogitsLoss()
    optimizer = optim.Adam(model.parameters(), lr=LEARNING_RATE)
    train_loader, val_loader = get_loaders(args.train_img_dir, args.train_mask_dir,
                                           args.val_img_dir, args.val_mask_dir, BATCH_SIZE,
                                           train_transform, val_transform)
    scaler = make_scaler()
    for epoch in range(args.epochs):
        train_fn(train_loader, model, optimizer, loss_fn, scaler)
        checkpoint = {"state_dict": model.state_dict(), "optimizer": optimizer.state_dict()}
        save_checkpoint(checkpoint, args.checkpoint)
        check_accuracy(val_loader, model, device=DEVICE)
        print("Epoch", epoch)
    print(f"tutorial: {args.epochs} epoch(s) in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
