"""Red-teaming: adversarial probe records, the world's attack suites, scoring, and the proxy-vs-gold search.

The stage that runs them on a policy is `tether.stages.redteam` (`tether redteam`)."""
from tether.redteam.probe import (
           EXPECTED,
           Probe,
           parse_probe,
           probe_row,
           read_probes,
           write_probes,
)
from tether.redteam.score import find_hacks, rule_flags, score_row, summarize
from tether.redteam.suites import (
           JAILBREAKS,
           PRESSURE,
           PUSHBACK,
           SUITES,
           build_suite,
           build_suites,
)

__all__ = ["EXPECTED", "JAILBREAKS", "PRESSURE", "PUSHBACK", "SUITES", "Probe", "build_suite", "build_suites",
           "find_hacks", "parse_probe", "probe_row", "read_probes", "rule_flags", "score_row", "summarize",
           "write_probes"]
