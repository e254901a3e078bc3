"""Measurement: fidelity against the original (:mod:`.fidelity`), fidelity bounds for searches (:mod:`.evaluator`),
real stored bytes by section (:mod:`.summary`), the compress report (:mod:`.report`) and latency (:mod:`.latency`)."""
