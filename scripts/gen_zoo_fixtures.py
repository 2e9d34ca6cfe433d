#!/usr/bin/env python3
"""Generate the PyTorch reference fixtures of `tfkd-zoo` (fixtures/zoo/).

The reference networks below were written for this project from the
structures described in the project's paper notes (the Tf-KD paper's official
`model/*.py` files and torchvision for ImageNet): same modules, same attribute
names (hence the same state-dict keys), same quirks. Every family takes a small
configuration so that reduced-width instances can be checked cheaply.

Outputs (all float32, small):
  param_counts.json     learnable-parameter counts of every full-size model at
                        K = 10, 100, 200 (and 1000 for ImageNet) and its
                        state-dict name -> shape map at K = 100 (1000 for
                        ImageNet), without num_batches_tracked.
  <case>.safetensors    one reduced instance: `param.<name>` weights and
                        buffers (randomised BatchNorm statistics), `input`
                        [4, 3, S, S], `proj` [4, K], `eval_logits`,
                        `train_logits`, `grad.<name>` (gradient of
                        sum(train_logits * proj) after one train-mode forward)
                        and `after.<name>` (running statistics after it).
                        References are computed in float64.
  maxpool.safetensors   max-pool values and input gradients for several
                        kernel / stride / padding combinations.
  ckpt_*.pth(.tar)      tiny PyTorch checkpoints of case `resnet_basic`: the
                        official {'epoch', 'state_dict', 'optim_dict'} layout,
                        a DataParallel (`module.`) one, a bare state dict, and
                        a legacy-format one (PyTorch <= 1.5 serialization, as
                        the official teachers). The legacy file names its
                        storages by memory address, so its bytes change on
                        every run; everything else is reproducible.
  tv_densenet_torchvision.pth
                        the `tv_densenet` case's weights (`param.*`) as
                        torchvision publishes DenseNet (`densenet121-a639ec97.pth`):
                        a bare state dict (an OrderedDict with `_metadata`)
                        in the legacy format, with the legacy dense-layer
                        names `norm.1`, `relu.1`, `conv.1`, `norm.2`, ...
                        that torchvision's `_load_state_dict` renames. Its
                        bytes change on every run too.

Usage: python scripts/gen_zoo_fixtures.py [OUT_DIR]   (default fixtures/zoo)
"""
import json
import os
import re
import sys
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F


def save_file(tensors, path):
    """safetensors' writer, imported when a fixture is written: the benchmark
    (scripts/bench_steps_torch.py) imports this module's networks on
    machines that may have PyTorch alone."""
    from safetensors.torch import save_file as write

    write(tensors, path)


# --------------------------------------------------------------------------
# CIFAR networks (official model/*.py structures)
# --------------------------------------------------------------------------


