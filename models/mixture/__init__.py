"""A mixture of K multivariate Bernoullis fitted by EM (CS 446 hw2, problem 1): the math (:mod:`.em`) and the
family declaration with its config, data and trainer (:mod:`.family`).
"""
