"""The handout's shallow ResNet (CS 446 hw2, problem 3): the model (:mod:`.model`), S members packed into one
computation (:mod:`.packed`), the trial config (:mod:`.config`), the digits as tensors with label noise and the
validation split (:mod:`.data`), the training loop (:mod:`.trainer`) and the family declaration (:mod:`.family`).
"""