class Net(nn.Module):
    """model/net.py: 5-layer plain CNN. fc1's input follows the input side."""

    def __init__(self, num_channels=32, dropout_rate=0.5, num_class=10, side=32):
        super().__init__()
        c = num_channels
        self.conv1 = nn.Conv2d(3, c, 3, stride=1, padding=1)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c * 2, 3, stride=1, padding=1)
        self.bn2 = nn.BatchNorm2d(c * 2)
        self.conv3 = nn.Conv2d(c * 2, c * 4, 3, stride=1, padding=1)
        self.bn3 = nn.BatchNorm2d(c * 4)
        s = side // 8
        self.flat = s * s * c * 4
        self.fc1 = nn.Linear(self.flat, c * 4)
        self.fcbn1 = nn.BatchNorm1d(c * 4)
        self.fc2 = nn.Linear(c * 4, num_class)
        self.dropout_rate = dropout_rate

    def forward(self, s):
        s = F.relu(F.max_pool2d(self.bn1(self.conv1(s)), 2))
        s = F.relu(F.max_pool2d(self.bn2(self.conv2(s)), 2))
        s = F.relu(F.max_pool2d(self.bn3(self.conv3(s)), 2))
        s = s.view(-1, self.flat)
        s = F.dropout(F.relu(self.fcbn1(self.fc1(s))), p=self.dropout_rate, training=self.training)
        return self.fc2(s)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != 4 * planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, 4 * planes, 1, stride, bias=False), nn.BatchNorm2d(4 * planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """model/resnet.py (global pooling = the original's avg_pool2d(4) at 32x32)."""

    def __init__(self, bottleneck, blocks, widths=(64, 128, 256, 512), stem=64, num_classes=10):
        super().__init__()
        block = Bottleneck if bottleneck else BasicBlock
        self.in_planes = stem
        self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        for i, (n, w) in enumerate(zip(blocks, widths)):
            setattr(self, "layer%d" % (i + 1), self._make_layer(block, w, n, 1 if i == 0 else 2))
        self.linear = nn.Linear(widths[3] * block.expansion, num_classes)

    def _make_layer(self, block, planes, n, stride):
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


class LinearBottleNeck(nn.Module):
    def __init__(self, in_channels, out_channels, stride, t=6):
        super().__init__()
        self.residual = nn.Sequential(
            nn.Conv2d(in_channels, in_channels * t, 1),
            nn.BatchNorm2d(in_channels * t),
            nn.ReLU6(inplace=True),
            nn.Conv2d(in_channels * t, in_channels * t, 3, stride=stride, padding=1, groups=in_channels * t),
            nn.BatchNorm2d(in_channels * t),
            nn.ReLU6(inplace=True),
            nn.Conv2d(in_channels * t, out_channels, 1),
            nn.BatchNorm2d(out_channels),
        )
        self.stride, self.in_channels, self.out_channels = stride, in_channels, out_channels

    def forward(self, x):
        r = self.residual(x)
        if self.stride == 1 and self.in_channels == self.out_channels:
            r = r + x
        return r


MBV2_PAPER = dict(stem=32, stages=[(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 1), (6, 320, 1, 1)], last=1280)


class MobileNetV2(nn.Module):
    """model/mobilenetv2.py: 1x1 pad-1 stem (32x32 -> 34x34)."""

    def __init__(self, stem, stages, last, class_num=10):
        super().__init__()
        self.pre = nn.Sequential(nn.Conv2d(3, stem, 1, padding=1), nn.BatchNorm2d(stem), nn.ReLU6(inplace=True))
        cin = stem
        for i, (t, c, n, s) in enumerate(stages):
            if i in (0, 6):
                m = LinearBottleNeck(cin, c, s, t)
            else:
                layers = [LinearBottleNeck(cin, c, s, t)] + [LinearBottleNeck(c, c, 1, t) for _ in range(n - 1)]
                m = nn.Sequential(*layers)
            setattr(self, "stage%d" % (i + 1), m)
            cin = c
        self.conv1 = nn.Sequential(nn.Conv2d(cin, last, 1), nn.BatchNorm2d(last), nn.ReLU6(inplace=True))
        self.conv2 = nn.Conv2d(last, class_num, 1)

    def forward(self, x):
        x = self.pre(x)
        for i in range(7):
            x = getattr(self, "stage%d" % (i + 1))(x)
        x = self.conv1(x)
        x = F.adaptive_avg_pool2d(x, 1)
        return self.conv2(x).view(x.size(0), -1)


def channel_shuffle(x, groups):
    b, c, h, w = x.size()
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.stride, self.in_channels, self.out_channels = stride, in_channels, out_channels
        if stride != 1 or in_channels != out_channels:
            self.residual = nn.Sequential(
                nn.Conv2d(in_channels, in_channels, 1), nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True),
                nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels), nn.BatchNorm2d(in_channels),
                nn.Conv2d(in_channels, out_channels // 2, 1), nn.BatchNorm2d(out_channels // 2), nn.ReLU(inplace=True))
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels), nn.BatchNorm2d(in_channels),
                nn.Conv2d(in_channels, out_channels // 2, 1), nn.BatchNorm2d(out_channels // 2), nn.ReLU(inplace=True))
        else:
            self.shortcut = nn.Sequential()
            c = in_channels // 2
            self.residual = nn.Sequential(
                nn.Conv2d(c, c, 1), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                nn.Conv2d(c, c, 3, stride=stride, padding=1, groups=c), nn.BatchNorm2d(c),
                nn.Conv2d(c, c, 1), nn.BatchNorm2d(c), nn.ReLU(inplace=True))

    def forward(self, x):
        if self.stride == 1 and self.out_channels == self.in_channels:
            shortcut, residual = torch.split(x, self.in_channels // 2, dim=1)
        else:
            shortcut, residual = x, x
        x = torch.cat([self.shortcut(shortcut), self.residual(residual)], dim=1)
        return channel_shuffle(x, 2)


class ShuffleNetV2(nn.Module):
    """model/shufflenetv2.py: stem conv3x3 + BN without ReLU."""

    def __init__(self, stem=24, out_channels=(116, 232, 464, 1024), repeats=(3, 7, 3), class_num=10):
        super().__init__()
        self.pre = nn.Sequential(nn.Conv2d(3, stem, 3, padding=1), nn.BatchNorm2d(stem))
        cin = stem
        for i in range(3):
            layers = [ShuffleUnit(cin, out_channels[i], 2)] + [ShuffleUnit(out_channels[i], out_channels[i], 1) for _ in range(repeats[i])]
            setattr(self, "stage%d" % (i + 2), nn.Sequential(*layers))
            cin = out_channels[i]
        self.conv5 = nn.Sequential(nn.Conv2d(cin, out_channels[3], 1), nn.BatchNorm2d(out_channels[3]), nn.ReLU(inplace=True))
        self.fc = nn.Linear(out_channels[3], class_num)

    def forward(self, x):
        x = self.stage4(self.stage3(self.stage2(self.pre(x))))
        x = F.adaptive_avg_pool2d(self.conv5(x), 1).view(x.size(0), -1)
        return self.fc(x)


class DenseBottleneck(nn.Module):
    def __init__(self, in_channels, growth_rate):
        super().__init__()
        inner = 4 * growth_rate
        self.bottle_neck = nn.Sequential(
            nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True), nn.Conv2d(in_channels, inner, 1, bias=False),
            nn.BatchNorm2d(inner), nn.ReLU(inplace=True), nn.Conv2d(inner, growth_rate, 3, padding=1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.bottle_neck(x)], 1)


class Transition(nn.Module):
    """No ReLU (quirk)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.down_sample = nn.Sequential(nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(2, stride=2))

    def forward(self, x):
        return self.down_sample(x)


class DenseNet(nn.Module):
    """model/densenet.py, with its module names."""

    def __init__(self, nblocks=(6, 12, 24, 16), growth_rate=32, reduction=0.5, num_class=10):
        super().__init__()
        self.growth_rate = growth_rate
        c = 2 * growth_rate
        self.conv1 = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.features = nn.Sequential()
        for i in range(len(nblocks) - 1):
            self.features.add_module("dense_block_layer_%d" % i, self._dense(c, nblocks[i]))
            c += growth_rate * nblocks[i]
            out = int(reduction * c)
            self.features.add_module("transition_layer_%d" % i, Transition(c, out))
            c = out
        self.features.add_module("dense_block%d" % (len(nblocks) - 1), self._dense(c, nblocks[-1]))
        c += growth_rate * nblocks[-1]
        self.features.add_module("bn", nn.BatchNorm2d(c))
        self.features.add_module("relu", nn.ReLU(inplace=True))
        self.linear = nn.Linear(c, num_class)

    def _dense(self, c, n):
        block = nn.Sequential()
        for i in range(n):
            block.add_module("bottle_neck_layer_%d" % i, DenseBottleneck(c, self.growth_rate))
            c += self.growth_rate
        return block

    def forward(self, x):
        x = self.features(self.conv1(x))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Inception(nn.Module):
    def __init__(self, cin, n1x1, n3x3_reduce, n3x3, n5x5_reduce, n5x5, pool_proj):
        super().__init__()
        self.b1 = nn.Sequential(nn.Conv2d(cin, n1x1, 1), nn.BatchNorm2d(n1x1), nn.ReLU(inplace=True))
        self.b2 = nn.Sequential(nn.Conv2d(cin, n3x3_reduce, 1), nn.BatchNorm2d(n3x3_reduce), nn.ReLU(inplace=True),
                                nn.Conv2d(n3x3_reduce, n3x3, 3, padding=1), nn.BatchNorm2d(n3x3), nn.ReLU(inplace=True))
        self.b3 = nn.Sequential(nn.Conv2d(cin, n5x5_reduce, 1), nn.BatchNorm2d(n5x5_reduce), nn.ReLU(inplace=True),
                                nn.Conv2d(n5x5_reduce, n5x5, 3, padding=1), nn.BatchNorm2d(n5x5, n5x5), nn.ReLU(inplace=True),
                                nn.Conv2d(n5x5, n5x5, 3, padding=1), nn.BatchNorm2d(n5x5), nn.ReLU(inplace=True))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(cin, pool_proj, 1),
                                nn.BatchNorm2d(pool_proj), nn.ReLU(inplace=True))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], dim=1)


GOOGLENET_PAPER = dict(prelayer=192, inceptions=[
    (64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64), (192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64),
    (128, 128, 256, 24, 64, 64), (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128),
    (256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)], dropout=0.4)
INCEPTION_NAMES = ["a3", "b3", "a4", "b4", "c4", "d4", "e4", "a5", "b5"]


class GoogleNet(nn.Module):
    """model/googlenet.py: BN eps = n5x5 quirk, overlapping 3x3 s2 max-pool."""

    def __init__(self, prelayer, inceptions, dropout, num_class=10):
        super().__init__()
        self.prelayer = nn.Sequential(nn.Conv2d(3, prelayer, 3, padding=1), nn.BatchNorm2d(prelayer), nn.ReLU(inplace=True))
        cin = prelayer
        for name, w in zip(INCEPTION_NAMES, inceptions):
            setattr(self, name, Inception(cin, *w))
            cin = w[0] + w[2] + w[4] + w[5]
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.dropout = nn.Dropout2d(p=dropout)
        self.linear = nn.Linear(cin, num_class)

    def forward(self, x):
        x = self.b3(self.a3(self.prelayer(x)))
        x = self.maxpool(x)
        for n in ["a4", "b4", "c4", "d4", "e4"]:
            x = getattr(self, n)(x)
        x = self.maxpool(x)
        x = self.b5(self.a5(x))
        x = self.dropout(F.adaptive_avg_pool2d(x, 1))
        return self.linear(x.view(x.size(0), -1))


class ResNeXtBottleneck(nn.Module):
    def __init__(self, cin, cout, stride, cardinality, widen_factor):
        super().__init__()
        D = cardinality * cout // widen_factor
        self.conv_reduce = nn.Conv2d(cin, D, 1, 1, 0, bias=False)
        self.bn_reduce = nn.BatchNorm2d(D)
        self.conv_conv = nn.Conv2d(D, D, 3, stride, 1, groups=cardinality, bias=False)
        self.bn = nn.BatchNorm2d(D)
        self.conv_expand = nn.Conv2d(D, cout, 1, 1, 0, bias=False)
        self.bn_expand = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if cin != cout:
            self.shortcut.add_module("shortcut_conv", nn.Conv2d(cin, cout, 1, stride, 0, bias=False))
            self.shortcut.add_module("shortcut_bn", nn.BatchNorm2d(cout))

    def forward(self, x):
        b = F.relu(self.bn_reduce(self.conv_reduce(x)))
        b = F.relu(self.bn(self.conv_conv(b)))
        b = self.bn_expand(self.conv_expand(b))
        return F.relu(self.shortcut(x) + b)


class CifarResNeXt(nn.Module):
    """model/resnext.py with its custom init (global pooling = avg_pool2d(8, 1) at 32x32)."""

    def __init__(self, cardinality=8, depth=29, num_classes=10, widen_factor=4, base=64):
        super().__init__()
        n = (depth - 2) // 9
        stages = [base, base * widen_factor, 2 * base * widen_factor, 4 * base * widen_factor]
        self.conv_1_3x3 = nn.Conv2d(3, base, 3, 1, 1, bias=False)
        self.bn_1 = nn.BatchNorm2d(base)
        for s in range(3):
            name = "stage_%d" % (s + 1)
            block = nn.Sequential()
            for i in range(n):
                cin = stages[s] if i == 0 else stages[s + 1]
                stride = (1 if s == 0 else 2) if i == 0 else 1
                block.add_module("%s_bottleneck_%d" % (name, i), ResNeXtBottleneck(cin, stages[s + 1], stride, cardinality, widen_factor))
            setattr(self, name, block)
        self.classifier = nn.Linear(stages[3], num_classes)
        nn.init.kaiming_normal_(self.classifier.weight)
        for key in self.state_dict():
            if key.split(".")[-1] == "weight":
                if "conv" in key:
                    nn.init.kaiming_normal_(self.state_dict()[key], mode="fan_out")
                if "bn" in key:
                    self.state_dict()[key][...] = 1
            elif key.split(".")[-1] == "bias":
                self.state_dict()[key][...] = 0

    def forward(self, x):
        x = F.relu(self.bn_1(self.conv_1_3x3(x)))
        x = self.stage_3(self.stage_2(self.stage_1(x)))
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


class WrnBlock(nn.Module):
    def __init__(self, cin, cout, stride, drop_rate=0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.droprate = drop_rate
        self.equalInOut = cin == cout
        self.convShortcut = None if self.equalInOut else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        if not self.equalInOut:
            x = self.relu1(self.bn1(x))
            out = x
        else:
            out = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(out)))
        if self.droprate > 0:
            out = F.dropout(out, p=self.droprate, training=self.training)
        out = self.conv2(out)
        return (x if self.equalInOut else self.convShortcut(x)) + out


class NetworkBlock(nn.Module):
    def __init__(self, n, cin, cout, stride, drop_rate):
        super().__init__()
        self.layer = nn.Sequential(*[WrnBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, drop_rate) for i in range(n)])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    """model/wrn.py (xternalz-style pre-activation WRN)."""

    def __init__(self, depth, num_classes, widen_factor=1, dropRate=0.0):
        super().__init__()
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, ch[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1, dropRate)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2, dropRate)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2, dropRate)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(ch[3], num_classes)
        self.nChannels = ch[3]

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).view(-1, self.nChannels))


class AlexNet(nn.Module):
    """model/alexnet.py (global pooling = its flatten of a 1x1 map at 32x32)."""

    def __init__(self, num_classes=10, widths=(64, 192, 384, 256, 256)):
        super().__init__()
        w = widths
        self.features = nn.Sequential(
            nn.Conv2d(3, w[0], kernel_size=11, stride=4, padding=5), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
            nn.Conv2d(w[0], w[1], kernel_size=5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
            nn.Conv2d(w[1], w[2], kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(w[2], w[3], kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(w[3], w[4], kernel_size=3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2))
        self.classifier = nn.Linear(w[4], num_classes)

    def forward(self, x):
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


VGG19 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


class VGG(nn.Module):
    """torchvision vgg19_bn structure, names and init, reducible."""

    def __init__(self, cfg=VGG19, num_classes=10, hidden=4096, pool=7, dropout=0.5):
        super().__init__()
        layers, c = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
        self.classifier = nn.Sequential(
            nn.Linear(c * pool * pool, hidden), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(p=dropout), nn.Linear(hidden, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# --------------------------------------------------------------------------
# ImageNet networks (torchvision structure and names), reducible
# --------------------------------------------------------------------------


class TvBasic(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride, downsample, groups, base_width):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + idt)


class TvBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride, downsample, groups, base_width):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + idt)


class TvResNet(nn.Module):
    def __init__(self, bottleneck, blocks, num_classes=1000, groups=1, width_per_group=64, widths=(64, 128, 256, 512), stem=64):
        super().__init__()
        block = TvBottleneck if bottleneck else TvBasic
        self.inplanes = stem
        self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for i, (n, w) in enumerate(zip(blocks, widths)):
            stride = 1 if i == 0 else 2
            layers = []
            for j in range(n):
                s = stride if j == 0 else 1
                ds = None
                if j == 0 and (s != 1 or self.inplanes != w * block.expansion):
                    ds = nn.Sequential(nn.Conv2d(self.inplanes, w * block.expansion, 1, s, bias=False), nn.BatchNorm2d(w * block.expansion))
                layers.append(block(self.inplanes, w, s, ds, groups, width_per_group))
                self.inplanes = w * block.expansion
            setattr(self, "layer%d" % (i + 1), nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3] * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class TvDenseLayer(nn.Module):
    def __init__(self, cin, growth, bn_size):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x):
        y = self.conv1(self.relu1(self.norm1(x)))
        y = self.conv2(self.relu2(self.norm2(y)))
        return torch.cat([x, y], 1)


class TvTransition(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.pool = nn.AvgPool2d(2, 2)


class TvDenseNet(nn.Module):
    def __init__(self, growth=32, blocks=(6, 12, 24, 16), init_features=64, bn_size=4, num_classes=1000):
        super().__init__()
        from collections import OrderedDict
        self.features = nn.Sequential(OrderedDict([
            ("conv0", nn.Conv2d(3, init_features, 7, 2, 3, bias=False)), ("norm0", nn.BatchNorm2d(init_features)),
            ("relu0", nn.ReLU(inplace=True)), ("pool0", nn.MaxPool2d(3, 2, 1))]))
        c = init_features
        for i, n in enumerate(blocks):
            blk = nn.Sequential()
            for l in range(n):
                blk.add_module("denselayer%d" % (l + 1), TvDenseLayer(c + l * growth, growth, bn_size))
            self.features.add_module("denseblock%d" % (i + 1), blk)
            c += n * growth
            if i != len(blocks) - 1:
                self.features.add_module("transition%d" % (i + 1), TvTransition(c, c // 2))
                c //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(c))
        self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        f = F.relu(self.features(x))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(f, 1), 1))


# --------------------------------------------------------------------------
# Registry (names as tfkd-zoo's registry) and reduced cases
# --------------------------------------------------------------------------

FULL = {
    "cnn": lambda k, side: Net(32, 0.5, k, side),
    "resnet18": lambda k, side: ResNet(False, [2, 2, 2, 2], num_classes=k),
    "resnet34": lambda k, side: ResNet(False, [3, 4, 6, 3], num_classes=k),
    "resnet50": lambda k, side: ResNet(True, [3, 4, 6, 3], num_classes=k),
    "resnet101": lambda k, side: ResNet(True, [3, 4, 23, 3], num_classes=k),
    "resnet152": lambda k, side: ResNet(True, [3, 8, 36, 3], num_classes=k),
    "mobilenet_v2": lambda k, side: MobileNetV2(class_num=k, **MBV2_PAPER),
    "shufflenet_v2": lambda k, side: ShuffleNetV2(class_num=k),
    "densenet121": lambda k, side: DenseNet(num_class=k),
    "googlenet": lambda k, side: GoogleNet(num_class=k, **GOOGLENET_PAPER),
    "resnext29": lambda k, side: CifarResNeXt(8, 29, k, 4),
    "alexnet": lambda k, side: AlexNet(k),
    "vgg19": lambda k, side: VGG(num_classes=k),
    "wrn_28_10": lambda k, side: WideResNet(28, k, 10),
    "wrn_40_2": lambda k, side: WideResNet(40, k, 2),
    "wrn_16_2": lambda k, side: WideResNet(16, k, 2),
}
IMAGENET = {
    "resnet18_imagenet": (lambda k: TvResNet(False, [2, 2, 2, 2], k), "resnet18"),
    "resnet50_imagenet": (lambda k: TvResNet(True, [3, 4, 6, 3], k), "resnet50"),
    "resnext101_32x8d_imagenet": (lambda k: TvResNet(True, [3, 4, 23, 3], k, groups=32, width_per_group=8), "resnext101_32x8d"),
    "densenet121_imagenet": (lambda k: TvDenseNet(num_classes=k), "densenet121"),
}

K = 10
# Reduced instances; tfkd-zoo's tests/parity.rs builds the same configurations.
CASES = {
    "cnn": (lambda: Net(4, 0.0, K, 32), 32),
    "cnn_t64": (lambda: Net(4, 0.0, K, 64), 64),
    "resnet_basic": (lambda: ResNet(False, [2, 1, 1, 1], (4, 8, 8, 16), 4, K), 32),
    "resnet_basic_t64": (lambda: ResNet(False, [2, 1, 1, 1], (4, 8, 8, 16), 4, K), 64),
    "resnet_bottleneck": (lambda: ResNet(True, [1, 2, 1, 1], (2, 4, 4, 8), 4, K), 32),
    "mobilenet_v2": (lambda: MobileNetV2(8, [(1, 8, 1, 1), (2, 8, 2, 2), (2, 8, 1, 2), (2, 16, 2, 2), (2, 16, 1, 1), (2, 24, 2, 1), (2, 24, 1, 1)], 32, K), 32),
    "shufflenet_v2": (lambda: ShuffleNetV2(8, (8, 16, 24, 32), (1, 2, 1), K), 32),
    "densenet": (lambda: DenseNet((1, 2, 1, 2), 4, 0.5, K), 32),
    "googlenet": (lambda: GoogleNet(8, [(4, 4, 8, 2, 4, 4), (4, 4, 4, 2, 4, 4)] + [(4, 2, 4, 2, 4, 4)] * 5 + [(8, 4, 8, 2, 4, 4)] * 2, 0.0, K), 32),
    "resnext": (lambda: CifarResNeXt(2, 11, K, 4, 8), 32),
    "wrn": (lambda: WideResNet(10, K, 1), 32),
    "alexnet": (lambda: AlexNet(K, (8, 16, 16, 16, 16)), 32),
    "vgg": (lambda: VGG([8, "M", 16, "M", 16, 16, "M", 16, "M", 32, "M"], K, 16, 7, 0.0), 32),
    "vgg_t64": (lambda: VGG([8, "M", 16, "M", 16, 16, "M", 16, "M", 32, "M"], K, 16, 7, 0.0), 64),
    "tv_resnet_basic": (lambda: TvResNet(False, [1, 1, 1, 1], K, widths=(8, 16, 16, 32), stem=8), 64),
    "tv_resnext": (lambda: TvResNet(True, [1, 1, 1, 1], K, groups=2, width_per_group=32, widths=(8, 8, 16, 16), stem=8), 64),
    "tv_densenet": (lambda: TvDenseNet(4, (1, 2, 1, 1), 8, 2, K), 64),
}


def count(m):
    return sum(p.numel() for p in m.parameters())


def shapes(m):
    return {k: list(v.shape) for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked")}


def randomise(m, g):
    """Non-trivial BatchNorm affine parameters and running statistics."""
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                mod.weight.copy_(torch.rand(mod.weight.shape, generator=g) + 0.5)
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.1)
                mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)


def f32(t):
    return t.detach().to(torch.float32).contiguous().clone()


def make_case(name, ctor, side, g, out):
    torch.manual_seed(sum(name.encode()))
    m = ctor()
    randomise(m, g)
    m = m.double()
    params = {k: v.clone() for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked")}
    x = torch.randn(4, 3, side, side, generator=g, dtype=torch.float64)
    proj = torch.randn(4, K, generator=g, dtype=torch.float64)
    m.eval()
    with torch.no_grad():
        eval_logits = m(x)
    m.train()
    logits = m(x)
    (logits * proj).sum().backward()
    t = {"input": f32(x), "proj": f32(proj), "eval_logits": f32(eval_logits), "train_logits": f32(logits)}
    for k, v in params.items():
        t["param." + k] = f32(v)
    for k, p in m.named_parameters():
        t["grad." + k] = f32(p.grad)
    for k, v in m.state_dict().items():
        if k.endswith("running_mean") or k.endswith("running_var"):
            t["after." + k] = f32(v)
    save_file(t, os.path.join(out, name + ".safetensors"))
    return m, params


# The inverse of torchvision's `_load_state_dict` pattern (torchvision/models/densenet.py):
# `denselayerN.norm1.weight` -> `denselayerN.norm.1.weight`.
LEGACY_DENSE = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))([12])\.(weight|bias|running_mean|running_var)$")


def torchvision_densenet_file(params, out):
    """`params` in the form of torchvision's published DenseNet files."""
    sd = OrderedDict()
    for k, v in params.items():
        sd[LEGACY_DENSE.sub(r"\1.\2.\3", k)] = f32(v)
    sd._metadata = OrderedDict([("", {"version": 1})] + [(k.rpartition(".")[0], {"version": 1}) for k in sd])
    assert any(".norm.1." in k for k in sd) and not any(".norm1." in k for k in sd)
    torch.save(sd, os.path.join(out, "tv_densenet_torchvision.pth"), _use_new_zipfile_serialization=False)


def maxpool_case(g, out):
    t = {}
    x = torch.randn(2, 3, 9, 10, generator=g, dtype=torch.float64)
    t["input"] = f32(x)
    for k, s, p in [(3, 2, 1), (3, 1, 1), (3, 2, 0), (2, 2, 0), (2, 1, 0), (3, 3, 1)]:
        xi = x.clone().requires_grad_(True)
        y = F.max_pool2d(xi, k, s, p)
        r = torch.randn(y.shape, generator=g, dtype=torch.float64)
        (y * r).sum().backward()
        tag = "k%ds%dp%d" % (k, s, p)
        t[tag + ".out"] = f32(y)
        t[tag + ".proj"] = f32(r)
        t[tag + ".grad"] = f32(xi.grad)
    # kernel == stride on a divisible input, and average pooling on odd sides.
    xe = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    t["input_even"] = f32(xe)
    for name, fn in [("even_k2s2p0", lambda v: F.max_pool2d(v, 2)), ("avg_k2_even", lambda v: F.avg_pool2d(v, 2))]:
        xi = xe.clone().requires_grad_(True)
        y = fn(xi)
        r = torch.randn(y.shape, generator=g, dtype=torch.float64)
        (y * r).sum().backward()
        t[name + ".out"], t[name + ".proj"], t[name + ".grad"] = f32(y), f32(r), f32(xi.grad)
    xi = x.clone().requires_grad_(True)
    y = F.avg_pool2d(xi, 2)
    r = torch.randn(y.shape, generator=g, dtype=torch.float64)
    (y * r).sum().backward()
    t["avg_k2_odd.out"], t["avg_k2_odd.proj"], t["avg_k2_odd.grad"] = f32(y), f32(r), f32(xi.grad)
    save_file(t, os.path.join(out, "maxpool.safetensors"))


def check_against_torchvision():
    try:
        import torchvision
    except ImportError:
        print("torchvision not available: ImageNet references not cross-checked")
        return
    for name, (ctor, tv) in IMAGENET.items():
        ours, ref = ctor(1000), getattr(torchvision.models, tv)()
        assert shapes(ours) == shapes(ref), name
        ours.load_state_dict(ref.state_dict())
        ours.eval(), ref.eval()
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            assert torch.allclose(ours(x), ref(x), atol=1e-5), name
        print("  %s matches torchvision.models.%s" % (name, tv))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join("fixtures", "zoo")
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(230)
    check_against_torchvision()
    try:
        import torchvision
        ref, ours = torchvision.models.vgg19_bn(num_classes=100), VGG(num_classes=100)
        assert shapes(ref) == shapes(ours)
        ours.load_state_dict(ref.state_dict())
        ours.eval(), ref.eval()
        x = torch.randn(1, 3, 32, 32)
        with torch.no_grad():
            assert torch.allclose(ours(x), ref(x), atol=1e-5)
        print("  vgg19 matches torchvision.models.vgg19_bn")
    except ImportError:
        pass
    counts = {"cifar": {}, "tiny": {}, "imagenet": {}}
    for name, ctor in FULL.items():
        for size, side in [("cifar", 32), ("tiny", 64)]:
            counts[size][name] = {"params": {str(k): count(ctor(k, side)) for k in (10, 100, 200)}}
            if size == "cifar":
                counts[size][name]["shapes"] = shapes(ctor(100, side))
        print(name, counts["cifar"][name]["params"])
    for name, (ctor, _) in IMAGENET.items():
        counts["imagenet"][name] = {"params": {str(k): count(ctor(k)) for k in (10, 100, 200, 1000)}, "shapes": shapes(ctor(1000))}
        print(name, counts["imagenet"][name]["params"])
    with open(os.path.join(out, "param_counts.json"), "w") as f:
        json.dump(counts, f, indent=1, sort_keys=True)
        f.write("\n")
    for name, (ctor, side) in CASES.items():
        m, params = make_case(name, ctor, side, g, out)
        if name == "resnet_basic":
            sd = {k: f32(v) for k, v in m.state_dict().items()}
            sd_init = {k: f32(v) if v.is_floating_point() else v for k, v in params.items()}
            sd_init.update({k: v for k, v in m.state_dict().items() if k.endswith("num_batches_tracked")})
            torch.save({"epoch": 3, "state_dict": sd_init, "optim_dict": {}}, os.path.join(out, "ckpt_resnet_basic.pth.tar"))
            torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in sd_init.items()}}, os.path.join(out, "ckpt_resnet_basic_dp.pth.tar"))
            torch.save(sd_init, os.path.join(out, "ckpt_resnet_basic_bare.pth"))
            # PyTorch <= 1.5 layout (the official teachers were saved by PyTorch 1.2),
            # DataParallel names, and an optimizer state whose storages must be skipped.
            legacy = {"epoch": 3, "state_dict": {"module." + k: v for k, v in sd_init.items()},
                      "optim_dict": {"state": {0: {"momentum_buffer": torch.arange(5, dtype=torch.float64)}}}}
            torch.save(legacy, os.path.join(out, "ckpt_resnet_basic_legacy.pth.tar"), _use_new_zipfile_serialization=False)
            del sd
        if name == "tv_densenet":
            torchvision_densenet_file(params, out)
    maxpool_case(g, out)
    print("wrote", out)


if __name__ == "__main__":
    main()
