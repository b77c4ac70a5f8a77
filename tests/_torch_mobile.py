"""PyTorch models of MobileNetV2 (mdistiller's mobile_half), ShuffleV1 and ShuffleV2, written
from the architecture descriptions (dtkd/models/mobilenetv2.py, shufflenetv1.py,
shufflenetv2.py) with the same parameter names, for tests/test_zoo_mobile.py and
benchmarks/bench_train_step.py. Imported only where torch is.

Every ReLU goes through ``relu(t, key)``, key naming the dtkd module that applies that ReLU (the
BatchNorm before it, which fuses it, or a ReLU module), so a test can impose dtkd's ReLU masks.
"""


def torch_model(torch, name, num_classes, relu=None):
    tnn, F = torch.nn, torch.nn.functional
    relu = relu or (lambda t, key: F.relu(t))

    class Act(tnn.Module):  # a ReLU in a Sequential, as nn.ReLU() (no parameters)
        def __init__(self, key):
            super().__init__()
            self.key = key

        def forward(self, t):
            return relu(t, self.key)

    def conv(cin, cout, k=1, stride=1, groups=1):
        return tnn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)

    def shuffle(x, g):
        n, c, h, w = x.shape
        return x.view(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)

    class Inverted(tnn.Module):
        def __init__(self, cin, cout, stride, t, p):
            super().__init__()
            hid = cin * t
            self.res = stride == 1 and cin == cout
            self.conv = tnn.Sequential(conv(cin, hid), tnn.BatchNorm2d(hid), Act(p + "conv.1"),
                                       conv(hid, hid, 3, stride, hid), tnn.BatchNorm2d(hid),
                                       Act(p + "conv.4"), conv(hid, cout), tnn.BatchNorm2d(cout))

        def forward(self, x):
            return x + self.conv(x) if self.res else self.conv(x)

    class Mobile(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = tnn.Sequential(conv(3, 16, 3, 2), tnn.BatchNorm2d(16), Act("conv1.1"))
            stages, cin = [], 16
            for j, (t, c, n, s) in enumerate(((1, 8, 1, 1), (6, 12, 2, 1), (6, 16, 3, 2),
                                              (6, 32, 4, 2), (6, 48, 3, 1), (6, 80, 3, 2),
                                              (6, 160, 1, 1))):
                blocks = []
                for i in range(n):
                    blocks.append(Inverted(cin, c, s if i == 0 else 1, t, f"blocks.{j}.{i}."))
                    cin = c
                stages.append(tnn.Sequential(*blocks))
            self.blocks = tnn.ModuleList(stages)
            self.conv2 = tnn.Sequential(conv(160, 1280), tnn.BatchNorm2d(1280), Act("conv2.1"))
            self.classifier = tnn.Sequential(tnn.Linear(1280, num_classes))

        def forward(self, x):
            h = self.conv1(x)
            for stage in self.blocks:
                h = stage(h)
            h = F.avg_pool2d(self.conv2(h), 2, ceil_mode=True)
            return self.classifier(h.flatten(1))

    class V1Block(tnn.Module):
        def __init__(self, cin, cout, stride, groups, p):
            super().__init__()
            mid, self.g, self.stride, self.p = cout // 4, (1 if cin == 24 else groups), stride, p
            self.conv1, self.bn1 = conv(cin, mid, groups=self.g), tnn.BatchNorm2d(mid)
            self.conv2, self.bn2 = conv(mid, mid, 3, stride, mid), tnn.BatchNorm2d(mid)
            self.conv3, self.bn3 = conv(mid, cout, groups=groups), tnn.BatchNorm2d(cout)

        def forward(self, x):
            p = self.p
            h = shuffle(relu(self.bn1(self.conv1(x)), p + "bn1"), self.g)
            h = self.bn3(self.conv3(relu(self.bn2(self.conv2(h)), p + "bn2")))
            if self.stride == 2:  # relu(cat(a, b)) = cat(relu(a), relu(b))
                return torch.cat([relu(h, p + "bn3"),
                                  relu(F.avg_pool2d(x, 3, 2, 1), p + "relu_shortcut")], 1)
            return relu(h + x, p + "bn3")

    class V1(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = conv(3, 24), tnn.BatchNorm2d(24)
            cin = 24
            for i, (cout, n) in enumerate(((240, 4), (480, 8), (960, 4))):
                p = f"layer{i + 1}."
                blocks = [V1Block(cin, cout - cin, 2, 3, p + "0.")] + [
                    V1Block(cout, cout, 1, 3, f"{p}{j}.") for j in range(1, n)]
                setattr(self, f"layer{i + 1}", tnn.Sequential(*blocks))
                cin = cout
            self.linear = tnn.Linear(960, num_classes)

        def forward(self, x):
            h = relu(self.bn1(self.conv1(x)), "bn1")
            h = self.layer3(self.layer2(self.layer1(h)))
            return self.linear(F.avg_pool2d(h, 4).flatten(1))

    class V2Basic(tnn.Module):
        def __init__(self, c, p):
            super().__init__()
            c //= 2
            self.p = p
            self.conv1, self.bn1 = conv(c, c), tnn.BatchNorm2d(c)
            self.conv2, self.bn2 = conv(c, c, 3, 1, c), tnn.BatchNorm2d(c)
            self.conv3, self.bn3 = conv(c, c), tnn.BatchNorm2d(c)

        def forward(self, x):
            c, p = x.shape[1] // 2, self.p
            h = self.bn2(self.conv2(relu(self.bn1(self.conv1(x[:, c:])), p + "bn1")))
            return shuffle(torch.cat([x[:, :c], relu(self.bn3(self.conv3(h)), p + "bn3")], 1), 2)

    class V2Down(tnn.Module):
        def __init__(self, cin, cout, p):
            super().__init__()
            mid, self.p = cout // 2, p
            self.conv1, self.bn1 = conv(cin, cin, 3, 2, cin), tnn.BatchNorm2d(cin)
            self.conv2, self.bn2 = conv(cin, mid), tnn.BatchNorm2d(mid)
            self.conv3, self.bn3 = conv(cin, mid), tnn.BatchNorm2d(mid)
            self.conv4, self.bn4 = conv(mid, mid, 3, 2, mid), tnn.BatchNorm2d(mid)
            self.conv5, self.bn5 = conv(mid, mid), tnn.BatchNorm2d(mid)

        def forward(self, x):
            p = self.p
            left = relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))), p + "bn2")
            right = self.bn4(self.conv4(relu(self.bn3(self.conv3(x)), p + "bn3")))
            return shuffle(torch.cat([left, relu(self.bn5(self.conv5(right)), p + "bn5")], 1), 2)

    class V2(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = conv(3, 24), tnn.BatchNorm2d(24)
            cin = 24
            for i, (cout, n) in enumerate(((116, 3), (232, 7), (464, 3))):
                p = f"layer{i + 1}."
                setattr(self, f"layer{i + 1}", tnn.Sequential(
                    V2Down(cin, cout, p + "0."), *[V2Basic(cout, f"{p}{j}.") for j in range(1, n + 1)]))
                cin = cout
            self.conv2, self.bn2 = conv(464, 1024), tnn.BatchNorm2d(1024)
            self.linear = tnn.Linear(1024, num_classes)

        def forward(self, x):
            h = relu(self.bn1(self.conv1(x)), "bn1")
            h = self.layer3(self.layer2(self.layer1(h)))
            h = relu(self.bn2(self.conv2(h)), "bn2")
            return self.linear(F.avg_pool2d(h, 4).flatten(1))

    return {"MobileNetV2": Mobile, "ShuffleV1": V1, "ShuffleV2": V2}[name]()
