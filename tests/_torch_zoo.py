"""PyTorch models of mdistiller's wrn_*, vgg* (BN) and ResNet18/ResNet50 (resnetv2), written
from the architecture descriptions (dtkd/models/wrn.py, vgg.py, resnetv2.py) with the same
parameter names, for tests/test_zoo.py and benchmarks/bench_train_step.py. Imported only where
torch is. Every ReLU goes through ``relu(t)``, so a test can impose dtkd's ReLU masks.
"""


def torch_wrn(torch, depth, k, num_classes, relu):
    tnn, F = torch.nn, torch.nn.functional

    class Block(tnn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.bn1 = tnn.BatchNorm2d(cin)
            self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(cout)
            self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.convShortcut = None if cin == cout else tnn.Conv2d(cin, cout, 1, stride, 0, bias=False)

        def forward(self, x):
            a = relu(self.bn1(x))
            out = self.conv2(relu(self.bn2(self.conv1(a))))
            return out + (x if self.convShortcut is None else self.convShortcut(a))

    class Stage(tnn.Module):
        def __init__(self, n, cin, cout, stride):
            super().__init__()
            self.layer = tnn.Sequential(*[Block(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                          for i in range(n)])

        def forward(self, x):
            return self.layer(x)

    class Net(tnn.Module):
        def __init__(self):
            super().__init__()
            n, w = (depth - 4) // 6, (16, 16 * k, 32 * k, 64 * k)
            self.conv1 = tnn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.block1, self.block2, self.block3 = (Stage(n, w[i], w[i + 1], s)
                                                     for i, s in enumerate((1, 2, 2)))
            self.bn1 = tnn.BatchNorm2d(w[3])
            self.fc = tnn.Linear(w[3], num_classes)

        def forward(self, x):
            h = self.block3(self.block2(self.block1(self.conv1(x))))
            return self.fc(F.avg_pool2d(relu(self.bn1(h)), 8).flatten(1))

    return Net()


def torch_vgg(torch, cfg, num_classes, relu):
    tnn, F = torch.nn, torch.nn.functional

    class Net(tnn.Module):
        def __init__(self):
            super().__init__()
            cin = 3
            for b, widths in enumerate(cfg):
                layers = []
                for w in widths:
                    layers += [tnn.Conv2d(cin, w, 3, padding=1), tnn.BatchNorm2d(w), tnn.ReLU()]
                    cin = w
                setattr(self, f"block{b}", tnn.Sequential(*layers[:-1]))
            self.classifier = tnn.Linear(cin, num_classes)

        def forward(self, x):
            h = x
            for b in range(5):
                for m in getattr(self, f"block{b}"):
                    h = relu(h) if isinstance(m, tnn.ReLU) else m(h)
                h = relu(h)
                if b < 3:
                    h = F.max_pool2d(h, 2, 2)
            return self.classifier(F.adaptive_avg_pool2d(h, 1).flatten(1))

    return Net()


def torch_resnetv2(torch, bottleneck, num_blocks, num_classes, relu):
    tnn, F = torch.nn, torch.nn.functional
    expansion = 4 if bottleneck else 1

    def shortcut(cin, cout, stride):
        if stride == 1 and cin == cout:
            return tnn.Sequential()
        return tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False), tnn.BatchNorm2d(cout))

    class Basic(tnn.Module):
        def __init__(self, cin, planes, stride):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, planes, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(planes)
            self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(planes)
            self.shortcut = shortcut(cin, planes, stride)

        def forward(self, x):
            out = self.bn2(self.conv2(relu(self.bn1(self.conv1(x)))))
            return relu(out + self.shortcut(x))

    class Bottle(tnn.Module):
        def __init__(self, cin, planes, stride):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, planes, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(planes)
            self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(planes)
            self.conv3 = tnn.Conv2d(planes, 4 * planes, 1, bias=False)
            self.bn3 = tnn.BatchNorm2d(4 * planes)
            self.shortcut = shortcut(cin, 4 * planes, stride)

        def forward(self, x):
            out = relu(self.bn2(self.conv2(relu(self.bn1(self.conv1(x))))))
            return relu(self.bn3(self.conv3(out)) + self.shortcut(x))

    class Net(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = tnn.Conv2d(3, 64, 3, 1, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(64)
            cin = 64
            for i, (planes, stride) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2))):
                blocks = []
                for j in range(num_blocks[i]):
                    blocks.append((Bottle if bottleneck else Basic)(cin, planes, stride if j == 0 else 1))
                    cin = planes * expansion
                setattr(self, f"layer{i + 1}", tnn.Sequential(*blocks))
            self.linear = tnn.Linear(512 * expansion, num_classes)

        def forward(self, x):
            h = relu(self.bn1(self.conv1(x)))
            h = self.layer4(self.layer3(self.layer2(self.layer1(h))))
            return self.linear(F.adaptive_avg_pool2d(h, 1).flatten(1))

    return Net()


def torch_model(torch, name, num_classes=100, relu=None):
    """``name``'s PyTorch model; ``relu`` (default torch.relu) applies every ReLU, in the order
    dtkd's model applies them."""
    from dtkd.models import resnetv2, vgg, wrn
    relu = relu or torch.relu
    if name in wrn.ARCHS:
        return torch_wrn(torch, *wrn.ARCHS[name], num_classes, relu)
    if name in vgg.ARCHS:
        return torch_vgg(torch, vgg.CFGS[vgg.ARCHS[name]], num_classes, relu)
    block, num_blocks = resnetv2.ARCHS[name]
    return torch_resnetv2(torch, block is resnetv2.Bottleneck, num_blocks, num_classes, relu)
