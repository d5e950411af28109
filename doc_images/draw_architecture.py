"""Draws doc_images/architecture.png, the network diagram in the README: python doc_images/draw_architecture.py"""
import os

from PIL import Image, ImageDraw, ImageFont

W, H = 1200, 700
img = Image.new("RGB", (W, H), "white")
d = ImageDraw.Draw(img)
font = ImageFont.load_default(size=15)
small = ImageFont.load_default(size=12)


def box(x, y, w, h, text, fill, font=font):
    d.rectangle([x, y, x + w, y + h], fill=fill, outline="black")
    d.multiline_text((x + w / 2, y + h / 2), text, fill="black", font=font, anchor="mm", align="center")


def arrow(x0, y0, x1, y1, color="black"):
    d.line([x0, y0, x1, y1], fill=color, width=2)
    if x1 != x0:
        s = 1 if x1 > x0 else -1
        d.polygon([(x1, y1), (x1 - 8 * s, y1 - 5), (x1 - 8 * s, y1 + 5)], fill=color)
    else:
        s = 1 if y1 > y0 else -1
        d.polygon([(x1, y1), (x1 - 5, y1 - 8 * s), (x1 + 5, y1 - 8 * s)], fill=color)


d.text((20, 12), "Generator (models.py): pix2pix U-Net with SAGAN self-attention and spectral norm (ENCODER = unet, "
       "N_DOWNS = 6 shown)", fill="black", font=font)
# encoder going down, decoder coming up, skips across
levels = ["H/2  ngf", "H/4  2ngf", "H/8  4ngf", "H/16 8ngf", "H/32 8ngf", "H/64 8ngf"]
x_enc, x_dec, top, step, bw, bh = 150, 560, 50, 42, 150, 32
box(20, top, 100, bh, "L (1, H, W)", "#dddddd")
arrow(120, top + bh / 2, x_enc, top + bh / 2)
for i, name in enumerate(levels):
    y = top + i * step
    box(x_enc, y, bw, bh, "conv4 s2 " + name, "#cfe2ff")
    if i + 1 < len(levels):
        arrow(x_enc + bw / 2, y + bh, x_enc + bw / 2, y + step)
    if i + 1 < len(levels):
        arrow(x_enc + bw, y + bh / 2, x_dec, y + bh / 2, "#888888")  # skip
        label = "up2 + conv3 " + name.split()[0] + ("  + self-attention" if i == 2 else "")
        box(x_dec, y, bw + 70, bh, label, "#ffe0b3" if i == 2 else "#d7f5d7", small)
yb = top + (len(levels) - 1) * step
arrow(x_enc + bw, yb + bh / 2, x_dec + 40, yb + bh / 2)
arrow(x_dec + 40, yb + bh / 2, x_dec + 40, yb - step + bh + 2)
for i in range(len(levels) - 2, 0, -1):
    y = top + i * step
    arrow(x_dec + bw + 70 + 10, y + bh / 2, x_dec + bw + 70 + 10, y - step + bh / 2)
box(x_dec + 250, top, 150, bh, "up2 + conv3, tanh", "#d7f5d7", small)
arrow(x_dec + bw + 70, top + bh / 2, x_dec + 250, top + bh / 2)
box(x_dec + 430, top, 110, bh, "ab (2, H, W)", "#dddddd")
arrow(x_dec + 400, top + bh / 2, x_dec + 430, top + bh / 2)
d.text((x_dec + 240, top + 60), "grey arrows: skip connections (concatenate)\n"
       "orange: self-attention at input/8 (ATTN_FACTORS)\nall convolutions spectrally normalised\n\n"
       "ENCODER = efficientnet_lite0/1/2 (PretrainedUnetGenerator):\nthe blue column is an ImageNet EfficientNet-Lite\n"
       "on the gray L; its features at H/2 .. H/32 (head:\n1280 channels) are the skips; the decoder is the same", fill="black",
       font=small)

y0 = 340
d.text((20, y0 - 20), "Discriminator (models.py): NUM_D = 3 PatchGANs (pix2pixHD), on L + ab, input average-pooled by 2 "
       "per scale",
       fill="black", font=font)
box(20, y0 + 60, 120, 40, "L + ab (3, H, W)", "#dddddd")
for k, scale in enumerate(["H x W", "H/2 x W/2", "H/4 x W/4"]):
    y = y0 + 10 + k * 65
    if k:
        box(170, y, 110, 40, f"avgpool x{2 ** k}", "#eeeeee", small)
    arrow(140, y0 + 80, 170 if k else 300, y + 20)
    if k:
        arrow(280, y + 20, 300, y + 20)
    x = 300
    for c in ["ndf", "2ndf", "4ndf", "8ndf s1"]:
        box(x, y, 95, 40, f"conv4 {c}", "#f3d1f3", small)
        arrow(x + 95, y + 20, x + 115, y + 20)
        x += 115
    box(x, y, 120, 40, "patch logits", "#ffd6d6", small)
    d.text((x + 135, y + 12), f"scale {k + 1} ({scale}): features -> feature matching", fill="black", font=small)

d.text((20, 540), "Loss_G (losses.py, weighed in training.train_step) = GAN (hinge) + LAMBDA_FM x feature matching + "
       "LAMBDA_L1 x |ab - ab_true|\n    (+ LAMBDA_VGG x VGG19, LAMBDA_PERC x EfficientNet features, LAMBDA_CF x (1 - colourfulness))",
       fill="black", font=font)
# where each job lives: the files, in the order a photo meets them
d.text((20, 598), "Where each job lives", fill="black", font=font)
rooms = [("data.py", "files -> Lab crops,\nrender/pad maps"), ("training.py", "step(): hints,\ntrain_step, EMA"),
         ("runtime.py", "devices, sampler,\nlog, lock, signals"), ("checkpoint.py", "the file format,\nold files' defaults"),
         ("colorizer.py", "Colorizer.colorize,\n--infer"), ("colorize_base.py", "constants, CLI,\ntrain() loop")]
for k, (name, job) in enumerate(rooms):
    box(20 + k * 195, 622, 180, 56, f"{name}\n{job}", "#fff7cc", small)
    if k:
        arrow(20 + k * 195 - 15, 650, 20 + k * 195, 650)
img.save(os.path.join(os.path.dirname(os.path.abspath(__file__)), "architecture.png"))
