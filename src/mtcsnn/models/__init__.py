from mtcsnn.models.module import MTCSNNModule
from mtcsnn.models.siamese_resnet import BACKBONES, STEMS, BranchOutput, SiameseResNet

__all__ = ["BACKBONES", "STEMS", "BranchOutput", "MTCSNNModule", "SiameseResNet"]
