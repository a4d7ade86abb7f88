"""Integrators: pure ``init``/``step`` pairs, batched over replicas, each reproducing its ASE twin.

Time step and damping times in ASE time units, temperatures in K, pressures and
stresses in eV/A^3.
"""

from jaxpto.integrators.base import Integrator
from jaxpto.integrators.bussi import bussi
from jaxpto.integrators.langevin import langevin
from jaxpto.integrators.melchionna import melchionna_gibbs_energy, melchionna_npt
from jaxpto.integrators.mtk import isotropic_mtk_npt, mtk_conserved_energy, mtk_npt
from jaxpto.integrators.nose_hoover_chain import nhc_conserved_energy, nose_hoover_chain_nvt
from jaxpto.integrators.replica_exchange import exchange_statistics, replica_exchange
from jaxpto.integrators.verlet import velocity_verlet

__all__ = [
    "Integrator", "bussi", "langevin", "melchionna_npt", "melchionna_gibbs_energy", "mtk_npt",
    "isotropic_mtk_npt", "mtk_conserved_energy", "nose_hoover_chain_nvt", "nhc_conserved_energy",
    "velocity_verlet", "replica_exchange", "exchange_statistics",
]
