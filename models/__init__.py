"""What is trained: the handout ResNet and its packed (many seeds at once) form."""

from models.resnet import Block, ResNet, parameter_count

__all__ = ["Block", "ResNet", "parameter_count"]
