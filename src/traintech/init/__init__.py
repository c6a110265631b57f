"""Weight initialization: torch-compatible inits, whole-model policies, LSUV, diagnostics.

The functional inits keep ``torch.nn.init``'s names, arguments, defaults and return values (the
tensor, filled in place under ``no_grad``) and take ``generator=``. See ``docs/init.md``.
"""

from ._fans_and_gain import calculate_gain, fan_in_and_fan_out
from ._fills import constant_, dirac_, eye_, normal_, ones_, sparse_, uniform_, zeros_
from ._lsuv import LSUVRecord, LSUVReport, lsuv_
from ._model import init_model
from ._orthogonal import orthogonal_
from ._profile import LayerStats, VarianceProfile, variance_profile
from ._report import InitRecord, InitReport
from ._trunc_normal import trunc_normal_
from ._variance_scaling import lecun_normal_, lecun_uniform_, variance_scaling_
from ._xavier_kaiming import kaiming_normal_, kaiming_uniform_, xavier_normal_, xavier_uniform_

__all__ = [
    "InitRecord",
    "InitReport",
    "LSUVRecord",
    "LSUVReport",
    "LayerStats",
    "VarianceProfile",
    "calculate_gain",
    "constant_",
    "dirac_",
    "eye_",
    "fan_in_and_fan_out",
    "init_model",
    "kaiming_normal_",
    "kaiming_uniform_",
    "lecun_normal_",
    "lecun_uniform_",
    "lsuv_",
    "normal_",
    "ones_",
    "orthogonal_",
    "sparse_",
    "trunc_normal_",
    "uniform_",
    "variance_profile",
    "variance_scaling_",
    "xavier_normal_",
    "xavier_uniform_",
    "zeros_",
]
