"""The reward-hacking monitor: pure detectors over samples and metric histories, alerts, best-step tracking,
and the Gao et al. 2022 over-optimisation fits. Imports no stages (the stages call it; see
tether.stages.monitoring for the glue to a training loop)."""
from tether.monitor.config import DETECTOR_NAMES, MonitorConfig
from tether.monitor.detectors import DETECTORS, Alert, History, check
from tether.monitor.gao import GAO_FORMS, GaoFit, fit_gao, fit_gao_curve
from tether.monitor.monitor import MONITOR_METRICS, Monitor, Sample, measure
from tether.monitor.stats import length_reward_share, pearson, slope

__all__ = ["DETECTORS", "DETECTOR_NAMES", "GAO_FORMS", "MONITOR_METRICS", "Alert", "GaoFit", "History", "Monitor",
           "MonitorConfig", "Sample", "check", "fit_gao", "fit_gao_curve", "length_reward_share", "measure",
           "pearson", "slope"]
