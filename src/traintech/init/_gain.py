"""The recommended gain of a nonlinearity, with torch.nn.init's names, values and errors."""

from __future__ import annotations

import math

__all__ = ["LINEAR_NAMES", "NONLINEARITIES", "calculate_gain"]

#: Names for which the layer itself is linear (gain 1), exactly as torch lists them.
LINEAR_NAMES = (
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
)

#: Every nonlinearity name ``calculate_gain`` accepts (the set torch 2.13 accepts).
NONLINEARITIES = (*LINEAR_NAMES, "sigmoid", "tanh", "relu", "leaky_relu", "selu")


def calculate_gain(nonlinearity: str, param: int | float | None = None) -> float:
    r"""Return the recommended gain for a nonlinearity, as :func:`torch.nn.init.calculate_gain`.

    The gain is the factor by which a layer's weight standard deviation is multiplied so that
    the second moment of the signal is kept through the nonlinearity:

    .. math::
        \text{gain} = \begin{cases}
            1 & \text{linear, conv, sigmoid} \\
            5/3 & \tanh \\
            \sqrt{2} & \text{ReLU} \\
            \sqrt{2 / (1 + \text{negative\_slope}^2)} & \text{leaky ReLU} \\
            3/4 & \text{SELU (empirical, as torch)}
        \end{cases}

    The ReLU value is He et al. 2015, https://arxiv.org/abs/1502.01852 . For SELU the
    self-normalising fixed point (Klambauer et al. 2017, https://arxiv.org/abs/1706.02515) needs
    gain 1 (``"linear"``), which is what :func:`lecun_normal_` gives; torch's 3/4 trades that for
    gradient flow. The values, accepted names and errors are torch's own, so this is drop-in.

    Args:
        nonlinearity: one of ``linear``, ``conv1d``, ``conv2d``, ``conv3d``,
            ``conv_transpose1d``, ``conv_transpose2d``, ``conv_transpose3d``, ``sigmoid``,
            ``tanh``, ``relu``, ``leaky_relu``, ``selu``.
        param: the negative slope for ``leaky_relu`` (default 0.01); ignored otherwise.

    Returns:
        The gain as a Python number.

    Raises:
        ValueError: ``Unsupported nonlinearity <name>`` for an unknown name, or
            ``negative_slope <param> not a valid number`` for a non-numeric ``param``
            (torch's messages).

    Example:
        >>> round(calculate_gain("leaky_relu", 0.2), 6)
        1.38675
        >>> calculate_gain("tanh")
        1.6666666666666667
    """
    if nonlinearity in LINEAR_NAMES or nonlinearity == "sigmoid":
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope: float = 0.01
        elif isinstance(param, (int, float)) and not isinstance(param, bool):
            slope = param
        else:
            raise ValueError(f"negative_slope {param} not a valid number")
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity}")
